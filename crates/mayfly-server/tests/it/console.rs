//! The web console's defences, over plain HTTP (the browser's story is console_browser.rs): a
//! form posted without its CSRF token, with another session's, or from another origin is refused
//! (403) and changes nothing; a forged or logged-out cookie is sent to the login page and the
//! refusal is audited; every page, the login and error pages included, carries the CSP of
//! CONSOLE.md, `nosniff` and `no-store`; no secret (a credential's password, TOTP secrets,
//! session tokens, a target's admin password) is in any page but the one-time credential view;
//! the login's `next` goes to a local console path only; the cookies are `Secure`, `HttpOnly`,
//! `SameSite=Strict`.

use std::time::Duration;

use mayfly_testkit::TestBroker;
use mayfly_testkit::access::{ask, id, with};
use mayfly_testkit::pgcluster::PgCluster;
use serde_json::{Value, json};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// alice's `owner` waits for bob's approval; `reader` is allowed at once.
const POLICY: &str = r#"
@id("owner-needs-approval")
@approvals("1")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/owner");

@id("reader-direct")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/reader");

@id("developers-approve")
permit (principal, action == Action::"approve", resource in Target::"pg")
when { principal in Group::"dev" };
"#;

/// One answer of the console.
struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> String {
        self.header("location")
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// The value of the first `<input name="csrf">`.
    fn csrf(&self) -> String {
        hidden(&self.body, "csrf")
            .unwrap_or_else(|| panic!("no csrf field in the page:\n{}", self.body))
    }
}

/// The `value` of the first `<input>` named `name` in `html` (attributes in any order).
fn hidden(html: &str, name: &str) -> Option<String> {
    let needle = format!("name=\"{name}\"");
    for tag in html.split("<input").skip(1) {
        let tag = tag.split('>').next().unwrap_or_default();
        if !tag.contains(&needle) {
            continue;
        }
        let value = tag.split("value=\"").nth(1)?.split('"').next()?;
        return Some(value.replace("&amp;", "&"));
    }
    None
}

/// A browser without JavaScript: its own cookies, no redirects followed.
#[derive(Clone)]
struct Visitor {
    base: String,
    origin: String,
    cookies: Vec<(String, String)>,
    http: reqwest::Client,
}

impl Visitor {
    fn new(broker: &TestBroker) -> Visitor {
        Visitor {
            base: broker.public_url.clone(),
            origin: broker.public_url.clone(),
            cookies: Vec::new(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.retain(|(n, _)| n != name);
        if !value.is_empty() {
            self.cookies.push((name.to_owned(), value.to_owned()));
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let mut request = request;
        if !self.cookies.is_empty() {
            let header = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            request = request.header(reqwest::header::COOKIE, header);
        }
        let response = request.send().await.unwrap();
        for set in response.headers().get_all(reqwest::header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                let expired = set.to_ascii_lowercase().contains("max-age=0");
                self.set_cookie(name.trim(), if expired { "" } else { value.trim() });
            }
        }
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// A form POST as a browser sends it from a console page (with the page's Origin).
    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let origin = self.origin.clone();
        self.post_from(path, form, Some(&origin)).await
    }

    async fn post_from(&mut self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Page {
        match origin {
            Some(origin) => self.post_with(path, form, &[("origin", origin)]).await,
            None => self.post_with(path, form, &[]).await,
        }
    }

    /// A form POST with the request headers `headers` (`Origin`, `Sec-Fetch-Site`).
    async fn post_with(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }
}

/// A TOTP code of `name` not used before: the broker's clock moves to the next step first.
fn fresh_code(broker: &TestBroker, name: &str) -> String {
    broker.clock.advance(Duration::from_secs(30));
    broker.totp(&broker.user(name))
}

/// `name` logged in through the login form; the visitor holds the session cookie.
async fn console_login(broker: &TestBroker, name: &str) -> Visitor {
    let mut visitor = Visitor::new(broker);
    let form = visitor.get("/ui/login").await;
    assert_eq!(form.status, 200, "{}", form.body);
    let user = broker.user(name);
    let code = fresh_code(broker, name);
    let csrf = form.csrf();
    let answer = visitor
        .post(
            "/ui/login",
            &[
                ("username", &user.name),
                ("password", &user.password),
                ("totp", &code),
                ("csrf", &csrf),
                ("next", "/ui/access"),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{name}'s login: {}", answer.body);
    assert!(
        visitor.cookie("mayfly_session").is_some(),
        "no session cookie after {name}'s login: {:?}",
        answer.headers
    );
    visitor
}

/// The target `pg` on `cluster`, roles `owner` and `reader`, and [`POLICY`].
async fn setup(broker: &TestBroker, cluster: &PgCluster) {
    broker
        .postgres_access(cluster, &[("owner", 3600), ("reader", 3600)], POLICY)
        .await;
}

async fn requests_of(broker: &TestBroker, token: &str) -> Vec<Value> {
    let answer = broker
        .expect(200, "GET", "/v1/requests", Some(token), None)
        .await;
    answer.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_without_its_csrf_token_or_with_another_sessions_is_refused_and_does_nothing() {
    let cluster = PgCluster::start();
    let broker = TestBroker::start(mayfly_testkit::Options {
        localhost: true,
        ..mayfly_testkit::Options::default()
    })
    .await;
    setup(&broker, &cluster).await;
    let mut alice = console_login(&broker, "alice").await;
    let mut alice_elsewhere = console_login(&broker, "alice").await;
    let mut bob = console_login(&broker, "bob").await;
    let alice_token = api_login(&broker, "alice").await;
    let access = alice.get("/ui/access").await;
    assert_eq!(access.status, 200, "{}", access.body);
    let csrf = access.csrf();
    let elsewhere_csrf = alice_elsewhere.get("/ui/access").await.csrf();
    let bob_csrf = bob.get("/ui/access").await.csrf();
    assert_ne!(csrf, elsewhere_csrf, "two sessions share a CSRF token");

    let own = alice.origin.clone();
    let forged = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let refused = [
        ("no csrf field", request_form(None), own.as_str()),
        ("an empty csrf", request_form(Some("")), own.as_str()),
        ("a forged csrf", request_form(Some(forged)), own.as_str()),
        (
            "the csrf of alice's other session",
            request_form(Some(&elsewhere_csrf)),
            own.as_str(),
        ),
        ("bob's csrf", request_form(Some(&bob_csrf)), own.as_str()),
        (
            "another origin",
            request_form(Some(&csrf)),
            "http://evil.example",
        ),
    ];
    // What a browser sends for our own forms under `Referrer-Policy: no-referrer` is
    // `Origin: null`: accepted with `Sec-Fetch-Site: same-origin` only.
    for (what, headers) in [
        ("Origin: null alone", vec![("origin", "null")]),
        (
            "Origin: null from another site",
            vec![("origin", "null"), ("sec-fetch-site", "cross-site")],
        ),
        (
            "Origin: null from a sibling site",
            vec![("origin", "null"), ("sec-fetch-site", "same-site")],
        ),
        (
            "another origin, said to be the same",
            vec![
                ("origin", "http://evil.example"),
                ("sec-fetch-site", "same-origin"),
            ],
        ),
    ] {
        let answer = alice
            .post_with("/ui/requests", &request_form(Some(&csrf)), &headers)
            .await;
        assert_eq!(answer.status, 403, "{what}: {}", answer.body);
        assert!(
            requests_of(&broker, &alice_token).await.is_empty(),
            "{what}: a request was made"
        );
    }
    for (what, fields, origin) in refused {
        let answer = alice.post_from("/ui/requests", &fields, Some(origin)).await;
        assert_eq!(answer.status, 403, "{what}: {}", answer.body);
        assert!(
            requests_of(&broker, &alice_token).await.is_empty(),
            "{what}: a request was made"
        );
    }
    // bob's cookie with alice's token: refused too (the token is bound to its session).
    let answer = bob.post("/ui/requests", &request_form(Some(&csrf))).await;
    assert_eq!(
        answer.status, 403,
        "bob's cookie with alice's csrf: {}",
        answer.body
    );
    assert!(
        requests_of(&broker, &api_login(&broker, "bob").await)
            .await
            .is_empty()
    );

    // Logging out without the token does not log out.
    let answer = alice.post("/ui/logout", &[]).await;
    assert_eq!(answer.status, 403, "logout without csrf: {}", answer.body);
    assert_eq!(alice.get("/ui/access").await.status, 200);

    // The same form with its own token works, also as Chromium sends it (`Origin: null`): the
    // refusals above were the token's and the origin's doing.
    let answer = alice.post("/ui/requests", &request_form(Some(&csrf))).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert!(
        answer.location().starts_with("/ui/access"),
        "{}",
        answer.location()
    );
    assert_eq!(requests_of(&broker, &alice_token).await.len(), 1);
    let answer = alice
        .post_with(
            "/ui/requests",
            &request_form(Some(&csrf)),
            &[("origin", "null"), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(answer.status, 303, "as a browser sends it: {}", answer.body);
    assert_eq!(requests_of(&broker, &alice_token).await.len(), 2);

    // The login form has its own (double-submit) token.
    let mut anonymous = Visitor::new(&broker);
    let login = anonymous.get("/ui/login").await;
    let login_csrf = login.csrf();
    assert!(
        anonymous.cookie("mayfly_login_csrf").is_some(),
        "{:?}",
        login.headers
    );
    let user = broker.user("alice");
    for (what, csrf, cookie) in [
        ("no csrf", "", true),
        (
            "a wrong csrf",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            true,
        ),
        ("no csrf cookie", login_csrf.as_str(), false),
    ] {
        let mut visitor = anonymous.clone();
        if !cookie {
            visitor.set_cookie("mayfly_login_csrf", "");
        }
        let code = fresh_code(&broker, "alice");
        let answer = visitor
            .post(
                "/ui/login",
                &[
                    ("username", &user.name),
                    ("password", &user.password),
                    ("totp", &code),
                    ("csrf", csrf),
                    ("next", "/ui/access"),
                ],
            )
            .await;
        assert_eq!(answer.status, 403, "login with {what}: {}", answer.body);
        assert!(
            visitor.cookie("mayfly_session").is_none(),
            "login with {what} made a session"
        );
    }
}

/// The request form's fields for `pg/reader`, with `csrf` if given.
fn request_form(csrf: Option<&str>) -> Vec<(&'static str, &str)> {
    let mut fields = vec![
        ("role", "pg/reader"),
        ("ttl_seconds", "600"),
        ("reason", "csrf probe"),
        ("ticket", ""),
    ];
    if let Some(csrf) = csrf {
        fields.push(("csrf", csrf));
    }
    fields
}

/// An API session of `name` (password + a TOTP code not used before).
async fn api_login(broker: &TestBroker, name: &str) -> String {
    broker.clock.advance(Duration::from_secs(30));
    broker.login(name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_logged_out_cookie_is_sent_to_log_in_and_the_refusal_is_audited() {
    let broker = TestBroker::start(mayfly_testkit::Options {
        localhost: true,
        ..mayfly_testkit::Options::default()
    })
    .await;
    let mut forged = Visitor::new(&broker);
    forged.set_cookie(
        "mayfly_session",
        "bWF5Zmx5LWZvcmdlZC1zZXNzaW9uLXRva2VuLTAxMjM0NTY3",
    );
    let before = refusals(&broker).await;
    let answer = forged.get("/ui/access").await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert!(
        answer.location().starts_with("/ui/login?next="),
        "{}",
        answer.location()
    );
    assert!(
        refusals(&broker).await > before,
        "the forged cookie's refusal is not in the audit log"
    );
    // A POST with a forged cookie changes nothing either.
    let answer = forged
        .post(
            "/ui/requests",
            &[
                ("role", "pg/reader"),
                ("ttl_seconds", "60"),
                ("reason", "x"),
                ("csrf", "x"),
            ],
        )
        .await;
    assert!(
        answer.status == 303 || answer.status == 403,
        "{}: {}",
        answer.status,
        answer.body
    );

    // A session that logged out is dead: its cookie replayed goes to the login page.
    let mut alice = console_login(&broker, "alice").await;
    let stolen = alice.clone();
    let page = alice.get("/ui/access").await;
    let answer = alice.post("/ui/logout", &[("csrf", &page.csrf())]).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert!(
        alice.cookie("mayfly_session").is_none(),
        "logout kept the cookie"
    );
    let mut stolen = stolen;
    let answer = stolen.get("/ui/access").await;
    assert_eq!(answer.status, 303, "a logged-out session still works");
    assert!(
        answer.location().starts_with("/ui/login"),
        "{}",
        answer.location()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_ends_every_session_of_the_person() {
    let broker = TestBroker::start(mayfly_testkit::Options {
        localhost: true,
        ..mayfly_testkit::Options::default()
    })
    .await;
    let mut first = console_login(&broker, "alice").await;
    let mut second = console_login(&broker, "alice").await;
    let page = first.get("/ui/access").await;
    let answer = first
        .post("/ui/logout-everywhere", &[("csrf", &page.csrf())])
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let answer = second.get("/ui/access").await;
    assert_eq!(answer.status, 303, "logout everywhere left another session");
    let answer = first.get("/ui/access").await;
    assert_eq!(answer.status, 303, "logout everywhere left its own session");
    let mut bob = console_login(&broker, "bob").await;
    assert_eq!(
        bob.get("/ui/access").await.status,
        200,
        "bob was logged out too"
    );
}

/// The refusals of unauthenticated calls in the audit log (each, or aggregated).
async fn refusals(broker: &TestBroker) -> usize {
    broker
        .broker
        .store()
        .stored_audit_events(0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind.starts_with("auth.refused") || e.kind.starts_with("console.refused"))
        .count()
}

/// Every console page: (path, who may see it).
fn pages(request_id: &str) -> Vec<String> {
    [
        "/ui/access",
        "/ui/approvals",
        &format!("/ui/approvals/{request_id}"),
        "/ui/dashboard",
        "/ui/review",
        "/ui/audit",
        "/ui/audit?kind=access.request",
        "/ui/audit/export",
        "/ui/admin/targets",
        "/ui/admin/roles",
        "/ui/admin/policy",
        "/ui/admin/users",
        "/ui/nowhere",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect()
}

#[track_caller]
fn check_headers(page: &Page, what: &str) {
    assert_eq!(page.header("content-security-policy"), CSP, "{what}");
    assert_eq!(page.header("x-content-type-options"), "nosniff", "{what}");
    assert!(page.header("cache-control").contains("no-store"), "{what}");
    assert_eq!(page.header("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(
        page.header("x-frame-options").to_ascii_uppercase(),
        "DENY",
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_carries_the_csp_and_no_secret_but_the_one_time_credential() {
    let cluster = PgCluster::start();
    let broker = TestBroker::start(mayfly_testkit::Options {
        localhost: true,
        ..mayfly_testkit::Options::default()
    })
    .await;
    setup(&broker, &cluster).await;
    let alice_token = api_login(&broker, "alice").await;
    let pending = broker
        .pending(
            &alice_token,
            with(
                ask("pg", "owner", 600, "look at it"),
                json!({"ticket": "INC-7"}),
            ),
        )
        .await;
    let request_id = id(&pending);

    // Anonymous: the login page, an unknown page, a refused form.
    let mut anonymous = Visitor::new(&broker);
    let login = anonymous.get("/ui/login").await;
    assert_eq!(login.status, 200);
    check_headers(&login, "GET /ui/login");
    let missing = anonymous.get("/ui/nowhere").await;
    check_headers(&missing, "GET /ui/nowhere (anonymous)");
    let refused = anonymous.post("/ui/login", &[("username", "alice")]).await;
    assert!(refused.status >= 400, "{}", refused.status);
    check_headers(&refused, "a refused login form");

    // alice activates a grant in the console: its password is on the credential view once.
    let mut alice = console_login(&broker, "alice").await;
    let access = alice.get("/ui/access").await;
    let answer = alice
        .post(
            "/ui/requests",
            &[
                ("role", "pg/reader"),
                ("ttl_seconds", "600"),
                ("reason", "read the tables"),
                ("ticket", ""),
                ("csrf", &access.csrf()),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let allowed = requests_of(&broker, &alice_token)
        .await
        .into_iter()
        .find(|r| r["state"] == "allowed")
        .expect("the reader request is allowed");
    let allowed_id = id(&allowed);
    let access = alice.get("/ui/access").await;
    let answer = alice
        .post(
            &format!("/ui/requests/{allowed_id}/activate"),
            &[("csrf", &access.csrf())],
        )
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let credential_url = answer.location();
    assert!(
        credential_url.starts_with("/ui/credential/"),
        "{credential_url}"
    );
    // Another session that learns the URL finds nothing, and takes nothing away from alice.
    let mut bob = console_login(&broker, "bob").await;
    let stolen = bob.get(&credential_url).await;
    assert_eq!(
        stolen.status, 410,
        "bob opened alice's credential: {}",
        stolen.body
    );
    let credential = alice.get(&credential_url).await;
    assert_eq!(credential.status, 200, "{}", credential.body);
    assert!(!stolen.body.contains("cred-password"), "{}", stolen.body);
    check_headers(&credential, "the credential view");
    let password = element_text(&credential.body, "cred-password").expect("code#cred-password");
    assert!(password.len() >= 16, "{password:?}");
    let again = alice.get(&credential_url).await;
    assert_eq!(again.status, 410, "{}", again.body);
    assert!(again.body.contains("credential-gone"), "{}", again.body);
    check_headers(&again, "the credential view, gone");

    // The secrets that must never be in a page.
    let mut admin = console_login(&broker, "admin").await;

    // A user made in the console: the generated password and TOTP secret in the one-time view.
    let users = admin.get("/ui/admin/users").await;
    let answer = admin
        .post(
            "/ui/admin/users",
            &[
                ("username", "carol"),
                ("groups", "dev"),
                ("csrf", &users.csrf()),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let view = admin.get(&answer.location()).await;
    assert_eq!(view.status, 200, "{}", view.body);
    let carol_password = element_text(&view.body, "cred-password").expect("carol's password");
    let carol_totp = view
        .body
        .split("secret=")
        .nth(1)
        .and_then(|rest| rest.split(['&', '<', '"']).next())
        .expect("carol's otpauth URL")
        .to_owned();
    assert!(carol_totp.len() >= 16, "{carol_totp:?}");
    let again = admin.get(&answer.location()).await;
    assert_eq!(again.status, 410, "{}", again.body);
    assert!(!again.body.contains(&carol_password));

    let mut secrets: Vec<(String, String)> = vec![
        ("the credential's password".into(), password.clone()),
        ("carol's password".into(), carol_password),
        ("carol's TOTP secret".into(), carol_totp),
        (
            "the target's admin password".into(),
            cluster.admin_password.clone(),
        ),
        ("the dev admin token".into(), broker.admin()),
        ("alice's API token".into(), alice_token.clone()),
    ];
    for user in &broker.users {
        secrets.push((
            format!("{}'s TOTP secret", user.name),
            user.totp_base32.clone(),
        ));
        secrets.push((format!("{}'s password", user.name), user.password.clone()));
    }
    for (who, visitor) in [("alice", &alice), ("bob", &bob), ("admin", &admin)] {
        let token = visitor.cookie("mayfly_session").unwrap();
        secrets.push((format!("{who}'s session cookie"), token));
    }
    for (who, visitor) in [("admin", admin), ("alice", alice), ("bob", bob)] {
        let mut visitor = visitor;
        for path in pages(&request_id) {
            let page = visitor.get(&path).await;
            assert!(page.status < 500, "{who} GET {path}: {}", page.status);
            if path != "/ui/audit/export" {
                check_headers(&page, &format!("{who} GET {path}"));
            }
            for (what, secret) in &secrets {
                assert!(
                    !page.body.contains(secret.as_str()),
                    "{who} GET {path} shows {what}"
                );
            }
        }
    }
    // The pages an admin sees answer 200 (so the search above read them).
    let mut admin = console_login(&broker, "admin").await;
    for path in pages(&request_id) {
        let page = admin.get(&path).await;
        let expected = if path == "/ui/nowhere" { 404 } else { 200 };
        assert_eq!(page.status, expected, "admin GET {path}: {}", page.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_goes_to_a_local_console_path_only() {
    let broker = TestBroker::start(mayfly_testkit::Options {
        localhost: true,
        ..mayfly_testkit::Options::default()
    })
    .await;
    // No session: to the login page with the path asked for.
    let mut anonymous = Visitor::new(&broker);
    let answer = anonymous.get("/ui/approvals").await;
    assert_eq!(answer.status, 303);
    let location = answer.location();
    assert!(
        location == "/ui/login?next=%2Fui%2Fapprovals"
            || location == "/ui/login?next=/ui/approvals",
        "{location}"
    );

    let user = broker.user("alice");
    let hostile = [
        "https://evil.example/ui/access",
        "//evil.example/ui/access",
        "/\\evil.example/ui/access",
        "\\\\evil.example",
        "http://localhost:1/ui/access",
        "javascript:alert(1)",
        "/v1/grants",
        "/ui/../v1/grants",
        "ui/access",
        "/ui/access\r\nSet-Cookie: x=1",
    ];
    for next in hostile {
        let mut visitor = Visitor::new(&broker);
        let form = visitor
            .get(&format!(
                "/ui/login?next={}",
                form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            ))
            .await;
        assert!(
            form.status == 200 || form.status == 400,
            "GET login next={next:?}: {}",
            form.status
        );
        if let Some(kept) = hidden(&form.body, "next") {
            assert!(
                kept.is_empty() || is_local(&kept.replace("&#x2F;", "/")),
                "the login form keeps next={kept:?} for {next:?}"
            );
        }
        let csrf = match hidden(&form.body, "csrf") {
            Some(csrf) => csrf,
            None => visitor.get("/ui/login").await.csrf(),
        };
        let code = fresh_code(&broker, "alice");
        let answer = visitor
            .post(
                "/ui/login",
                &[
                    ("username", &user.name),
                    ("password", &user.password),
                    ("totp", &code),
                    ("csrf", &csrf),
                    ("next", next),
                ],
            )
            .await;
        if answer.status == 303 {
            let location = answer.location();
            assert!(
                is_local(&location),
                "next={next:?} sent the login to {location:?}"
            );
        } else {
            assert!(
                (400..500).contains(&answer.status),
                "next={next:?}: {} {}",
                answer.status,
                answer.body
            );
        }
    }
}

/// A path of the console on this origin: `/ui/` and no way to another host or out of `/ui/`.
fn is_local(location: &str) -> bool {
    location.starts_with("/ui/")
        && !location.starts_with("//")
        && !location.contains('\\')
        && !location.contains("..")
        && !location.contains(['\r', '\n'])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookies_are_secure_http_only_and_same_site_strict() {
    let broker = TestBroker::start(mayfly_testkit::Options {
        localhost: true,
        ..mayfly_testkit::Options::default()
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .get(format!("{}/ui/login", broker.addr))
        .send()
        .await
        .unwrap();
    let set: Vec<String> = login
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body = login.text().await.unwrap();
    let login_cookie = set
        .iter()
        .find(|c| c.starts_with("mayfly_login_csrf="))
        .unwrap_or_else(|| panic!("no mayfly_login_csrf cookie: {set:?}"));
    check_cookie(login_cookie);

    let user = broker.user("alice");
    let code = fresh_code(&broker, "alice");
    let cookie = login_cookie.split(';').next().unwrap().to_owned();
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("username", user.name.as_str()),
            ("password", user.password.as_str()),
            ("totp", code.as_str()),
            ("csrf", hidden(&body, "csrf").unwrap().as_str()),
            ("next", "/ui/access"),
        ])
        .finish();
    let answer = http
        .post(format!("{}/ui/login", broker.public_url))
        .header(reqwest::header::COOKIE, cookie)
        .header(reqwest::header::ORIGIN, &broker.public_url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 303);
    let session = answer
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("mayfly_session="))
        .expect("a mayfly_session cookie");
    check_cookie(&session);
    assert!(session.contains("Path=/ui"), "{session}");
}

#[track_caller]
fn check_cookie(cookie: &str) {
    let attributes: Vec<String> = cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    for wanted in ["secure", "httponly", "samesite=strict"] {
        assert!(
            attributes.iter().any(|a| a == wanted),
            "{cookie} lacks {wanted}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_people_type_is_shown_as_text_never_as_markup() {
    let cluster = PgCluster::start();
    let broker = TestBroker::start(mayfly_testkit::Options {
        localhost: true,
        ..mayfly_testkit::Options::default()
    })
    .await;
    setup(&broker, &cluster).await;
    let alice_token = api_login(&broker, "alice").await;
    let reason = "<script>alert(1)</script>";
    let ticket = "\"><img src=x id=injected>";
    let pending = broker
        .pending(
            &alice_token,
            with(ask("pg", "owner", 600, reason), json!({"ticket": ticket})),
        )
        .await;
    let request_id = id(&pending);
    let mut alice = console_login(&broker, "alice").await;
    let mut bob = console_login(&broker, "bob").await;
    let crafted = format!(
        "/ui/access?done=%3Cscript%3Ealert(2)%3C%2Fscript%3E&id={}",
        form_urlencoded::byte_serialize(ticket.as_bytes()).collect::<String>()
    );
    for (who, page) in [
        ("alice", alice.get("/ui/access").await),
        ("alice", alice.get(&crafted).await),
        ("bob", bob.get("/ui/approvals").await),
        ("bob", bob.get(&format!("/ui/approvals/{request_id}")).await),
    ] {
        assert_eq!(page.status, 200, "{who}: {}", page.body);
        for raw in ["<script>alert", "<img src=x", "id=injected>"] {
            assert!(
                !page.body.contains(raw),
                "{who}'s page has {raw:?} as markup"
            );
        }
    }
    // The request's page shows the text itself, escaped.
    let page = bob.get(&format!("/ui/approvals/{request_id}")).await;
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
}

/// The text of the element with id `id` in `html` (no nested markup).
fn element_text(html: &str, id: &str) -> Option<String> {
    let text = html
        .split(&format!("id=\"{id}\""))
        .nth(1)?
        .split('>')
        .nth(1)?
        .split('<')
        .next()?;
    Some(text.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_who_is_not_an_admin_can_neither_see_nor_send_the_admin_forms() {
    let broker = TestBroker::start(mayfly_testkit::Options {
        localhost: true,
        ..mayfly_testkit::Options::default()
    })
    .await;
    let permit_all = r#"permit (principal, action, resource);"#;
    let mut alice = console_login(&broker, "alice").await;
    for path in [
        "/ui/audit",
        "/ui/audit/export",
        "/ui/review",
        "/ui/admin/targets",
        "/ui/admin/roles",
        "/ui/admin/policy",
        "/ui/admin/users",
    ] {
        let page = alice.get(path).await;
        assert_eq!(page.status, 403, "alice GET {path}: {}", page.body);
    }
    let csrf = alice.get("/ui/access").await.csrf();
    for (path, form) in [
        (
            "/ui/admin/users/update",
            vec![
                ("username", "alice"),
                ("groups", "dev,admins"),
                ("action", "groups"),
            ],
        ),
        (
            "/ui/admin/users",
            vec![("username", "mallory"), ("groups", "admins")],
        ),
        ("/ui/admin/policy", vec![("policy", permit_all)]),
    ] {
        let mut form = form;
        form.push(("csrf", &csrf));
        let answer = alice.post(path, &form).await;
        assert_eq!(answer.status, 403, "alice POST {path}: {}", answer.body);
    }
    let admin = broker.admin();
    let users = broker
        .expect(200, "GET", "/v1/users", Some(&admin), None)
        .await;
    let users = users.as_array().unwrap();
    assert!(
        !users.iter().any(|u| u["username"] == "mallory"),
        "{users:?}"
    );
    let alice_row = users.iter().find(|u| u["username"] == "alice").unwrap();
    assert_eq!(alice_row["groups"], json!(["dev"]), "{alice_row}");
    let policy = broker
        .expect(200, "GET", "/v1/policy", Some(&admin), None)
        .await;
    assert!(
        !policy
            .to_string()
            .contains("permit (principal, action, resource)"),
        "{policy}"
    );
    // Still alice, still no admin: the navigation shows her no admin link.
    let page = alice.get("/ui/access").await;
    assert!(!page.body.contains("/ui/admin/targets"), "{}", page.body);
}

/// An agent's call page (`/ui/calls/{id}`): the subject sees it without the form, a user who may
/// not answer calls gets 404, an admin answers it with the page's CSRF token (a form without it
/// does nothing), and the call's arguments are shown as text, never as markup.
#[tokio::test]
async fn an_agent_call_page_is_answered_only_by_an_approver_with_the_forms_token() {
    use mayfly_server::access::{CallGate, CallKey};
    let broker = TestBroker::ready().await;
    let summary = r#"{"sql":"<script>alert(1)</script> DELETE FROM t"}"#;
    let key = CallKey {
        tool: mayfly_core::policy::Tool::RunQuery,
        args_sha256: hex::encode(mayfly_crypto::sha256(summary.as_bytes())),
        subject: "user:alice".into(),
        actors: vec!["agent:claude".into()],
    };
    let origin = mayfly_server::origin::Origin::internal("console-test");
    let CallGate::Waiting { approval_id, .. } = broker
        .broker
        .gate_call(&origin, &key, summary, &["p".into()])
        .await
        .unwrap()
    else {
        panic!("the call did not wait");
    };
    let path = format!("/ui/calls/{approval_id}");

    let mut alice = console_login(&broker, "alice").await;
    let page = alice.get(&path).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains("id=\"call-form\""),
        "the subject got the form"
    );
    assert!(!page.body.contains("<script>alert"), "markup in the page");
    assert!(page.body.contains("&lt;script&gt;alert"), "{}", page.body);
    let mut bob = console_login(&broker, "bob").await;
    assert_eq!(bob.get(&path).await.status, 404);

    let mut admin = console_login(&broker, "admin").await;
    let page = admin.get(&path).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("id=\"call-form\""), "{}", page.body);
    let approvals = admin.get("/ui/approvals").await;
    assert!(approvals.body.contains(&path), "{}", approvals.body);
    let refused = admin.post(&path, &[("decision", "approve")]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let stored = broker
        .broker
        .store()
        .call_approval(&approval_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state.as_str(), "pending");
    let csrf = page.csrf();
    let code = fresh_code(&broker, "admin");
    let done = admin
        .post(
            &path,
            &[("decision", "approve"), ("totp", &code), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let stored = broker
        .broker
        .store()
        .call_approval(&approval_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state.as_str(), "approved");
    assert_eq!(stored.answered_by.as_deref(), Some("user:admin"));
}
