//! `mayfly operator rotate-signing-key` against `mayfly dev`: it prints the new keys, which are in
//! the JWKS with the previous ones (whose discovery document names the dev broker's own address);
//! `--json` and `--field` answer like every command; a non-admin is refused.

use serde_json::Value;

use super::{mayfly, run, start_dev, stdout};

/// `GET addr/path`, which must answer 200 with JSON.
fn get_json(addr: &str, path: &str) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::get(format!("{addr}{path}")).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    })
}

fn jwks_kids(addr: &str) -> Vec<String> {
    get_json(addr, "/.well-known/jwks.json")["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn rotate_signing_key_prints_the_new_keys_and_keeps_the_old_ones_published() {
    let data = tempfile::tempdir().unwrap();
    let (_running, addr, token) = start_dev(data.path());
    let client = |args: &[&str]| {
        run(mayfly()
            .args(args)
            .env("MAYFLY_ADDR", &addr)
            .env("MAYFLY_TOKEN", &token))
    };
    let first = jwks_kids(&addr);
    assert_eq!(first.len(), 2, "{first:?}");

    let text = client(&["operator", "rotate-signing-key"]);
    assert!(text.status.success(), "{text:?}");
    let text = stdout(&text);
    assert!(text.contains("new signing keys"), "{text}");
    assert!(text.contains("EdDSA") && text.contains("ES256"), "{text}");
    for kid in &first {
        assert!(
            text.contains(kid.as_str()),
            "the previous key {kid} in {text}"
        );
    }
    let after_text = jwks_kids(&addr);
    assert_eq!(after_text.len(), 4, "{after_text:?}");

    let json = client(&["--json", "operator", "rotate-signing-key"]);
    assert!(json.status.success(), "{json:?}");
    let answer: Value = serde_json::from_slice(&json.stdout).unwrap();
    let new: Vec<String> = answer["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(new.len(), 2, "{answer}");
    assert_eq!(jwks_kids(&addr)[..2], new[..]);

    let field = client(&["--field", "generation", "operator", "rotate-signing-key"]);
    assert!(field.status.success(), "{field:?}");
    assert!(!stdout(&field).trim().is_empty());

    // The discovery document of `mayfly dev` names its own address.
    let discovery = get_json(&addr, "/.well-known/openid-configuration");
    assert_eq!(discovery["issuer"], addr.as_str());
    assert_eq!(
        discovery["jwks_uri"],
        format!("{addr}/.well-known/jwks.json").as_str()
    );

    // Without a session: refused, nothing rotated.
    let before = jwks_kids(&addr);
    let anonymous = run(mayfly()
        .args(["operator", "rotate-signing-key"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", data.path().join("none")));
    assert!(!anonymous.status.success());
    assert_eq!(jwks_kids(&addr), before);
}
