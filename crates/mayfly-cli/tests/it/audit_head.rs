//! A tail cut off an audit file: the chain alone cannot see it (every remaining event still links
//! to the one before), so `audit verify --file` names the last signed checkpoint it saw, and
//! `--expect-head` with the head `mayfly audit head` printed finds the cut.

use super::{mayfly, run, start_dev, stdout, wait_until};

#[test]
fn a_tail_cut_off_an_audit_file_is_found_against_the_head() {
    let data = tempfile::tempdir().unwrap();
    let (_running, addr, token) = start_dev(data.path());
    let client = |args: &[&str]| {
        run(mayfly()
            .args(args)
            .env("MAYFLY_ADDR", &addr)
            .env("MAYFLY_TOKEN", &token))
    };
    // Sign a checkpoint over what is there, then take the head.
    assert!(client(&["audit", "verify"]).status.success());
    let head = client(&["audit", "head"]);
    assert!(head.status.success(), "{head:?}");
    let head = stdout(&head).trim().to_owned();
    let (seq, hash) = head.split_once(':').unwrap();
    let seq: usize = seq.parse().unwrap();
    assert_eq!(hash.len(), 64, "{head}");
    // The head is for admins only.
    let anonymous = run(mayfly()
        .args(["audit", "head"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", data.path().join("none")));
    assert!(!anonymous.status.success());

    let file = data.path().join("audit.jsonl");
    wait_until("the sink file", || {
        std::fs::read_to_string(&file)
            .map(|text| text.lines().count() >= seq)
            .unwrap_or(false)
    });
    let whole = run(mayfly()
        .args(["audit", "verify", "--expect-head", &head, "--file"])
        .arg(&file));
    assert!(whole.status.success(), "{}", stdout(&whole));
    assert!(
        stdout(&whole).contains("last signed checkpoint: event"),
        "{}",
        stdout(&whole)
    );

    // Cut the last two events the head covers.
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .take(seq - 2)
        .map(str::to_owned)
        .collect();
    let cut = data.path().join("cut.jsonl");
    std::fs::write(&cut, format!("{}\n", lines.join("\n"))).unwrap();
    // The chain alone cannot tell ...
    let unaware = run(mayfly().args(["audit", "verify", "--file"]).arg(&cut));
    assert!(unaware.status.success(), "{}", stdout(&unaware));
    assert!(
        stdout(&unaware).contains("pass --expect-head"),
        "{}",
        stdout(&unaware)
    );
    // ... the head does, naming what is missing.
    let found = run(mayfly()
        .args(["audit", "verify", "--expect-head", &head, "--file"])
        .arg(&cut));
    assert_eq!(found.status.code(), Some(4), "{}", stdout(&found));
    let expected = format!(
        "the log ends at event {} but the expected head is event {seq}: events {} to {seq} were cut off",
        seq - 2,
        seq - 1
    );
    assert!(stdout(&found).contains(&expected), "{}", stdout(&found));

    // A head from elsewhere (another hash at that place) is named too.
    let forged = format!("{seq}:{}", "0".repeat(64));
    let other = run(mayfly()
        .args(["audit", "verify", "--expect-head", &forged, "--file"])
        .arg(&file));
    assert_eq!(other.status.code(), Some(4), "{}", stdout(&other));
    assert!(
        stdout(&other).contains(&format!("event {seq} is not the expected head")),
        "{}",
        stdout(&other)
    );
    // A malformed head is refused with what to write instead.
    let bad = run(mayfly()
        .args(["audit", "verify", "--expect-head", "12", "--file"])
        .arg(&file));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("mayfly audit head"),
        "{bad:?}"
    );
}
