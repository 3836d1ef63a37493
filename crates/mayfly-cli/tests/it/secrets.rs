//! `mayfly secrets` and `mayfly exec --env` against `mayfly dev`: a value put from stdin is read
//! back by `get` (and only the value is printed), `ls` names it with its version, `import` writes
//! a dotenv file (and refuses a bad name, naming its line, writing nothing), and `exec --env`
//! gives the child the secrets as environment variables, passing its exit code through, without
//! printing a value.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use super::{mayfly, run, start_dev, stdout};

const STRIPE: &str = "sk_test_51Hx-cli-secret";

fn with_stdin(command: &mut Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn secrets_put_get_ls_import_and_exec_env() {
    let data = tempfile::tempdir().unwrap();
    let (_running, addr, token) = start_dev(data.path());
    let client = |command: &mut Command| -> Command {
        let mut c = std::mem::replace(command, mayfly());
        c.env("MAYFLY_ADDR", &addr).env("MAYFLY_TOKEN", &token);
        c
    };
    let policy = data.path().join("secrets.cedar");
    std::fs::write(
        &policy,
        "@id(\"admins-read-dev\") permit (principal in Group::\"admins\", action == Action::\"read_secret\", resource in Environment::\"shop/dev\");",
    )
    .unwrap();
    let put = run(&mut client(mayfly().args(["policy", "put"]).arg(&policy)));
    assert!(put.status.success(), "{put:?}");

    // put from stdin (one final line break dropped), with cas 0; a second cas 0 is refused.
    let put = with_stdin(
        &mut client(mayfly().args(["secrets", "put", "shop/dev/STRIPE_KEY", "--cas", "0"])),
        &format!("{STRIPE}\n"),
    );
    assert!(put.status.success(), "{put:?}");
    assert!(stdout(&put).contains("version 1"), "{put:?}");
    let again = with_stdin(
        &mut client(mayfly().args(["secrets", "put", "shop/dev/STRIPE_KEY", "--cas", "0"])),
        "other",
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is 1"),
        "{again:?}"
    );

    let get = run(&mut client(mayfly().args([
        "secrets",
        "get",
        "shop/dev/STRIPE_KEY",
    ])));
    assert!(get.status.success(), "{get:?}");
    assert_eq!(stdout(&get), format!("{STRIPE}\n"));
    let json = run(&mut client(mayfly().args([
        "secrets",
        "get",
        "shop/dev/STRIPE_KEY",
        "--json",
    ])));
    let answer: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(answer["version"], 1);
    assert_eq!(answer["value"], STRIPE);

    // import: a bad name refuses the whole file, naming its line.
    let bad = data.path().join("bad.env");
    std::fs::write(&bad, "GOOD=1\nBAD-NAME=2\n").unwrap();
    let refused = run(&mut client(
        mayfly()
            .args(["secrets", "import", "--env", "shop/dev"])
            .arg(&bad),
    ));
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("line 2"),
        "{refused:?}"
    );
    // A name `exec` would refuse to set is refused when written, by put and by import.
    let steering = with_stdin(
        &mut client(mayfly().args(["secrets", "put", "shop/dev/LD_PRELOAD"])),
        "/tmp/evil.so",
    );
    assert!(!steering.status.success(), "{steering:?}");
    assert!(
        String::from_utf8_lossy(&steering.stderr).contains("mayfly exec"),
        "{steering:?}"
    );
    let steering = data.path().join("steering.env");
    std::fs::write(
        &steering,
        "GOOD=1
NODE_OPTIONS=--require=/tmp/x.js
",
    )
    .unwrap();
    let refused = run(&mut client(
        mayfly()
            .args(["secrets", "import", "--env", "shop/dev"])
            .arg(&steering),
    ));
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("line 2"),
        "{refused:?}"
    );
    let env = data.path().join("dev.env");
    std::fs::write(
        &env,
        "# dev settings\nDATABASE_URL=\"postgres://app:pw@db/shop\"\nexport REDIS_URL='redis://cache:6379'\nDEBUG=1 # inline\n",
    )
    .unwrap();
    let imported = run(&mut client(
        mayfly()
            .args(["secrets", "import", "--env", "shop/dev"])
            .arg(&env),
    ));
    assert!(imported.status.success(), "{imported:?}");
    assert!(stdout(&imported).contains("imported 3"), "{imported:?}");
    assert!(!stdout(&imported).contains("postgres://"), "{imported:?}");

    let ls = run(&mut client(mayfly().args(["secrets", "ls", "shop/dev"])));
    assert!(ls.status.success(), "{ls:?}");
    let listed = stdout(&ls);
    for name in ["DATABASE_URL", "DEBUG", "GOOD", "REDIS_URL", "STRIPE_KEY"] {
        assert_eq!(listed.contains(name), name != "GOOD", "{name}: {listed}");
    }
    assert!(!listed.contains(STRIPE), "{listed}");

    // exec --env: the child sees the values; nothing prints them but the child.
    let exec = run(&mut client(mayfly().args([
        "exec",
        "--env",
        "shop/dev",
        "--",
        "sh",
        "-c",
        "printf %s \"$STRIPE_KEY|$REDIS_URL|$DEBUG\"",
    ])));
    assert!(exec.status.success(), "{exec:?}");
    assert_eq!(stdout(&exec), format!("{STRIPE}|redis://cache:6379|1"));
    let stderr = String::from_utf8_lossy(&exec.stderr);
    assert!(stderr.contains("STRIPE_KEY"), "{stderr}");
    assert!(!stderr.contains(STRIPE), "{stderr}");
    let code =
        run(&mut client(mayfly().args([
            "exec", "--env", "shop/dev", "--", "sh", "-c", "exit 7",
        ])));
    assert_eq!(code.status.code(), Some(7), "{code:?}");
    // An environment the admin may not read: the command runs without its secrets.
    let put = with_stdin(
        &mut client(mayfly().args(["secrets", "put", "shop/prod/STRIPE_KEY"])),
        "prod-value",
    );
    assert!(put.status.success(), "{put:?}");
    let prod = run(&mut client(mayfly().args([
        "exec",
        "--env",
        "shop/prod",
        "--",
        "sh",
        "-c",
        "printf %s \"${STRIPE_KEY:-unset}\"",
    ])));
    assert!(prod.status.success(), "{prod:?}");
    assert_eq!(stdout(&prod), "unset");
    let get = run(&mut client(mayfly().args([
        "secrets",
        "get",
        "shop/prod/STRIPE_KEY",
    ])));
    assert_eq!(get.status.code(), Some(3), "{get:?}");
}
