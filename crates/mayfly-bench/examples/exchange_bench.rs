//! Token exchanges per second at N concurrent clients. Mayfly: `POST /v1/token/exchange`, a
//! session token exchanged for a JWT for the audience `billing` (decided by a Cedar policy, the
//! token's `jti` recorded with one audit event, durable before the answer), broker on SQLite in
//! this process; every answer is checked to carry a JWT. OpenBao: JWT auth login
//! (`POST /v1/auth/jwt/login` with `{role, jwt}`), the JWT signed by this program with an Ed25519
//! key it generates, against a running server that it configures itself with the root token
//! (the `jwt` auth method at `auth/jwt`, `jwt_validation_pubkeys` = that key, a role `bench`);
//! the equivalent `bao` commands are printed too. Every answer is checked to carry a client token.
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example exchange_bench -- mayfly [clients] [seconds]
//! cargo run --release -p mayfly-bench --example exchange_bench -- openbao [clients] [seconds] URL ROOT_TOKEN
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mayfly_crypto::token_key::{TokenAlg, TokenKey};
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

const POLICY: &str = r#"@id("bench") permit (principal in Group::"admins", action == Action::"exchange", resource == Audience::"billing");"#;

/// One kind of call: its URL, body and content type, and how to check its answer.
struct Load {
    url: String,
    content_type: &'static str,
    body: String,
    /// Where the issued token is in the answer.
    field: &'static [&'static str],
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let system = args.get(1).cloned().unwrap_or_else(|| "mayfly".into());
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let mut broker = None;
    let load = if system == "openbao" {
        let url = args
            .get(4)
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8200".into());
        let root = args.get(5).cloned().unwrap_or_else(|| "root".into());
        openbao_load(&http, &url, &root).await
    } else {
        let started = TestBroker::ready().await;
        started.set_policy(POLICY).await;
        let admin = started.admin_token.clone().unwrap();
        let mut form = reqwest::Url::parse("http://form.invalid/").unwrap();
        form.query_pairs_mut().extend_pairs([
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", admin.as_str()),
            ("subject_token_type", "urn:mayfly:token-type:session"),
            ("audience", "billing"),
            ("scope", "read"),
        ]);
        let load = Load {
            url: format!("{}/v1/token/exchange", started.addr),
            content_type: "application/x-www-form-urlencoded",
            body: form.query().unwrap().to_owned(),
            field: &["access_token"],
        };
        broker = Some(started);
        load
    };

    // One call first: its answer carries a token.
    let answer = call(&http, &load).await;
    println!(
        "{system}: {clients} clients, {seconds} s; first answer's token: {} bytes",
        answer.len()
    );
    let load = Arc::new(load);
    let cpu_before = mayfly_bench::process_cpu();
    let started = Instant::now();
    let duration = Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, load) = (http.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let t = Instant::now();
                call(&http, &load).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let run = mayfly_bench::gather(tasks, started).await;
    let cpu = mayfly_bench::process_cpu().saturating_sub(cpu_before);
    println!(
        "{system}  {:>8.0} exchanges/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} exchanges)",
        run.per_second, run.p50_ms, run.p99_ms, run.n
    );
    println!(
        "CPU of this process: {:.3} ms per exchange ({})",
        cpu.as_secs_f64() * 1000.0 / (run.n.max(1) as f64),
        if broker.is_some() {
            "the broker and the load generator"
        } else {
            "the load generator only"
        }
    );
    if let Some(broker) = broker {
        let events = broker
            .broker
            .store()
            .audit_events(0, i64::MAX)
            .await
            .unwrap();
        let exchanged = events
            .iter()
            .filter(|e| e.kind == "token.exchanged")
            .count();
        println!("{exchanged} exchanges audited (one per answer, plus the first call)");
        assert!(
            (run.n + 1..=run.n + 1 + clients).contains(&exchanged),
            "{exchanged} exchanges audited for {} answers",
            run.n
        );
        broker.stop().await;
    }
}

/// One call; panics unless it answers 200 with a token where `load.field` says. Returns the token.
async fn call(http: &reqwest::Client, load: &Load) -> String {
    let response = http
        .post(&load.url)
        .header("content-type", load.content_type)
        .body(load.body.clone())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{answer}");
    let token = load
        .field
        .iter()
        .fold(&answer, |value, key| &value[*key])
        .as_str()
        .unwrap_or_else(|| panic!("no token in {answer}"));
    assert!(!token.is_empty());
    token.to_owned()
}

/// Configures OpenBao's JWT auth with a key generated here, and returns the login call with a JWT
/// signed by it.
async fn openbao_load(http: &reqwest::Client, url: &str, root: &str) -> Load {
    let key = TokenKey::from_pkcs8(
        TokenAlg::EdDsa,
        &TokenKey::generate(TokenAlg::EdDsa).unwrap(),
    )
    .unwrap();
    let jwk = key.public_jwk().unwrap();
    let public = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(&public);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(&der)
    );
    println!("configuring OpenBao at {url}; by hand that is:");
    println!("  bao auth enable jwt");
    println!(
        "  bao write auth/jwt/config bound_issuer=mayfly-bench jwt_validation_pubkeys=\"$(cat bench.pub)\""
    );
    println!(
        "  bao write auth/jwt/role/bench role_type=jwt user_claim=sub bound_audiences=openbao token_ttl=5m token_policies=default"
    );
    println!("with bench.pub:\n{pem}");
    let bao = |path: &str, body: Value| {
        http.post(format!("{url}/v1/{path}"))
            .header("x-vault-token", root)
            .json(&body)
            .send()
    };
    let enabled = bao("sys/auth/jwt", json!({"type": "jwt"})).await.unwrap();
    let status = enabled.status().as_u16();
    let text = enabled.text().await.unwrap_or_default();
    // 400 "path is already in use": enabled by an earlier run.
    assert!(
        status == 204 || text.contains("already in use"),
        "enabling jwt auth: {status} {text}"
    );
    for (path, body) in [
        (
            "auth/jwt/config",
            json!({"bound_issuer": "mayfly-bench", "jwt_validation_pubkeys": [pem]}),
        ),
        (
            "auth/jwt/role/bench",
            json!({"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["openbao"],
                   "token_ttl": "5m", "token_policies": ["default"]}),
        ),
    ] {
        let answer = bao(path, body).await.unwrap();
        let status = answer.status().as_u16();
        assert!(
            (200..300).contains(&status),
            "{path}: {status} {}",
            answer.text().await.unwrap_or_default()
        );
    }
    let now = mayfly_server::clock::Clock::now(&mayfly_server::clock::SystemClock).unix_ms() / 1000;
    let header = json!({"alg": "EdDSA", "typ": "JWT"});
    let claims = json!({"iss": "mayfly-bench", "sub": "bench", "aud": "openbao",
                        "iat": now, "nbf": now - 5, "exp": now + 3600});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(input.as_bytes()).unwrap();
    let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature));
    Load {
        url: format!("{url}/v1/auth/jwt/login"),
        content_type: "application/json",
        body: json!({"role": "bench", "jwt": jwt}).to_string(),
        field: &["auth", "client_token"],
    }
}
