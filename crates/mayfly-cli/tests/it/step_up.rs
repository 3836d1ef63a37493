//! `mayfly step-up` against `mayfly dev`: a wrong TOTP code is refused (exit 3, the reason on
//! stderr), the right one records the factor, and the same code again is refused (a TOTP code
//! is taken once).

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use mayfly_server::clock::{Clock, SystemClock};

use super::{Running, free_port, mayfly, run, stdout};

#[test]
fn step_up_takes_a_totp_code_once() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = mayfly()
        .args(["dev", "--addr", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _running = Running(child);
    let mut admin_totp = None;
    let mut in_admin = false;
    let mut export = None;
    for line in BufReader::new(out).lines() {
        let line = line.unwrap();
        if line.starts_with("User ") {
            in_admin = line.starts_with("User admin");
        }
        if in_admin && let Some(rest) = line.trim().strip_prefix("TOTP secret ") {
            admin_totp = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.starts_with("export MAYFLY_ADDR=") {
            export = Some(line);
            break;
        }
    }
    let export = export.expect("an export line");
    let field = |name: &str| {
        export
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap()
            .to_owned()
    };
    let (addr, token) = (field("MAYFLY_ADDR="), field("MAYFLY_TOKEN="));
    let secret = admin_totp.expect("the admin's TOTP secret is printed");
    let step_up = |code: &str| {
        run(mayfly()
            .args(["step-up", "--code", code])
            .env("MAYFLY_ADDR", &addr)
            .env("MAYFLY_TOKEN", &token))
    };

    let code = mayfly_testkit::totp_code(&secret, SystemClock.now().unix_secs());
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let refused = step_up(wrong);
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("wrong or was already used"), "{stderr}");

    let done = step_up(&code);
    assert!(done.status.success(), "{done:?}");
    assert!(stdout(&done).contains("second factor recorded"), "{done:?}");

    let again = step_up(&code);
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("wrong or was already used"), "{stderr}");
}
