//! `mayfly sso add` and `mayfly login --oidc` against `mayfly dev` and a real OpenID Provider
//! (panva's oidc-provider on Node.js, `crates/mayfly-server/tests/oidc/`): the CLI prints the
//! provider's URL, listens on 127.0.0.1, takes the browser's one-time code there, trades it with
//! its own PKCE verifier and keeps the session like any login.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::{Running, free_port, mayfly, run, start_dev, stdout};

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../mayfly-server/tests/oidc")
}

/// Keeps cookies and follows redirects one by one, filling the provider's forms as `login`,
/// until a redirect to a `/callback` path (the CLI's listener); returns it.
async fn browse(start: &str, login: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut cookies = BTreeMap::new();
    let mut url = reqwest::Url::parse(start).unwrap();
    for _ in 0..12 {
        let cookie = |cookies: &BTreeMap<String, String>| {
            cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let keep = |cookies: &mut BTreeMap<String, String>, response: &reqwest::Response| {
            for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
                let pair = value.to_str().unwrap().split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                cookies.insert(name.to_owned(), value.to_owned());
            }
        };
        let mut response = http
            .get(url.clone())
            .header(reqwest::header::COOKIE, cookie(&cookies))
            .send()
            .await
            .unwrap();
        keep(&mut cookies, &response);
        if response.status() == 200 {
            let html = response.text().await.unwrap();
            let action = html
                .split("action=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap();
            let form: &[(&str, &str)] = if html.contains("value=\"login\"") {
                &[("prompt", "login"), ("login", login), ("password", "any")]
            } else {
                &[("prompt", "consent")]
            };
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            response = http
                .post(url.join(action).unwrap())
                .header(reqwest::header::COOKIE, cookie(&cookies))
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body)
                .send()
                .await
                .unwrap();
            keep(&mut cookies, &response);
        }
        let location = response.headers()[reqwest::header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        let next = url.join(&location).unwrap();
        if next.path() == "/callback" {
            return next.to_string();
        }
        url = next;
    }
    panic!("never sent to the CLI's listener");
}

#[tokio::test(flavor = "multi_thread")]
async fn login_oidc_takes_the_code_on_its_loopback_listener() {
    let dir = provider_dir();
    assert!(
        dir.join("node_modules/oidc-provider").exists(),
        "run scripts/services.sh (npm ci --prefix {})",
        dir.display()
    );
    let data = tempfile::tempdir().unwrap();
    let (_dev, addr, admin) = start_dev(data.path());
    let port = free_port();
    let _idp = Running(
        std::process::Command::new("node")
            .arg("provider.js")
            .args(["--port", &port.to_string(), "--redirect-uri"])
            .arg(format!("{addr}/v1/sso/callback"))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let issuer = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        let up = reqwest::get(format!("{issuer}/.well-known/openid-configuration"))
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secret = data.path().join("client-secret");
    std::fs::write(&secret, "mayfly-secret\n").unwrap();
    let added = run(mayfly()
        .args([
            "sso",
            "add",
            "idp",
            "--issuer",
            &issuer,
            "--client-id",
            "mayfly",
        ])
        .arg("--client-secret-file")
        .arg(&secret)
        .args(["--groups-claim", "groups"])
        .args(["--map-group", "idp-engineering=engineering"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN", &admin));
    assert!(added.status.success(), "{added:?}");
    assert!(
        stdout(&added).contains(&format!("{addr}/v1/sso/callback")),
        "{added:?}"
    );

    let token_file = data.path().join("token");
    let mut login = mayfly()
        .args(["login", "--oidc", "--no-browser"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", &token_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = login.stderr.take().unwrap();
    let url = BufReader::new(stderr)
        .lines()
        .map(Result::unwrap)
        .find_map(|line| {
            line.trim()
                .starts_with("http")
                .then(|| line.trim().to_owned())
        })
        .unwrap();
    let loopback = browse(&url, "carol").await;
    assert!(loopback.contains("/callback?code="), "{loopback}");
    // The browser arrives at the CLI's listener.
    let page = reqwest::get(&loopback).await.unwrap();
    assert_eq!(page.status(), 200);
    let output = tokio::task::spawn_blocking(move || login.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout(&output).contains("logged in as user:carol"),
        "{output:?}"
    );

    let lookup = run(mayfly()
        .args(["--json", "token", "lookup"])
        .env("MAYFLY_ADDR", &addr)
        .env("MAYFLY_TOKEN_FILE", &token_file));
    assert!(lookup.status.success(), "{lookup:?}");
    let session: serde_json::Value = serde_json::from_slice(&lookup.stdout).unwrap();
    assert_eq!(session["principal"]["name"], "carol");
    assert_eq!(
        session["principal"]["groups"],
        serde_json::json!(["engineering"])
    );
}
