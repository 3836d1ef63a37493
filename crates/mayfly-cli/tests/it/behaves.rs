//! The CLI behaves like the tools people know (issue 18, point 7): `exec` writes only the
//! command's output on stdout and works for X.509 grants; `--json` errors are JSON on stderr;
//! `--field` prints one value; the exit codes are the documented ones; `server --config` reads
//! TOML with `MAYFLY_<KEY>` overrides.

use std::process::{Command, Output};

use super::{mayfly, run, start_dev, stdout};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The one JSON error object on stderr, `{"error":{"code","message"}}`.
#[track_caller]
fn json_error(output: &Output) -> (String, String) {
    let text = stderr(output);
    let line = text.lines().last().unwrap_or_default();
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (
        value["error"]["code"].as_str().unwrap().to_owned(),
        value["error"]["message"].as_str().unwrap().to_owned(),
    )
}

/// A dev broker with an X.509 target `api` and three roles: `api/client` (allowed at once),
/// `api/gated` (one approval) and `api/closed` (no policy: denied).
#[test]
fn exec_x509_json_field_and_exit_codes_against_a_real_broker() {
    let data = tempfile::tempdir().unwrap();
    let (_running, addr, token) = start_dev(data.path());
    let with = |command: &mut Command| -> Output {
        run(command
            .env("MAYFLY_ADDR", &addr)
            .env("MAYFLY_TOKEN", &token))
    };
    let added = with(mayfly().args([
        "target",
        "add",
        "x509",
        "api",
        "--url",
        "tls://127.0.0.1:8443",
    ]));
    assert!(added.status.success(), "{added:?}");
    let role = data.path().join("client.json");
    std::fs::write(&role, r#"{"common_name": "payments-client"}"#).unwrap();
    for name in ["api/client", "api/gated", "api/closed"] {
        let added = with(
            mayfly()
                .args(["role", "add", name, "--max-ttl", "1h", "--creation-sql"])
                .arg(&role),
        );
        assert!(added.status.success(), "{added:?}");
    }
    let policy = data.path().join("policy.cedar");
    std::fs::write(
        &policy,
        "@id(\"client\") permit (principal in Group::\"admins\", action == Action::\"request\", resource == Role::\"api/client\");\n\
         @id(\"gated\") @approvals(\"1\") permit (principal in Group::\"admins\", action == Action::\"request\", resource == Role::\"api/gated\");",
    )
    .unwrap();
    let put = with(mayfly().args(["policy", "put"]).arg(&policy));
    assert!(put.status.success(), "{put:?}");

    // `exec … -- cat file > out`: stdout is the file, byte for byte; the status lines are on
    // stderr only.
    let file = data.path().join("all-bytes");
    let bytes: Vec<u8> = (0..=255u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let cat = with(
        mayfly()
            .args([
                "exec",
                "api/client",
                "--ttl",
                "5m",
                "--reason",
                "bytes",
                "--",
                "cat",
            ])
            .arg(&file),
    );
    assert!(cat.status.success(), "{cat:?}");
    assert_eq!(cat.stdout, bytes, "stderr: {}", stderr(&cat));
    assert!(stderr(&cat).contains("active for"), "{}", stderr(&cat));
    assert!(stderr(&cat).contains("revoked"), "{}", stderr(&cat));

    // X.509: the command finds the key and certificate in private files named by the
    // environment, reads them with openssl, and the directory is gone afterwards.
    let seen = data.path().join("seen");
    let script = format!(
        "set -e; echo \"$MAYFLY_CERT_FILE $MAYFLY_KEY_FILE\" > {seen}; \
         stat -c %a \"$(dirname \"$MAYFLY_CERT_FILE\")\" \"$MAYFLY_CERT_FILE\" \"$MAYFLY_KEY_FILE\" >> {seen}; \
         openssl x509 -in \"$MAYFLY_CERT_FILE\" -noout -subject; \
         openssl pkey -in \"$MAYFLY_KEY_FILE\" -pubout | openssl sha256 >&2; \
         openssl x509 -in \"$MAYFLY_CERT_FILE\" -noout -pubkey | openssl sha256 >&2",
        seen = seen.display()
    );
    let x509 = with(mayfly().args([
        "exec",
        "api/client",
        "--ttl",
        "5m",
        "--reason",
        "x509",
        "--",
        "sh",
        "-c",
        &script,
    ]));
    assert!(x509.status.success(), "{x509:?}");
    assert!(
        stdout(&x509).contains("CN") && stdout(&x509).contains("payments-client"),
        "{x509:?}"
    );
    // The key is the certificate's: the same public key twice.
    let x509_err = stderr(&x509);
    let digests: Vec<&str> = x509_err
        .lines()
        .filter(|l| l.contains("SHA2-256") || l.contains("(stdin)"))
        .collect::<Vec<_>>();
    assert_eq!(digests.len(), 2, "{}", stderr(&x509));
    assert_eq!(digests[0], digests[1], "{}", stderr(&x509));
    let seen = std::fs::read_to_string(&seen).unwrap();
    let mut lines = seen.lines();
    let paths: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(lines.collect::<Vec<_>>(), ["700", "600", "600"], "{seen}");
    let cert = std::path::Path::new(paths[0]);
    assert!(!cert.exists() && !cert.parent().unwrap().exists(), "{seen}");
    assert!(!std::path::Path::new(paths[1]).exists(), "{seen}");

    // A command's own exit code is exec's.
    let failed = with(mayfly().args([
        "exec",
        "api/client",
        "--ttl",
        "5m",
        "--reason",
        "code",
        "--",
        "sh",
        "-c",
        "exit 7",
    ]));
    assert_eq!(failed.status.code(), Some(7), "{failed:?}");

    // `--field`: one value; an absent one is an error that names it.
    let name = with(mayfly().args(["token", "lookup", "--field", "principal.name"]));
    assert!(name.status.success(), "{name:?}");
    assert_eq!(stdout(&name), "admin\n");
    let first = with(mayfly().args(["target", "list", "--field", "0.kind"]));
    assert_eq!(stdout(&first), "x509\n", "{first:?}");
    let absent = with(mayfly().args(["token", "lookup", "--field", "colour"]));
    assert_eq!(absent.status.code(), Some(1), "{absent:?}");
    assert!(stderr(&absent).contains("no field `colour`"), "{absent:?}");

    // A denied request exits 3 (`request` and `exec`, in text and JSON).
    let denied = with(mayfly().args(["request", "api/closed", "--ttl", "5m", "--reason", "no"]));
    assert_eq!(denied.status.code(), Some(3), "{denied:?}");
    let denied = with(mayfly().args([
        "exec",
        "api/closed",
        "--ttl",
        "5m",
        "--reason",
        "no",
        "--json",
        "--",
        "true",
    ]));
    assert_eq!(denied.status.code(), Some(3), "{denied:?}");
    assert!(denied.stdout.is_empty(), "{denied:?}");
    // A certificate role is asked for in one call, which the broker refuses with 403.
    assert_eq!(json_error(&denied).0, "forbidden");

    // `request --wait --timeout 2s` on a request waiting for an approval: exit 1 after about 2 s,
    // the request still pending.
    let started = std::time::Instant::now();
    let waited = with(mayfly().args([
        "request",
        "api/gated",
        "--ttl",
        "5m",
        "--reason",
        "wait",
        "--wait",
        "--timeout",
        "2s",
    ]));
    assert_eq!(waited.status.code(), Some(1), "{waited:?}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(stderr(&waited).contains("still pending"), "{waited:?}");
    let timeout = with(mayfly().args([
        "request",
        "api/gated",
        "--ttl",
        "5m",
        "--reason",
        "wait",
        "--wait",
        "--timeout",
        "1s",
        "--json",
    ]));
    assert_eq!(timeout.status.code(), Some(1), "{timeout:?}");
    assert_eq!(json_error(&timeout).0, "timeout");

    // `--json` on a broker's error: its error body on stderr, nothing on stdout.
    let unknown = with(mayfly().args(["revoke", "no-such-grant", "--json"]));
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(unknown.stdout.is_empty(), "{unknown:?}");
    let (code, message) = json_error(&unknown);
    assert_eq!(code, "not_found", "{message}");
    let anonymous = run(mayfly()
        .args(["user", "list", "--json"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", data.path().join("none")));
    assert_eq!(anonymous.status.code(), Some(1), "{anonymous:?}");
    assert_eq!(json_error(&anonymous).0, "unauthorized");
    let unreachable = run(mayfly()
        .args(["status", "--json"])
        .env("MAYFLY_ADDR", "http://127.0.0.1:9"));
    assert_eq!(unreachable.status.code(), Some(1), "{unreachable:?}");
    assert_eq!(json_error(&unreachable).0, "unreachable");
}

#[test]
fn usage_errors_exit_2_in_text_and_json() {
    let missing = run(mayfly().args(["request", "db/ro"]));
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    let duration = run(mayfly().args(["request", "db/ro", "--ttl", "1.5h", "--reason", "r"]));
    assert_eq!(duration.status.code(), Some(2), "{duration:?}");
    assert!(
        stderr(&duration).contains("is not a duration"),
        "{duration:?}"
    );
    let overflow = run(mayfly().args(["renew", "g", "--ttl", "99999999999999999999h", "--json"]));
    assert_eq!(overflow.status.code(), Some(2), "{overflow:?}");
    let (code, message) = json_error(&overflow);
    assert_eq!(code, "usage");
    assert!(message.contains("too long"), "{message}");
    let kind = run(mayfly().args(["target", "add", "oracle", "x", "--url", "u"]));
    assert_eq!(kind.status.code(), Some(2), "{kind:?}");
    assert!(
        stderr(&kind).contains("postgres, mysql, redis, ssh, x509"),
        "{kind:?}"
    );
    // `--help` is no error, and documents the exit codes.
    let help = run(mayfly().arg("--help"));
    assert_eq!(help.status.code(), Some(0));
    assert!(
        stdout(&help).contains("Exit codes:") && stdout(&help).contains("4  the audit log"),
        "{}",
        stdout(&help)
    );
    assert!(stdout(&help).contains("secrets"), "{}", stdout(&help));
    let help = run(mayfly().args(["secrets", "--help"]));
    assert_eq!(help.status.code(), Some(0));
    for command in [
        "put", "get", "ls", "history", "rm", "undelete", "destroy", "import",
    ] {
        assert!(stdout(&help).contains(command), "{}", stdout(&help));
    }
    let help = run(mayfly().args(["exec", "--help"]));
    assert!(stdout(&help).contains("--env"), "{}", stdout(&help));
    // Secret paths are checked before any call; exec needs a role or --env, not both.
    let bad = run(mayfly().args(["secrets", "get", "shop/../X"]));
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(stderr(&bad).contains("environment"), "{bad:?}");
    let both = run(mayfly().args(["exec", "db/ro", "--env", "shop/dev", "--", "true"]));
    assert_eq!(both.status.code(), Some(2), "{both:?}");
    let neither = run(mayfly().args(["exec", "--", "true"]));
    assert_eq!(neither.status.code(), Some(2), "{neither:?}");
}

#[test]
fn server_config_is_toml_with_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mayfly.toml");
    std::fs::write(
        &config,
        "version = 1\nstore = \"sqlite:///nonexistent/x.db\"\nlisten_addr = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let unknown = run(mayfly().args(["server", "--config"]).arg(&config));
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        stderr(&unknown).contains("unknown key `listen_addr`"),
        "{unknown:?}"
    );

    std::fs::write(&config, "version = 1\nstore = \"sqlite:///x.db\"\n").unwrap();
    let garbage = run(mayfly()
        .args(["server", "--json", "--config"])
        .arg(&config)
        .env("MAYFLY_ARGON2_THREADS", "lots"));
    assert_eq!(garbage.status.code(), Some(1), "{garbage:?}");
    let (_, message) = json_error(&garbage);
    assert!(message.contains("MAYFLY_ARGON2_THREADS"), "{message}");
    let listen = run(mayfly()
        .args(["server", "--config"])
        .arg(&config)
        .env("MAYFLY_LISTEN", "nowhere"));
    assert!(stderr(&listen).contains("MAYFLY_LISTEN"), "{listen:?}");
}
