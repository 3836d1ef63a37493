//! The secure proxy against a real broker and a real upstream (an HTTP server on a loopback port
//! that records every request and can echo the `Authorization` it received): the upstream gets
//! the injected credential; the caller's answer and the audit (store and file) never hold it,
//! even when the upstream echoes it in headers or across body chunks; the caller's own token and
//! cookies never reach the upstream; Cedar decides per call (GET passes, DELETE refused, another
//! principal refused); a revoked session and a JWT for another route are refused; rate limits
//! answer 429 with `Retry-After`; CORS preflights echo listed origins only; oversized bodies get
//! 413; an unreachable upstream 502 and a slow one 504, naming neither URL nor secret; hostile
//! paths never leave the upstream's base path.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "sk_test_51HqZsecretVALUE0123456789";
const BASIC_SECRET: &str = "mg-basic-pass-0987654321";
const QUERY_SECRET: &str = "maps-query-key-abcdef123";

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SESSION: &str = "urn:mayfly:token-type:session";

const POLICY: &str = r#"
@id("alice-reads-stripe")
permit (principal == User::"alice", action == Action::"proxy", resource == ProxyRoute::"stripe")
when { context.method == "GET" };

@id("alice-everything-elsewhere")
permit (principal == User::"alice", action == Action::"proxy", resource)
when { resource != ProxyRoute::"stripe" };

@id("refund-needs-intent")
permit (principal == User::"alice", action == Action::"proxy", resource == ProxyRoute::"stripe")
when { context.method == "POST" && context.path == "/v1/refunds" && context.intent like "refund order *" };

@id("admins-write-secrets")
permit (principal in Group::"admins", action == Action::"write_secret", resource);

@id("admins-read-route-secrets")
permit (principal in Group::"admins", action == Action::"read_secret", resource)
when { resource in Project::"shop" || resource in Project::"mail" || resource in Project::"maps" };

@id("exchange-for-stripe")
permit (principal, action == Action::"exchange", resource == Audience::"stripe");
"#;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    fn bytes(&self) -> Vec<u8> {
        let mut all = format!("{} {}\n", self.method, self.uri).into_bytes();
        for (name, value) in &self.headers {
            all.extend_from_slice(name.as_bytes());
            all.extend_from_slice(b": ");
            all.extend_from_slice(value);
            all.push(b'\n');
        }
        all.extend_from_slice(&self.body);
        all
    }
}

/// A real HTTP server on a loopback port that records every request.
struct Upstream {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorder = seen.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let recorder = recorder.clone();
            async move { answer(recorder, request).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Upstream { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(recorder: Arc<Mutex<Vec<Seen>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap();
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
    };
    recorder.lock().unwrap().push(seen.clone());
    let auth = seen.header("authorization").unwrap_or_default();
    let path = parts.uri.path().to_owned();
    if path.ends_with("/split") {
        // The Authorization header echoed in pieces cut inside the secret, with pauses so that
        // they arrive as separate chunks.
        let text = format!("{{\"echo\":\"{auth}\",\"again\":\"{auth}\"}}");
        let cuts = [5usize, 19, 23, 31, 40, 47, 60];
        let mut pieces = Vec::new();
        let mut last = 0;
        for cut in cuts.into_iter().chain([text.len()]) {
            let cut = cut.min(text.len());
            pieces.push(text.as_bytes()[last..cut].to_vec());
            last = cut;
        }
        let stream = futures_util::stream::unfold(pieces.into_iter(), |mut pieces| async move {
            let piece = pieces.next()?;
            tokio::time::sleep(Duration::from_millis(15)).await;
            Some((Ok::<_, std::io::Error>(bytes::Bytes::from(piece)), pieces))
        });
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path.ends_with("/big") {
        return Response::builder()
            .status(200)
            .body(Body::from(vec![b'x'; 100_000]))
            .unwrap();
    }
    if path.ends_with("/gzip") {
        return Response::builder()
            .status(200)
            .header("content-encoding", "gzip")
            .body(Body::from(vec![0x1f, 0x8b, 0, 0]))
            .unwrap();
    }
    let body = json!({
        "echo": auth,
        "uri": seen.uri,
        "method": seen.method,
        "body_len": seen.body.len(),
    });
    Response::builder()
        .status(if path.ends_with("/created") { 201 } else { 200 })
        .header("content-type", "application/json")
        .header("x-echo-auth", auth)
        .header("set-cookie", "upstream=1")
        .header("access-control-allow-origin", "*")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Puts a secret in the broker's secret store, as an admin (through the API).
async fn put_secret(broker: &TestBroker, path: &str, value: &str) {
    let (status, body) = broker
        .call(
            "PUT",
            &format!("/v1/secrets/{path}"),
            Some(&broker.admin()),
            Some(json!({ "value": value })),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
}

/// A demo user's login, a TOTP step after the last one (a code is accepted once).
async fn login(broker: &TestBroker, name: &str) -> String {
    broker.clock.advance(Duration::from_secs(31));
    broker.login(name).await
}

async fn add_route(broker: &TestBroker, route: Value) -> (u16, Value) {
    broker
        .call(
            "POST",
            "/v1/proxy-routes",
            Some(&broker.admin()),
            Some(route),
        )
        .await
}

/// A proxied call; returns status, headers and the whole body.
async fn proxy(
    broker: &TestBroker,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = broker
        .raw()
        .await
        .request(method, format!("{}{path}", broker.addr));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    (status, headers, body)
}

/// A request written by hand on a socket, so that the path arrives exactly as written (HTTP
/// clients normalize `..` and `%2e%2e` away). Returns the status.
async fn raw_request(broker: &TestBroker, target: &str, token: &str) -> u16 {
    let addr = broker.addr.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let text = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(text.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

fn headers_bytes(headers: &reqwest::header::HeaderMap) -> Vec<u8> {
    let mut all = Vec::new();
    for (name, value) in headers {
        all.extend_from_slice(name.as_str().as_bytes());
        all.extend_from_slice(b": ");
        all.extend_from_slice(value.as_bytes());
        all.push(b'\n');
    }
    all
}

async fn audit_bytes(broker: &TestBroker) -> Vec<u8> {
    // The file sink copies the log out asynchronously: give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut all = std::fs::read(broker.audit_file()).unwrap_or_default();
    for event in broker
        .broker
        .store()
        .stored_audit_events(0, 1_000_000)
        .await
        .unwrap()
    {
        all.extend_from_slice(event.body.as_bytes());
        all.push(b'\n');
    }
    all
}

async fn events_of(broker: &TestBroker, kind: &str) -> Vec<Value> {
    broker
        .broker
        .store()
        .stored_audit_events(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == kind)
        .map(|event| serde_json::from_str(&event.body).unwrap())
        .collect()
}

#[tokio::test]
async fn the_caller_never_holds_the_secret() {
    let broker = TestBroker::ready().await;
    let upstream = Upstream::start().await;
    broker.set_policy(POLICY).await;
    put_secret(&broker, "shop/prod/STRIPE_KEY", SECRET).await;
    let (status, route) = add_route(
        &broker,
        json!({
            "name": "stripe",
            "upstream": format!("http://{}/base", upstream.addr),
            "inject": ["header:Authorization=Bearer {{secret:shop/prod/STRIPE_KEY}}"],
            "cors_origins": ["https://app.example"],
        }),
    )
    .await;
    assert_eq!(status, 200, "{route}");
    assert_eq!(route["per_principal"]["burst"], 20);
    let alice = login(&broker, "alice").await;

    // GET passes; the upstream received the credential, not alice's token nor her cookie.
    let (status, headers, body) = proxy(
        &broker,
        "GET",
        "/v1/proxy/stripe/v1/charges?limit=3",
        Some(&alice),
        &[
            ("cookie", "mayfly_session=alice-cookie"),
            ("x-custom", "kept"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].uri, "/base/v1/charges?limit=3");
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {SECRET}")
    );
    assert_eq!(seen[0].header("x-custom").unwrap(), "kept");
    assert!(seen[0].header("cookie").is_none());
    assert!(!contains(&seen[0].bytes(), &alice));
    // The echo in the body and in a header is scrubbed; upstream cookies and CORS headers stay out.
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["echo"], "[REDACTED]");
    assert_eq!(headers["x-echo-auth"], "[REDACTED]");
    assert!(headers.get("set-cookie").is_none());
    assert!(headers.get("access-control-allow-origin").is_none());
    assert!(!contains(&body, SECRET) && !contains(&headers_bytes(&headers), SECRET));

    // Echoed across chunk boundaries: still caught.
    let (status, headers, body) = proxy(
        &broker,
        "GET",
        "/v1/proxy/stripe/split",
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body.clone()).unwrap(),
        "{\"echo\":\"[REDACTED]\",\"again\":\"[REDACTED]\"}"
    );
    assert!(!contains(&headers_bytes(&headers), SECRET));

    // DELETE is refused by policy (403) and never forwarded; bob has no policy at all.
    let n_seen = upstream.seen().len();
    let (status, _, body) = proxy(
        &broker,
        "DELETE",
        "/v1/proxy/stripe/v1/charges/ch_1",
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let bob = login(&broker, "bob").await;
    let (status, _, _) = proxy(
        &broker,
        "GET",
        "/v1/proxy/stripe/v1/charges",
        Some(&bob),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 403);
    // The intent decides: a refund with a stated intent passes, without one it is refused.
    let (status, _, _) = proxy(
        &broker,
        "POST",
        "/v1/proxy/stripe/v1/refunds",
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(upstream.seen().len(), n_seen);
    let (status, _, _) = proxy(
        &broker,
        "POST",
        "/v1/proxy/stripe/v1/refunds",
        Some(&alice),
        &[("x-mayfly-intent", "refund order 7 (customer asked)")],
        Some(b"amount=100".to_vec()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upstream.seen().len(), n_seen + 1);
    let long_intent = "x".repeat(300);
    let (status, _, _) = proxy(
        &broker,
        "GET",
        "/v1/proxy/stripe/v1/charges",
        Some(&alice),
        &[("x-mayfly-intent", &long_intent)],
        None,
    )
    .await;
    assert_eq!(status, 400);

    // No token, an unknown token, a revoked session: 401.
    let n_seen = upstream.seen().len();
    assert_eq!(
        proxy(&broker, "GET", "/v1/proxy/stripe/x", None, &[], None)
            .await
            .0,
        401
    );
    assert_eq!(
        proxy(
            &broker,
            "GET",
            "/v1/proxy/stripe/x",
            Some("mft_nope"),
            &[],
            None
        )
        .await
        .0,
        401
    );
    let revoked = login(&broker, "alice").await;
    assert_eq!(
        proxy(
            &broker,
            "GET",
            "/v1/proxy/stripe/x",
            Some(&revoked),
            &[],
            None
        )
        .await
        .0,
        200
    );
    broker
        .expect(
            204,
            "POST",
            "/v1/auth/token/revoke-self",
            Some(&revoked),
            None,
        )
        .await;
    assert_eq!(
        proxy(
            &broker,
            "GET",
            "/v1/proxy/stripe/x",
            Some(&revoked),
            &[],
            None
        )
        .await
        .0,
        401
    );
    assert_eq!(upstream.seen().len(), n_seen + 1);

    // A JWT exchanged for the route works while its session lives; it is refused on another route.
    let session = login(&broker, "alice").await;
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", GRANT),
            ("subject_token", session.as_str()),
            ("subject_token_type", SESSION),
            ("audience", "stripe"),
        ])
        .finish();
    let exchanged: Value = broker
        .raw()
        .await
        .post(format!("{}/v1/token/exchange", broker.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = exchanged["access_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert_eq!(
        proxy(
            &broker,
            "GET",
            "/v1/proxy/stripe/jwt",
            Some(&jwt),
            &[],
            None
        )
        .await
        .0,
        200
    );
    assert!(!contains(&upstream.seen().last().unwrap().bytes(), &jwt));
    // Its `aud` names `stripe`: another route (which alice may call with a session) refuses it.
    let (status, body) = add_route(
        &broker,
        json!({
            "name": "other",
            "upstream": format!("http://{}", upstream.addr),
            "inject": ["header:X-Key={{secret:shop/prod/STRIPE_KEY}}"],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        proxy(&broker, "GET", "/v1/proxy/other/x", Some(&jwt), &[], None)
            .await
            .0,
        401
    );
    assert_eq!(
        proxy(
            &broker,
            "GET",
            "/v1/proxy/other/x",
            Some(&session),
            &[],
            None
        )
        .await
        .0,
        200
    );
    broker
        .expect(
            204,
            "POST",
            "/v1/auth/token/revoke-self",
            Some(&session),
            None,
        )
        .await;
    assert_eq!(
        proxy(
            &broker,
            "GET",
            "/v1/proxy/stripe/jwt",
            Some(&jwt),
            &[],
            None
        )
        .await
        .0,
        401
    );

    // CORS: a preflight from a listed origin is answered with it; another gets no ACAO.
    async fn preflight(
        broker: &TestBroker,
        origin: &str,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        proxy(
            broker,
            "OPTIONS",
            "/v1/proxy/stripe/v1/charges",
            None,
            &[
                ("origin", origin),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ],
            None,
        )
        .await
    }
    let (status, headers, _) = preflight(&broker, "https://app.example").await;
    assert_eq!(status, 204);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(headers.get("access-control-allow-credentials").is_none());
    let (status, headers, _) = preflight(&broker, "https://evil.example").await;
    assert_eq!(status, 204);
    assert!(headers.get("access-control-allow-origin").is_none());
    let (_, headers, _) = proxy(
        &broker,
        "GET",
        "/v1/proxy/stripe/v1/charges",
        Some(&alice),
        &[("origin", "https://app.example")],
        None,
    )
    .await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );

    // Nothing of the secret in the audit (store and file); the calls and refusals are there.
    let audit = audit_bytes(&broker).await;
    for needle in [
        SECRET,
        alice.as_str(),
        jwt.as_str(),
        "limit=3",
        "amount=100",
    ] {
        assert!(!contains(&audit, needle), "`{needle}` in the audit");
    }
    let calls = events_of(&broker, "proxy.call").await;
    assert!(calls.iter().any(|e| e["actor"] == "user:alice"
        && e["details"]["route"] == "stripe"
        && e["details"]["method"] == "GET"
        && e["details"]["path"] == "/v1/charges"));
    assert!(
        calls
            .iter()
            .any(|e| e["details"]["intent"] == "refund order 7 (customer asked)")
    );
    let completed = events_of(&broker, "proxy.completed").await;
    assert!(completed.iter().any(|e| e["details"]["status"] == 200
        && e["details"]["bytes_out"].as_u64().unwrap() > 0
        && e["details"]["latency_ms"].is_u64()));
    let refused = events_of(&broker, "proxy.refused").await;
    assert!(refused.iter().any(|e| e["details"]["status"] == 403
        && e["details"]["method"] == "DELETE"
        && e["actor"] == "user:alice"));
    assert!(refused.iter().any(|e| e["details"]["status"] == 401));
    broker.stop().await;
}

#[tokio::test]
async fn basic_and_query_injections_are_scrubbed_too() {
    let broker = TestBroker::ready().await;
    let upstream = Upstream::start().await;
    broker.set_policy(POLICY).await;
    put_secret(&broker, "mail/prod/PASS", BASIC_SECRET).await;
    put_secret(&broker, "maps/prod/KEY", QUERY_SECRET).await;
    let (status, body) = add_route(
        &broker,
        json!({
            "name": "mail",
            "upstream": format!("http://{}", upstream.addr),
            "inject": ["basic:api={{secret:mail/prod/PASS}}", "query:key={{secret:maps/prod/KEY}}"],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let alice = login(&broker, "alice").await;
    let (status, headers, body) = proxy(
        &broker,
        "GET",
        "/v1/proxy/mail/v3/messages?key=mine&q=1",
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let seen = upstream.seen();
    let expected = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("api:{BASIC_SECRET}"),
    );
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Basic {expected}")
    );
    assert_eq!(seen[0].uri, format!("/v3/messages?q=1&key={QUERY_SECRET}"));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["echo"], "[REDACTED]");
    assert_eq!(answer["uri"], "/v3/messages?q=1&key=[REDACTED]");
    let everything = [body.clone(), headers_bytes(&headers)].concat();
    for needle in [BASIC_SECRET, QUERY_SECRET, expected.as_str()] {
        assert!(
            !contains(&everything, needle),
            "`{needle}` reached the caller"
        );
    }
    let audit = audit_bytes(&broker).await;
    for needle in [BASIC_SECRET, QUERY_SECRET, expected.as_str(), "key=mine"] {
        assert!(!contains(&audit, needle), "`{needle}` in the audit");
    }
    broker.stop().await;
}

#[tokio::test]
async fn limits_sizes_and_upstream_failures() {
    let broker = TestBroker::ready().await;
    let upstream = Upstream::start().await;
    broker.set_policy(POLICY).await;
    put_secret(&broker, "shop/prod/STRIPE_KEY", SECRET).await;
    let route = |name: &str, upstream: String, extra: Value| {
        let mut route = json!({
            "name": name,
            "upstream": upstream,
            "inject": ["header:X-Api-Key={{secret:shop/prod/STRIPE_KEY}}"],
        });
        for (key, value) in extra.as_object().unwrap() {
            route[key] = value.clone();
        }
        route
    };
    let local = format!("http://{}", upstream.addr);
    for route in [
        route(
            "limited",
            local.clone(),
            json!({"per_principal": {"per_second": 0.1, "burst": 2}, "max_request_bytes": 1024}),
        ),
        route("slow", local.clone(), json!({"timeout_ms": 300})),
        route("gone", "http://127.0.0.1:9".into(), json!({})),
        route("small", local.clone(), json!({"max_response_bytes": 64})),
    ] {
        let (status, body) = add_route(&broker, route).await;
        assert_eq!(status, 200, "{body}");
    }
    let alice = login(&broker, "alice").await;
    let bob = login(&broker, "bob").await;

    // 413 before anything is forwarded (declared and streamed bodies alike).
    let n_seen = upstream.seen().len();
    let (status, _, body) = proxy(
        &broker,
        "POST",
        "/v1/proxy/limited/upload",
        Some(&alice),
        &[],
        Some(vec![b'a'; 4096]),
    )
    .await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(upstream.seen().len(), n_seen);

    // The burst (2; the 413 took one) then 429 with Retry-After; bob has his own bucket.
    assert_eq!(
        proxy(
            &broker,
            "GET",
            "/v1/proxy/limited/a",
            Some(&alice),
            &[],
            None
        )
        .await
        .0,
        200
    );
    let (status, headers, _) = proxy(
        &broker,
        "GET",
        "/v1/proxy/limited/a",
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 429);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(
        proxy(&broker, "GET", "/v1/proxy/limited/a", Some(&bob), &[], None)
            .await
            .0,
        403
    );
    broker.clock.advance(Duration::from_secs(10));
    assert_eq!(
        proxy(
            &broker,
            "GET",
            "/v1/proxy/limited/a",
            Some(&alice),
            &[],
            None
        )
        .await
        .0,
        200
    );

    // A flood of refused calls is aggregated, not one event each.
    let before = events_of(&broker, "proxy.refused").await.len();
    for _ in 0..50 {
        proxy(
            &broker,
            "GET",
            "/v1/proxy/limited/a",
            Some(&alice),
            &[],
            None,
        )
        .await;
    }
    let after = events_of(&broker, "proxy.refused").await.len();
    assert!(after - before <= 1, "{before} → {after}");

    // Upstream failures: no URL, no secret in the answer.
    let (status, _, body) =
        proxy(&broker, "GET", "/v1/proxy/gone/x", Some(&alice), &[], None).await;
    assert_eq!(status, 502);
    let (status, _, slow_body) = proxy(
        &broker,
        "GET",
        "/v1/proxy/slow/slow",
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 504);
    let (status, _, gzip_body) = proxy(
        &broker,
        "GET",
        "/v1/proxy/slow/gzip",
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 502);
    for body in [&body, &slow_body, &gzip_body] {
        for needle in ["127.0.0.1", SECRET, "http://"] {
            assert!(!contains(body, needle), "{}", String::from_utf8_lossy(body));
        }
    }
    // An answer over the route's limit is cut off, never passed whole.
    let response = broker
        .raw()
        .await
        .get(format!("{}/v1/proxy/small/big", broker.addr))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert!(response.status() == 502 || response.bytes().await.is_err());
    broker.stop().await;
}

#[tokio::test]
async fn hostile_paths_and_routes_stay_on_the_upstream() {
    let broker = TestBroker::ready().await;
    let upstream = Upstream::start().await;
    let evil = Upstream::start().await;
    broker.set_policy(POLICY).await;
    put_secret(&broker, "shop/prod/STRIPE_KEY", SECRET).await;
    let (status, body) = add_route(
        &broker,
        json!({
            "name": "api",
            "upstream": format!("http://{}/base", upstream.addr),
            "inject": ["header:Authorization=Bearer {{secret:shop/prod/STRIPE_KEY}}"],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let alice = login(&broker, "alice").await;
    let evil_host = evil.addr.clone();
    let targets = [
        "/v1/proxy/api/../../admin".to_owned(),
        "/v1/proxy/api/%2e%2e/%2e%2e/admin".to_owned(),
        "/v1/proxy/api/%2E%2E/x".to_owned(),
        "/v1/proxy/api/a/%2f%2fevil".to_owned(),
        format!("/v1/proxy/api//{evil_host}/x"),
        format!("/v1/proxy/api/http://{evil_host}/x"),
        format!("/v1/proxy/api/..%2f..%2f{evil_host}"),
        format!("http://{evil_host}/v1/proxy/api/x"),
        "/v1/proxy/..%2fapi/x".to_owned(),
        format!("/v1/proxy/{evil_host}/x"),
        "/v1/proxy/api/a\\..\\b".to_owned(),
    ];
    for target in &targets {
        let status = raw_request(&broker, target, &alice).await;
        assert!(matches!(status, 200 | 400 | 404), "{target}: {status}");
    }
    assert!(evil.seen().is_empty(), "{:?}", evil.seen());
    for seen in upstream.seen() {
        assert!(seen.uri.starts_with("/base/"), "{}", seen.uri);
        assert!(!seen.uri.contains(".."), "{}", seen.uri);
        assert!(
            !seen.uri.to_ascii_lowercase().contains("%2e"),
            "{}",
            seen.uri
        );
    }
    // A route injects only secrets its author may read: else an admin could send any secret to
    // a host of their own. Refused (403, naming the path), audited, nothing stored.
    put_secret(&broker, "vault/prod/ROOT", "root-secret-value-123456").await;
    let (status, body) = add_route(
        &broker,
        json!({"name": "exfil", "upstream": format!("http://{}/base", upstream.addr),
               "inject": ["header:X=Bearer {{secret:shop/prod/STRIPE_KEY}}",
                          "query:k={{secret:vault/prod/ROOT}}"]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("vault/prod/ROOT"), "{body}");
    let (status, _) = broker
        .call("GET", "/v1/proxy-routes", Some(&broker.admin()), None)
        .await;
    assert_eq!(status, 200);
    assert!(
        broker
            .broker
            .store()
            .proxy_route("exfil")
            .await
            .unwrap()
            .is_none()
    );
    let refused = events_of(&broker, "proxy.route.refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["details"]["path"], "vault/prod/ROOT");
    assert!(
        !audit_bytes(&broker)
            .await
            .windows(24)
            .any(|w| w == b"root-secret-value-123456")
    );

    // Hostile route definitions are refused.
    for (name, upstream) in [
        ("../x", "https://api.example"),
        ("ok", "http://api.example"),
        ("ok", "http://127.0.0.1@evil.example"),
        ("ok", "https://api.example/?x=1"),
    ] {
        let (status, _) = add_route(
            &broker,
            json!({"name": name, "upstream": upstream, "inject": ["header:X={{secret:a/b/c}}"]}),
        )
        .await;
        assert_eq!(status, 400, "{name} {upstream}");
    }
    // Only admins manage routes; listing and deleting work.
    let (status, _) = broker
        .call(
            "POST",
            "/v1/proxy-routes",
            Some(&alice),
            Some(json!({"name": "x", "upstream": "https://a.example", "inject": ["header:X={{secret:a/b/c}}"]})),
        )
        .await;
    assert_eq!(status, 403);
    let list = broker
        .expect(200, "GET", "/v1/proxy-routes", Some(&broker.admin()), None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(SECRET));
    broker
        .expect(
            204,
            "DELETE",
            "/v1/proxy-routes/api",
            Some(&broker.admin()),
            None,
        )
        .await;
    broker
        .expect(
            404,
            "DELETE",
            "/v1/proxy-routes/api",
            Some(&broker.admin()),
            None,
        )
        .await;
    assert_eq!(
        proxy(&broker, "GET", "/v1/proxy/api/x", Some(&alice), &[], None)
            .await
            .0,
        404
    );
    broker.stop().await;
}

/// Review findings: what the policy sees is what the upstream does. A lower-case `delete` (an
/// extension method to HTTP, `DELETE` to some servers), a `;` segment (Tomcat/Spring read
/// `/public/..;/admin` as `/admin`) and method/URL override headers must not pass a policy
/// written for `GET` on one path; an `@approvals` policy never lets a call through at once.
#[tokio::test]
async fn the_policy_sees_what_the_upstream_does() {
    let broker = TestBroker::ready().await;
    let upstream = Upstream::start().await;
    broker
        .set_policy(
            r#"
@id("alice-reads-stripe")
permit (principal == User::"alice", action == Action::"proxy", resource == ProxyRoute::"stripe")
when { context.method == "GET" };

@id("two-eyes")
@approvals("1")
permit (principal == User::"alice", action == Action::"proxy", resource == ProxyRoute::"gated");

@id("admins-write-secrets")
permit (principal in Group::"admins", action == Action::"write_secret", resource);

@id("admins-read-route-secrets")
permit (principal in Group::"admins", action == Action::"read_secret", resource)
when { resource in Project::"shop" || resource in Project::"mail" || resource in Project::"maps" };
"#,
        )
        .await;
    put_secret(&broker, "shop/prod/STRIPE_KEY", SECRET).await;
    for name in ["stripe", "gated"] {
        let (status, body) = add_route(
            &broker,
            json!({
                "name": name,
                "upstream": format!("http://{}/base", upstream.addr),
                "inject": ["header:Authorization=Bearer {{secret:shop/prod/STRIPE_KEY}}"],
            }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let alice = login(&broker, "alice").await;

    let (status, _, _) = proxy(
        &broker,
        "GET",
        "/v1/proxy/stripe/v1/charges",
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let before = upstream.seen().len();

    let (status, _, body) = proxy(
        &broker,
        "delete",
        "/v1/proxy/stripe/v1/charges",
        Some(&alice),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("method"));
    let status = raw_request(&broker, "/v1/proxy/stripe/public/..;/admin", &alice).await;
    assert_eq!(status, 400);
    let status = raw_request(&broker, "/v1/proxy/stripe/v1/charges;jsessionid=x", &alice).await;
    assert_eq!(status, 400);
    assert_eq!(
        upstream.seen().len(),
        before,
        "refused calls reached the upstream"
    );

    let overrides = [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X-Original-Host", "evil.example"),
        ("X-Host", "evil.example"),
    ];
    let (status, _, _) = proxy(
        &broker,
        "GET",
        "/v1/proxy/stripe/v1/charges",
        Some(&alice),
        &overrides,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let seen = upstream.seen();
    let last = seen.last().unwrap();
    for (name, _) in overrides {
        assert!(
            last.header(&name.to_ascii_lowercase()).is_none(),
            "{name} was forwarded"
        );
    }

    // A permit that asks for an approval is no permit for a call decided on the spot.
    let (status, _, body) =
        proxy(&broker, "GET", "/v1/proxy/gated/x", Some(&alice), &[], None).await;
    assert_eq!(
        status,
        403,
        "{} {:?}",
        String::from_utf8_lossy(&body),
        events_of(&broker, "proxy.call").await.last()
    );
    assert_eq!(upstream.seen().len(), seen.len());
}

/// An exchanged token for `audience`, of alice's session, with `scope` and (if any) an actor.
async fn exchanged_token(
    broker: &TestBroker,
    subject: &str,
    audience: &str,
    scope: &str,
    actor: Option<&str>,
) -> String {
    let mut fields = vec![
        ("grant_type", GRANT),
        ("subject_token", subject),
        ("subject_token_type", SESSION),
        ("audience", audience),
        ("scope", scope),
    ];
    if let Some(actor) = actor {
        fields.push(("actor_token", actor));
        fields.push(("actor_token_type", SESSION));
    }
    let (status, body) = crate::exchange::exchange(broker, &fields).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("a token").to_owned()
}

/// The proxy decides on the whole caller: an exchanged token's actor (`context.actor`) and its
/// scopes (`context.scope`), not only the principal it acts for; the actor is audited.
#[tokio::test]
async fn the_policy_sees_the_actor_and_the_scopes() {
    let broker = TestBroker::ready().await;
    let upstream = Upstream::start().await;
    broker
        .set_policy(
            r#"
@id("alice-stripe")
permit (principal == User::"alice", action == Action::"proxy", resource == ProxyRoute::"stripe");

@id("agents-only-read")
forbid (principal, action == Action::"proxy", resource)
when { context.actor != "" && context.method != "GET" };

@id("charges-scope")
permit (principal == User::"alice", action == Action::"proxy", resource == ProxyRoute::"charges")
when { context.scope.contains("charges:read") };

@id("exchange")
permit (principal, action == Action::"exchange", resource);

@id("admins-write-secrets")
permit (principal in Group::"admins", action == Action::"write_secret", resource);

@id("admins-read-route-secrets")
permit (principal in Group::"admins", action == Action::"read_secret", resource)
when { resource in Project::"shop" || resource in Project::"mail" || resource in Project::"maps" };
"#,
        )
        .await;
    put_secret(&broker, "shop/prod/STRIPE_KEY", SECRET).await;
    for name in ["stripe", "charges"] {
        let (status, body) = add_route(
            &broker,
            json!({
                "name": name,
                "upstream": format!("http://{}/base", upstream.addr),
                "inject": ["header:Authorization=Bearer {{secret:shop/prod/STRIPE_KEY}}"],
            }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let alice = login(&broker, "alice").await;
    let bob = login(&broker, "bob").await;

    // alice's own session may POST; bob acting for alice may GET, not POST.
    let post = |token: String| {
        let broker = &broker;
        async move {
            proxy(
                broker,
                "POST",
                "/v1/proxy/stripe/v1/charges",
                Some(&token),
                &[],
                Some(b"amount=1".to_vec()),
            )
            .await
            .0
        }
    };
    assert_eq!(post(alice.clone()).await, 200);
    let own = exchanged_token(&broker, &alice, "stripe", "charges:write", None).await;
    assert_eq!(post(own).await, 200);
    let delegated = exchanged_token(&broker, &alice, "stripe", "charges:write", Some(&bob)).await;
    let n_seen = upstream.seen().len();
    assert_eq!(post(delegated.clone()).await, 403);
    assert_eq!(
        upstream.seen().len(),
        n_seen,
        "a refused call was forwarded"
    );
    let (status, _, _) = proxy(
        &broker,
        "GET",
        "/v1/proxy/stripe/v1/charges",
        Some(&delegated),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let calls = events_of(&broker, "proxy.call").await;
    let last = calls.last().unwrap();
    assert_eq!(last["details"]["act"], "user:bob", "{last}");
    assert_eq!(last["actor"], "user:alice", "{last}");

    // The scope decides: a token holding `charges:read` passes, one without (and a session) not.
    let get = |token: String| {
        let broker = &broker;
        async move {
            proxy(
                broker,
                "GET",
                "/v1/proxy/charges/v1/charges",
                Some(&token),
                &[],
                None,
            )
            .await
            .0
        }
    };
    let reader = exchanged_token(&broker, &alice, "charges", "charges:read", None).await;
    assert_eq!(get(reader).await, 200);
    let writer = exchanged_token(&broker, &alice, "charges", "charges:write", None).await;
    assert_eq!(get(writer).await, 403);
    assert_eq!(get(alice.clone()).await, 403);
}

/// The proxy's standing secrets have an age an operator can alarm on: `/metrics` says when the
/// version each route injects was written (and never its value).
#[tokio::test]
async fn the_age_of_each_injected_secret_is_in_metrics() {
    let broker = TestBroker::ready().await;
    broker.set_policy(POLICY).await;
    put_secret(&broker, "shop/prod/AGED_KEY", SECRET).await;
    let (status, body) = add_route(
        &broker,
        json!({
            "name": "aged",
            "upstream": "http://127.0.0.1:9/",
            "inject": ["header:Authorization=Bearer {{secret:shop/prod/AGED_KEY}}"],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let metrics = broker
        .raw()
        .await
        .get(format!("{}/metrics", broker.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|line| {
            line.starts_with("mayfly_proxy_secret_created_timestamp_seconds{")
                && line.contains("route=\"aged\"")
                && line.contains("secret=\"shop/prod/AGED_KEY\"")
        })
        .unwrap_or_else(|| panic!("no age for the route's secret in:\n{metrics}"));
    let written: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let now = broker.broker.now().unix_ms() as f64 / 1000.0;
    assert!((now - written).abs() < 120.0, "{line}");
    assert!(!metrics.contains(SECRET));
}
