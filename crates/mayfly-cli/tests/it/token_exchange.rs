//! `mayfly token exchange` against `mayfly dev`: it prints only the access token (a JWT for the
//! audience, with the scope and a lifetime no longer than asked); `--json` prints the whole answer;
//! the token exchanges again from a file (`--subject-token-file`, `--subject-token-type jwt`) and
//! narrows; a refused exchange exits non-zero with the OAuth error's description.

use base64::Engine;
use serde_json::Value;

use super::{mayfly, run, start_dev, stdout};

const POLICY: &str = r#"
@id("billing")
@max_ttl("600")
permit (principal in Group::"admins", action == Action::"exchange", resource == Audience::"billing")
when { ["read", "write"].containsAll(context.scope) };
"#;

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn token_exchange_prints_the_token_and_narrows() {
    let data = tempfile::tempdir().unwrap();
    let (_running, addr, token) = start_dev(data.path());
    let client = |args: &[&str]| {
        run(mayfly()
            .args(args)
            .env("MAYFLY_ADDR", &addr)
            .env("MAYFLY_TOKEN", &token))
    };
    let policy = data.path().join("exchange.cedar");
    std::fs::write(&policy, POLICY).unwrap();
    let put = client(&["policy", "put", policy.to_str().unwrap()]);
    assert!(put.status.success(), "{put:?}");

    let printed = client(&[
        "token",
        "exchange",
        "--audience",
        "billing",
        "--scope",
        "read write",
        "--ttl",
        "5m",
    ]);
    assert!(printed.status.success(), "{printed:?}");
    let text = stdout(&printed);
    let jwt = text.trim();
    assert_eq!(text.lines().count(), 1, "only the token: {text}");
    assert_eq!(jwt.split('.').count(), 3, "{text}");
    let claims = claims_of(jwt);
    assert_eq!(claims["aud"], "billing");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(claims["sub"], "user:admin");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );

    // The JWT, from a file, exchanges for a narrower one.
    let file = data.path().join("billing.jwt");
    std::fs::write(&file, jwt).unwrap();
    let json = client(&[
        "--json",
        "token",
        "exchange",
        "--audience",
        "billing",
        "--scope",
        "read",
        "--subject-token-file",
        file.to_str().unwrap(),
        "--subject-token-type",
        "jwt",
    ]);
    assert!(json.status.success(), "{json:?}");
    let answer: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(answer["scope"], "read", "{answer}");
    assert_eq!(answer["token_type"], "Bearer", "{answer}");
    assert!(answer["expires_in"].as_i64().unwrap() <= 300, "{answer}");
    assert_eq!(
        claims_of(answer["access_token"].as_str().unwrap())["scope"],
        "read"
    );

    // Wider than the subject JWT: refused, with OAuth's description, nothing on stdout.
    let wider = client(&[
        "token",
        "exchange",
        "--audience",
        "billing",
        "--scope",
        "read write admin",
        "--subject-token-file",
        file.to_str().unwrap(),
    ]);
    assert!(!wider.status.success(), "{wider:?}");
    assert!(wider.stdout.is_empty(), "{wider:?}");
    let stderr = String::from_utf8_lossy(&wider.stderr);
    assert!(
        stderr.contains("does not hold the scope `admin`"),
        "{stderr}"
    );

    // An audience no policy permits.
    let denied = client(&["token", "exchange", "--audience", "payroll"]);
    assert!(!denied.status.success(), "{denied:?}");
    assert!(denied.stdout.is_empty(), "{denied:?}");
}
