//! Single sign-on end to end against a real OpenID Provider: panva's certified `oidc-provider`
//! on Node.js (tests/oidc/provider.js, installed by scripts/services.sh with `npm ci`). The test
//! plays the browser with plain HTTP (cookies, the provider's login and consent forms) and the
//! CLI (its loopback code and PKCE verifier).
//!
//! Refused, each with its reason and no session made: a tampered ID token, a wrong `nonce` (an
//! earlier ID token), a wrong audience (an ID token issued to another client), a replayed
//! `state`, an expired flow; a local user's name; the CLI's code replayed or without its
//! verifier; a step-up by another person, with a stale `auth_time`, or replayed; a step-up's
//! code completed by another session, with a wrong verifier, or replayed. The provider's
//! `/__test/tamper` hook stands for a relay in front of its token endpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mayfly_server::clock::{Clock, SystemClock};
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

/// The provider, a `node` child killed when dropped.
struct Idp {
    base: String,
    _child: tokio::process::Child,
}

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

impl Idp {
    async fn start(broker: &TestBroker) -> Idp {
        let dir = provider_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run scripts/services.sh (it runs `npm ci --prefix {}`; needs Node.js 20+ and npm)",
            dir.display()
        );
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new("node")
            .arg("provider.js")
            .arg("--port")
            .arg(port.to_string())
            .arg("--redirect-uri")
            .arg(format!("{}/v1/sso/callback", broker.addr))
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node is not installed: apt-get install nodejs npm");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..200 {
            let up = http
                .get(format!("{base}/.well-known/openid-configuration"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return Idp {
                    base,
                    _child: child,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("oidc-provider did not start on {base}");
    }

    async fn control(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.base)).unwrap();
        url.query_pairs_mut().extend_pairs(query);
        reqwest::Client::new()
            .post(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The ID tokens issued so far to `client`.
    async fn id_tokens(&self, client: &str) -> Vec<String> {
        let issued = self.control("/__test/tokens", &[]).await;
        issued
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["client_id"] == client)
            .map(|t| t["id_token"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A form POST (`application/x-www-form-urlencoded`).
fn form_post(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    http.post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
}

/// A browser: follows nothing by itself, keeps cookies, fills the provider's forms.
struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
            let text = value.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let response = request
            .header(reqwest::header::COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }

    /// From the authorization URL through the provider's login (as `login`) and consent, to the
    /// redirect back to `until` (a URL prefix); returns that redirect.
    async fn authorize(&mut self, authorization_url: &str, login: &str, until: &str) -> String {
        let mut url = reqwest::Url::parse(authorization_url).unwrap();
        for _ in 0..12 {
            let response = self.send(self.http.get(url.clone())).await;
            let response = if response.status() == 200 {
                let html = response.text().await.unwrap();
                let action = html
                    .split("action=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_else(|| panic!("no form on {url}: {html}"));
                let action = url.join(action).unwrap();
                let form: Vec<(&str, &str)> = if html.contains("value=\"login\"") {
                    vec![("prompt", "login"), ("login", login), ("password", "any")]
                } else {
                    vec![("prompt", "consent")]
                };
                self.send(form_post(&self.http, action.as_str(), &form))
                    .await
            } else {
                response
            };
            assert!(
                response.status().is_redirection(),
                "{url}: {}",
                response.status()
            );
            let location = response.headers()[reqwest::header::LOCATION]
                .to_str()
                .unwrap()
                .to_owned();
            let next = url.join(&location).unwrap();
            if next.as_str().starts_with(until) {
                return next.to_string();
            }
            url = next;
        }
        panic!("the provider never sent the browser back to {until}");
    }
}

/// A broker with the provider `idp` configured (groups mapped) and the provider running.
async fn setup() -> (TestBroker, Idp, String) {
    setup_on(TestBroker::ready().await).await
}

async fn setup_on(broker: TestBroker) -> (TestBroker, Idp, String) {
    let idp = Idp::start(&broker).await;
    let admin = broker.admin_token.clone().unwrap();
    let info = broker
        .expect(
            200,
            "PUT",
            "/v1/sso/providers/idp",
            Some(&admin),
            Some(json!({
                "issuer": idp.base,
                "client_id": "mayfly",
                "client_secret": "mayfly-secret",
                "groups_claim": "groups",
                "group_map": {"idp-engineering": "engineering", "idp-ops": "ops"},
            })),
        )
        .await;
    assert_eq!(info["token_endpoint"], format!("{}/token", idp.base));
    assert_eq!(
        info["redirect_uri"],
        format!("{}/v1/sso/callback", broker.addr)
    );
    (broker, idp, admin)
}

fn callback_prefix(broker: &TestBroker) -> String {
    format!("{}/v1/sso/callback", broker.addr)
}

/// The broker's manual clock stands still while the provider's runs: set it to the real time
/// before each flow, so the provider's `iat` is not in the broker's future.
fn sync_clock(broker: &TestBroker) {
    broker.clock.set(SystemClock.now());
}

async fn start(broker: &TestBroker, body: Value) -> String {
    sync_clock(broker);
    let started = broker
        .expect(200, "POST", "/v1/sso/start", None, Some(body))
        .await;
    started["authorization_url"].as_str().unwrap().to_owned()
}

/// The broker's answer to the browser coming back: status, body, and `Location` if any.
async fn come_back(url: &str) -> (u16, Value, Option<String>) {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|l| l.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, location)
}

/// A whole browser login as `login`; returns the broker's answer to the callback.
async fn browser_login(broker: &TestBroker, login: &str) -> (u16, Value, String) {
    let url = start(broker, json!({"provider": "idp"})).await;
    let back = Browser::new()
        .authorize(&url, login, &callback_prefix(broker))
        .await;
    let (status, body, _) = come_back(&back).await;
    (status, body, back)
}

fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn n_sessions(broker: &TestBroker) -> usize {
    let events = broker
        .broker
        .store()
        .stored_audit_events(0, 100_000)
        .await
        .unwrap();
    events
        .iter()
        .filter(|e| {
            (e.kind == "auth.sso.login" || e.kind == "auth.sso.token")
                && e.body.contains("\"session_id\"")
                && e.body.contains("\"outcome\":\"ok\"")
        })
        .count()
}

async fn events_of(broker: &TestBroker, kind: &str) -> Vec<Value> {
    let events = broker
        .broker
        .store()
        .stored_audit_events(0, 100_000)
        .await
        .unwrap();
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| serde_json::from_str(&e.body).unwrap())
        .collect()
}

#[tokio::test]
async fn a_person_logs_in_once_made_and_groups_follow_the_provider() {
    let (broker, idp, admin) = setup().await;
    let (status, body, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let me = broker
        .expect(200, "GET", "/v1/auth/token/lookup-self", Some(&token), None)
        .await;
    assert_eq!(me["principal"]["name"], "carol", "{me}");
    // `idp-unmapped` is ignored.
    assert_eq!(me["principal"]["groups"], json!(["engineering"]), "{me}");

    // The provider moves carol to another group: the next login says so; same user.
    idp.control(
        "/__test/account",
        &[("login", "carol"), ("groups", "idp-ops")],
    )
    .await;
    let (status, again, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["session"]["principal"]["groups"], json!(["ops"]));
    let users = broker
        .expect(200, "GET", "/v1/users", Some(&admin), None)
        .await;
    let carols: Vec<&Value> = users
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["username"] == "carol")
        .collect();
    assert_eq!(carols.len(), 1, "{users}");
    let logins = events_of(&broker, "auth.sso.login").await;
    let new_users: Vec<bool> = logins
        .iter()
        .filter_map(|e| e["details"]["new_user"].as_bool())
        .collect();
    assert_eq!(new_users, vec![true, false], "{logins:?}");

    // No password works for a user made by single sign-on.
    let (status, _) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(json!({"username": "carol", "password": "!sso", "totp": "000000"})),
        )
        .await;
    assert_eq!(status, 401);

    // A disabled user cannot log in by single sign-on.
    broker
        .expect(
            200,
            "PATCH",
            "/v1/users/carol",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    let (status, body, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("disabled"), "{body}");
}

/// The console's login: `/ui/sso/start` binds the flow to the browser with a cookie only the
/// callback receives; the callback answers the session as the console's cookie, and a callback
/// URL carried to another browser (login CSRF: the attacker's account in the victim's browser)
/// is refused and uses the flow up.
#[tokio::test]
async fn the_console_logs_in_by_sso_only_in_the_browser_that_started() {
    let (broker, _idp, _admin) = setup().await;
    sync_clock(&broker);
    let mut browser = Browser::new();
    let started = browser
        .send(
            browser
                .http
                .get(format!("{}/ui/sso/start?provider=idp", broker.addr)),
        )
        .await;
    assert_eq!(started.status(), 303);
    assert!(browser.cookies.contains_key("mayfly_sso_browser"));
    let to_provider = started.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let back = browser
        .authorize(&to_provider, "carol", &callback_prefix(&broker))
        .await;

    // Another browser (no binding cookie) with the same callback URL: refused, flow used up.
    let (status, body, _) = come_back(&back).await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("another browser"), "{body}");

    // A fresh flow, finished in the browser that started it.
    let mut browser = Browser::new();
    let started = browser
        .send(
            browser
                .http
                .get(format!("{}/ui/sso/start?provider=idp", broker.addr)),
        )
        .await;
    let to_provider = started.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let back = browser
        .authorize(&to_provider, "carol", &callback_prefix(&broker))
        .await;
    let response = browser.send(browser.http.get(&back)).await;
    assert_eq!(response.status(), 200);
    let set_cookies: Vec<String> = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set_cookies
        .iter()
        .find(|c| c.starts_with("mayfly_session="))
        .unwrap_or_else(|| panic!("{set_cookies:?}"));
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(session.contains(attribute), "{session}");
    }
    let html = response.text().await.unwrap();
    assert!(html.contains("url=/ui/access"), "{html}");
    assert!(!html.contains("mft_"), "the token is in the page: {html}");
    let page = browser
        .send(browser.http.get(format!("{}/ui/access", broker.addr)))
        .await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(">carol<"), "{html}");

    // The same callback again: the flow is used up.
    let again = browser.send(browser.http.get(&back)).await;
    assert_eq!(again.status(), 401);
}

#[tokio::test]
async fn a_local_user_or_a_name_of_another_identity_is_not_taken_over() {
    let (broker, idp, _admin) = setup().await;
    // `alice` is a local (password) user of the broker.
    let (status, body, _) = browser_login(&broker, "alice").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        message(&body).contains("a user named `alice` already exists"),
        "{body}"
    );
    // carol logs in; then another account at the provider calls itself carol.
    let (status, body, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 200, "{body}");
    idp.control(
        "/__test/account",
        &[("login", "mallory"), ("username", "carol")],
    )
    .await;
    let (status, body, _) = browser_login(&broker, "mallory").await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("already exists"), "{body}");
    assert_eq!(n_sessions(&broker).await, 1);
}

/// An ID token the provider issued to its other client (`other`), obtained as that client would.
async fn id_token_of_other_client(broker: &TestBroker, idp: &Idp) -> String {
    let verifier = "a-verifier-of-the-other-client-0123456789abcdef";
    let challenge = URL_SAFE_NO_PAD.encode(mayfly_crypto::sha256(verifier.as_bytes()));
    let redirect = callback_prefix(broker);
    let mut url = reqwest::Url::parse(&format!("{}/auth", idp.base)).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "other")
        .append_pair("redirect_uri", &redirect)
        .append_pair("scope", "openid profile")
        .append_pair("state", "s")
        .append_pair("nonce", "n")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let back = Browser::new()
        .authorize(url.as_str(), "carol", &redirect)
        .await;
    let back = reqwest::Url::parse(&back).unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let answer: Value = form_post(
        &reqwest::Client::new(),
        &format!("{}/token", idp.base),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect),
            ("code_verifier", verifier),
        ],
    )
    .basic_auth("other", Some("other-secret"))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    answer["id_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn forged_replayed_or_late_answers_are_refused() {
    let (broker, idp, _admin) = setup().await;
    let (status, body, first_callback) = browser_login(&broker, "carol").await;
    assert_eq!(status, 200, "{body}");
    let earlier = idp.id_tokens("mayfly").await.pop().unwrap();
    let sessions = n_sessions(&broker).await;

    // A replayed `state` (the same callback again).
    let (status, body, _) = come_back(&first_callback).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        message(&body).contains("unknown, expired or already used"),
        "{body}"
    );

    // A tampered ID token: one byte of its signature flipped.
    idp.control("/__test/tamper", &[("mode", "flip")]).await;
    let (status, body, back) = browser_login(&broker, "carol").await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("signature"), "{body}");
    // That flow is used up: the same answer again finds nothing.
    let (status, body, _) = come_back(&back).await;
    assert_eq!(status, 401);
    assert!(message(&body).contains("already used"), "{body}");

    // A token answer larger than 256 KiB is refused (read with the cap, not whole).
    idp.control("/__test/tamper", &[("mode", "huge")]).await;
    let (status, body, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("256 KiB"), "{body}");

    // A wrong nonce: an earlier ID token (good signature, our audience, another login's nonce).
    idp.control(
        "/__test/tamper",
        &[("mode", "substitute"), ("token", &earlier)],
    )
    .await;
    let (status, body, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("`nonce`"), "{body}");

    // A wrong audience: an ID token the provider issued to its other client.
    let others = id_token_of_other_client(&broker, &idp).await;
    idp.control(
        "/__test/tamper",
        &[("mode", "substitute"), ("token", &others)],
    )
    .await;
    let (status, body, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("audience"), "{body}");

    // An expired flow: the person comes back after the flow's 10 minutes.
    let url = start(&broker, json!({"provider": "idp"})).await;
    let back = Browser::new()
        .authorize(&url, "carol", &callback_prefix(&broker))
        .await;
    broker.clock.advance(Duration::from_secs(601));
    let (status, body, _) = come_back(&back).await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("expired"), "{body}");

    // A provider's error answer, and a made-up state.
    let (status, _, _) = come_back(&format!(
        "{}?state=made-up&code=x",
        callback_prefix(&broker)
    ))
    .await;
    assert_eq!(status, 401);

    assert_eq!(
        n_sessions(&broker).await,
        sessions,
        "no refusal made a session"
    );
    let refused = events_of(&broker, "auth.sso.login")
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "refused")
        .count();
    assert!(refused >= 5, "every refusal is audited");
}

fn pkce_pair(seed: &str) -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(mayfly_crypto::sha256(seed.as_bytes()));
    let challenge = URL_SAFE_NO_PAD.encode(mayfly_crypto::sha256(verifier.as_bytes()));
    (verifier, challenge)
}

/// A CLI flow up to the loopback redirect; returns the one-time code.
async fn cli_code(broker: &TestBroker, challenge: &str) -> String {
    let loopback = "http://127.0.0.1:45678/callback";
    let url = start(
        broker,
        json!({"provider": "idp", "redirect_uri": loopback, "code_challenge": challenge}),
    )
    .await;
    let back = Browser::new()
        .authorize(&url, "carol", &callback_prefix(broker))
        .await;
    let (status, body, location) = come_back(&back).await;
    assert_eq!(status, 303, "{body}");
    let location = location.unwrap();
    assert!(location.starts_with(loopback), "{location}");
    let location = reqwest::Url::parse(&location).unwrap();
    location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned()
}

#[tokio::test]
async fn the_cli_trades_its_loopback_code_once_and_only_with_its_verifier() {
    let (broker, _idp, _admin) = setup().await;
    let (verifier, challenge) = pkce_pair("cli-1");

    let code = cli_code(&broker, &challenge).await;
    let (other_verifier, _) = pkce_pair("someone-else");
    let (status, body) = broker
        .call(
            "POST",
            "/v1/sso/token",
            None,
            Some(json!({"code": code, "code_verifier": other_verifier})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("verifier"), "{body}");
    // A wrong verifier burns the code: the right one comes too late.
    let (status, _) = broker
        .call(
            "POST",
            "/v1/sso/token",
            None,
            Some(json!({"code": code, "code_verifier": verifier})),
        )
        .await;
    assert_eq!(status, 401);

    let code = cli_code(&broker, &challenge).await;
    let login = broker
        .expect(
            200,
            "POST",
            "/v1/sso/token",
            None,
            Some(json!({"code": code, "code_verifier": verifier})),
        )
        .await;
    assert_eq!(login["session"]["principal"]["name"], "carol");
    let token = login["token"].as_str().unwrap();
    broker
        .expect(200, "GET", "/v1/auth/token/lookup-self", Some(token), None)
        .await;
    // Replayed.
    let (status, body) = broker
        .call(
            "POST",
            "/v1/sso/token",
            None,
            Some(json!({"code": code, "code_verifier": verifier})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("already used"), "{body}");

    // Only a loopback listener may receive a code; a challenge comes with it.
    for (uri, expect) in [
        ("http://evil.example:8080/cb", "redirect_uri"),
        ("http://localhost:8080/cb", "redirect_uri"),
        ("https://127.0.0.1:8080/cb", "redirect_uri"),
        ("http://127.0.0.1/cb", "redirect_uri"),
        ("http://127.0.0.1.nip.io:8080/cb", "redirect_uri"),
        ("http://user@127.0.0.1:8080/cb", "redirect_uri"),
    ] {
        let (status, body) = broker
            .call(
                "POST",
                "/v1/sso/start",
                None,
                Some(json!({"provider": "idp", "redirect_uri": uri, "code_challenge": challenge})),
            )
            .await;
        assert_eq!(status, 400, "{uri}: {body}");
        assert!(message(&body).contains(expect), "{uri}: {body}");
    }
    let (status, body) = broker
        .call(
            "POST",
            "/v1/sso/start",
            None,
            Some(json!({"provider": "idp", "redirect_uri": "http://127.0.0.1:9/cb"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = broker
        .call(
            "POST",
            "/v1/sso/start",
            None,
            Some(json!({"provider": "nope"})),
        )
        .await;
    assert_eq!(status, 404);
}

/// Starts a step-up of the session `token` with PKCE `challenge`; returns the authorization URL.
async fn step_up_start(broker: &TestBroker, token: &str, challenge: &str) -> String {
    sync_clock(broker);
    let started = broker
        .expect(
            200,
            "POST",
            "/v1/sso/step-up",
            Some(token),
            Some(json!({"provider": "idp", "code_challenge": challenge})),
        )
        .await;
    started["authorization_url"].as_str().unwrap().to_owned()
}

async fn factor_at(broker: &TestBroker, token: &str) -> Option<mayfly_core::Timestamp> {
    let hash = mayfly_crypto::token::hash_token(token);
    broker
        .broker
        .store()
        .session_by_hash(&hash)
        .await
        .unwrap()
        .expect("the session")
        .factor_at
}

/// `POST /v1/sso/step-up/complete` by `token`: status and body.
async fn step_up_complete(
    broker: &TestBroker,
    token: &str,
    code: &str,
    verifier: &str,
) -> (u16, Value) {
    broker
        .call(
            "POST",
            "/v1/sso/step-up/complete",
            Some(token),
            Some(json!({"code": code, "code_verifier": verifier})),
        )
        .await
}

#[tokio::test]
async fn a_session_re_authenticates_for_step_up_only_as_its_own_person_and_freshly() {
    let (broker, idp, admin) = setup().await;
    let (status, body, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 200, "{body}");
    let carol = body["token"].as_str().unwrap().to_owned();
    let session_id = body["session"]["id"].as_str().unwrap().to_owned();
    let (status, body, _) = browser_login(&broker, "dave").await;
    assert_eq!(status, 200, "{body}");
    let (verifier, challenge) = pkce_pair("step-up-1");

    // A step-up needs the caller's PKCE challenge.
    let (status, body) = broker
        .call(
            "POST",
            "/v1/sso/step-up",
            Some(&carol),
            Some(json!({"provider": "idp"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("code_challenge"), "{body}");

    // A login by the provider is no second factor; a re-authentication is, once completed.
    assert_eq!(factor_at(&broker, &carol).await, None);
    let url = step_up_start(&broker, &carol, &challenge).await;
    assert!(
        url.contains("prompt=login") && url.contains("max_age=0"),
        "{url}"
    );
    let back = Browser::new()
        .authorize(&url, "carol", &callback_prefix(&broker))
        .await;
    let (status, body, _) = come_back(&back).await;
    assert_eq!(status, 200, "{body}");
    let code = body["code"].as_str().expect("a step-up code").to_owned();
    // The callback itself records nothing.
    assert_eq!(factor_at(&broker, &carol).await, None);
    assert!(events_of(&broker, "auth.step_up").await.is_empty());
    let (status, body) = step_up_complete(&broker, &carol, &code, &verifier).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session_id"], session_id.as_str());
    let stepped = events_of(&broker, "auth.step_up").await;
    assert_eq!(stepped.len(), 1, "{stepped:?}");
    assert_eq!(stepped[0]["details"]["method"], "oidc");
    assert_eq!(stepped[0]["details"]["session_id"], session_id.as_str());
    let factor = factor_at(&broker, &carol)
        .await
        .expect("the re-authentication counts as a second factor");
    assert_eq!(
        stepped[0]["details"]["factor_at_ms"].as_i64(),
        Some(factor.unix_ms())
    );
    // The code replayed.
    let (status, body) = step_up_complete(&broker, &carol, &code, &verifier).await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("already used"), "{body}");

    // The callback replayed.
    let (status, body, _) = come_back(&back).await;
    assert_eq!(status, 401, "{body}");

    // Another person authenticates at the provider.
    let url = step_up_start(&broker, &carol, &challenge).await;
    let back = Browser::new()
        .authorize(&url, "dave", &callback_prefix(&broker))
        .await;
    let (status, body, _) = come_back(&back).await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("not this session's user"), "{body}");

    // A stale authentication: the provider's `auth_time` is older than the request (the
    // broker's clock is ahead of the provider's by more than the leeway).
    sync_clock(&broker);
    broker.clock.advance(Duration::from_secs(120));
    let started = broker
        .expect(
            200,
            "POST",
            "/v1/sso/step-up",
            Some(&carol),
            Some(json!({"provider": "idp", "code_challenge": challenge})),
        )
        .await;
    let url = started["authorization_url"].as_str().unwrap().to_owned();
    let back = Browser::new()
        .authorize(&url, "carol", &callback_prefix(&broker))
        .await;
    let (status, body, _) = come_back(&back).await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("auth_time"), "{body}");

    assert_eq!(events_of(&broker, "auth.step_up").await.len(), 1);

    // With a loopback listener, the code goes there.
    let loopback = "http://127.0.0.1:45679/step-up";
    sync_clock(&broker);
    let started = broker
        .expect(
            200,
            "POST",
            "/v1/sso/step-up",
            Some(&carol),
            Some(json!({"provider": "idp", "code_challenge": challenge, "redirect_uri": loopback})),
        )
        .await;
    let url = started["authorization_url"].as_str().unwrap().to_owned();
    let back = Browser::new()
        .authorize(&url, "carol", &callback_prefix(&broker))
        .await;
    let (status, body, location) = come_back(&back).await;
    assert_eq!(status, 303, "{body}");
    let location = reqwest::Url::parse(&location.unwrap()).unwrap();
    assert!(location.as_str().starts_with(loopback), "{location}");
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let (status, body) = step_up_complete(&broker, &carol, &code, &verifier).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(events_of(&broker, "auth.step_up").await.len(), 2);

    // A provider with `step_up_acr_values`: the authorization asks for them, and an ID token
    // without one of them (this provider names no `acr`) is refused.
    broker
        .expect(
            200,
            "PUT",
            "/v1/sso/providers/idp",
            Some(&admin),
            Some(json!({
                "issuer": idp.base,
                "client_id": "mayfly",
                "client_secret": "mayfly-secret",
                "groups_claim": "groups",
                "group_map": {"idp-engineering": "engineering", "idp-ops": "ops"},
                "step_up_acr_values": "urn:mayfly:mfa",
            })),
        )
        .await;
    let url = step_up_start(&broker, &carol, &challenge).await;
    assert!(url.contains("acr_values=urn%3Amayfly%3Amfa"), "{url}");
    let back = Browser::new()
        .authorize(&url, "carol", &callback_prefix(&broker))
        .await;
    let (status, body, _) = come_back(&back).await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("`acr`"), "{body}");
    assert_eq!(events_of(&broker, "auth.step_up").await.len(), 2);

    // Only people re-authenticate; a session is needed.
    let (status, _) = broker
        .call(
            "POST",
            "/v1/sso/step-up",
            None,
            Some(json!({"provider": "idp", "code_challenge": challenge})),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = broker
        .call(
            "POST",
            "/v1/sso/step-up/complete",
            None,
            Some(json!({"code": code, "code_verifier": verifier})),
        )
        .await;
    assert_eq!(status, 401);
}

/// The attack: with carol's stolen session token, an attacker starts a step-up and has carol
/// re-authenticate at the provider. Her re-authentication must lend the stolen session nothing.
#[tokio::test]
async fn a_step_up_started_with_a_stolen_session_gives_it_no_factor() {
    let (broker, _idp, _admin) = setup().await;
    let (status, body, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 200, "{body}");
    let stolen = body["token"].as_str().unwrap().to_owned();
    let (status, body, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 200, "{body}");
    let victims_own = body["token"].as_str().unwrap().to_owned();
    let (attacker_verifier, attacker_challenge) = pkce_pair("attacker");

    // The attacker starts; the victim's browser authenticates and gets the callback's answer.
    let url = step_up_start(&broker, &stolen, &attacker_challenge).await;
    let back = Browser::new()
        .authorize(&url, "carol", &callback_prefix(&broker))
        .await;
    let (status, body, _) = come_back(&back).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        factor_at(&broker, &stolen).await,
        None,
        "the callback gave the stolen session a second factor"
    );
    let code = body["code"].as_str().unwrap().to_owned();
    // The code in the victim's hands: her own session cannot use it even with the verifier
    // (another session's step-up), and that burns it for the attacker too.
    let (status, body) = step_up_complete(&broker, &victims_own, &code, &attacker_verifier).await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("another session"), "{body}");
    let (status, _) = step_up_complete(&broker, &stolen, &code, &attacker_verifier).await;
    assert_eq!(status, 401);
    assert_eq!(factor_at(&broker, &stolen).await, None);
    assert_eq!(factor_at(&broker, &victims_own).await, None);

    // One wrong verifier burns a code: the right one then comes too late.
    let url = step_up_start(&broker, &stolen, &attacker_challenge).await;
    let back = Browser::new()
        .authorize(&url, "carol", &callback_prefix(&broker))
        .await;
    let (_, body, _) = come_back(&back).await;
    let code = body["code"].as_str().unwrap().to_owned();
    let (wrong_verifier, _) = pkce_pair("guess");
    let (status, body) = step_up_complete(&broker, &stolen, &code, &wrong_verifier).await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("verifier"), "{body}");
    let (status, _) = step_up_complete(&broker, &stolen, &code, &attacker_verifier).await;
    assert_eq!(status, 401);
    // Garbage is a 400 naming the field; an unknown code a 401.
    let (status, body) = step_up_complete(&broker, &stolen, &code, "short").await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("code_verifier"), "{body}");
    let (status, _) = step_up_complete(&broker, &stolen, "no-such-code", &attacker_verifier).await;
    assert_eq!(status, 401);
    assert_eq!(factor_at(&broker, &stolen).await, None);
    assert!(events_of(&broker, "auth.step_up").await.is_empty());
}

#[tokio::test]
async fn a_disabled_user_gets_no_step_up_code() {
    let (broker, _idp, admin) = setup().await;
    let (status, body, _) = browser_login(&broker, "carol").await;
    assert_eq!(status, 200, "{body}");
    let carol = body["token"].as_str().unwrap().to_owned();
    let (_, challenge) = pkce_pair("disabled");
    let url = step_up_start(&broker, &carol, &challenge).await;
    // Disabled while she is at the provider.
    broker
        .expect(
            200,
            "PATCH",
            "/v1/users/carol",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    let back = Browser::new()
        .authorize(&url, "carol", &callback_prefix(&broker))
        .await;
    let (status, body, _) = come_back(&back).await;
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("disabled"), "{body}");
    assert!(body.get("code").is_none(), "{body}");
}

#[tokio::test]
async fn only_admins_configure_providers_and_the_secret_is_never_shown() {
    let (broker, idp, admin) = setup().await;
    let alice = broker.login("alice").await;
    let config =
        json!({"issuer": idp.base, "client_id": "mayfly", "client_secret": "s3cret-value"});
    let (status, _) = broker
        .call(
            "PUT",
            "/v1/sso/providers/two",
            Some(&alice),
            Some(config.clone()),
        )
        .await;
    assert_eq!(status, 403);
    for (bad, field) in [
        (
            json!({"issuer": "http://idp.example", "client_id": "x", "client_secret": "y"}),
            "issuer",
        ),
        (
            json!({"issuer": idp.base, "client_id": "", "client_secret": "y"}),
            "client_id",
        ),
        (
            json!({"issuer": idp.base, "client_id": "x", "client_secret": "y", "group_map": {"a": "b"}}),
            "group_map",
        ),
        (
            json!({"issuer": idp.base, "client_id": "x", "client_secret": "y", "groups_claim": "g", "group_map": {"a": "Bad Group!"}}),
            "group_map",
        ),
        (
            json!({"issuer": format!("{}/elsewhere", idp.base), "client_id": "x", "client_secret": "y"}),
            "issuer",
        ),
    ] {
        let (status, body) = broker
            .call(
                "PUT",
                "/v1/sso/providers/two",
                Some(&admin),
                Some(bad.clone()),
            )
            .await;
        assert!(status == 400 || status == 503, "{bad}: {status} {body}");
        assert!(message(&body).contains(field), "{bad}: {body}");
    }
    broker
        .expect(
            200,
            "PUT",
            "/v1/sso/providers/two",
            Some(&admin),
            Some(config),
        )
        .await;
    let listed = broker
        .expect(200, "GET", "/v1/sso/providers", Some(&admin), None)
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(!listed.to_string().contains("s3cret-value"));
    // Admins see the configuration; anyone else, and no one, only name, issuer and redirect URI.
    assert_eq!(listed[0]["client_id"], "mayfly", "{listed}");
    assert!(listed[0].get("group_map").is_some(), "{listed}");
    for token in [None, Some(alice.as_str())] {
        let public = broker
            .expect(200, "GET", "/v1/sso/providers", token, None)
            .await;
        let list = public.as_array().unwrap();
        assert_eq!(list.len(), 2, "{public}");
        for provider in list {
            let mut keys: Vec<&str> = provider
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            assert_eq!(keys, ["issuer", "name", "redirect_uri"], "{public}");
        }
    }
    let (status, _) = broker
        .call("GET", "/v1/sso/providers", Some("not-a-token"), None)
        .await;
    assert_eq!(status, 401);
    let events = broker
        .broker
        .store()
        .stored_audit_events(0, 100_000)
        .await
        .unwrap();
    assert!(events.iter().all(|e| !e.body.contains("s3cret-value")));
    // Nor in the store's files or the audit sink: the barrier sealed it.
    for entry in std::fs::read_dir(broker.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(12).any(|w| w == b"s3cret-value"),
                "{} holds the client secret in clear",
                path.display()
            );
        }
    }
    broker
        .expect(204, "DELETE", "/v1/sso/providers/two", Some(&admin), None)
        .await;
    let (status, _) = broker
        .call("DELETE", "/v1/sso/providers/two", Some(&admin), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn on_postgresql_logins_are_the_same() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let broker = TestBroker::start(mayfly_testkit::Options {
        store_url: Some(db.url.clone()),
        ..mayfly_testkit::Options::default()
    })
    .await;
    let (broker, _idp, admin) = setup_on(broker).await;
    for _ in 0..2 {
        let (status, body, back) = browser_login(&broker, "carol").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["session"]["principal"]["groups"],
            json!(["engineering"])
        );
        let (status, _, _) = come_back(&back).await;
        assert_eq!(status, 401, "the state is used once");
    }
    let users = broker
        .expect(200, "GET", "/v1/users", Some(&admin), None)
        .await;
    let n_carol = users
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["username"] == "carol")
        .count();
    assert_eq!(n_carol, 1);
    let (status, body, _) = browser_login(&broker, "alice").await;
    assert_eq!(status, 401, "{body}");
    let (verifier, challenge) = pkce_pair("pg");
    let code = cli_code(&broker, &challenge).await;
    let request = json!({"code": code, "code_verifier": verifier});
    broker
        .expect(200, "POST", "/v1/sso/token", None, Some(request.clone()))
        .await;
    let (status, _) = broker
        .call("POST", "/v1/sso/token", None, Some(request))
        .await;
    assert_eq!(status, 401);
    broker.stop().await;
    db.drop_db().await;
}
