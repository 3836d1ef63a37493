//! SSH user certificates per second at N concurrent clients, each a real certificate for the same
//! user key, each call with a reason and a ticket of its own (so the broker decides each afresh,
//! as it would real requests; `--same-reason`: every call the same, decided from the broker's
//! decision cache after the first). `floor`: the same load against a bare HTTP route that does nothing (the plumbing's
//! cost); `sign`: that route signing a real certificate, recording nothing. Mayfly:
//! `POST /v1/certificates` (decided by a Cedar policy, no approval needed, the request and the
//! grant recorded with one audit event, durable before the answer), broker on SQLite in this
//! process. OpenBao: `POST /v1/ssh/sign/ROLE` against a running server.
//!
//! ```sh
//! cargo run --release -p mayfly-bench --example sign_bench -- mayfly [clients] [seconds]
//! cargo run --release -p mayfly-bench --example sign_bench -- openbao [clients] [seconds] URL TOKEN ROLE
//! cargo run --release -p mayfly-bench --example sign_bench -- floor [clients] [seconds]
//! cargo run --release -p mayfly-bench --example sign_bench -- sign [clients] [seconds]
//! ```
//!
//! `--wrk` anywhere: the load comes from `wrk` (Debian's package) in a process of its own instead
//! of this process's clients, which cost about 0.1 ms of CPU per call on the same two cores; its
//! Lua script builds each request's body with an id of its own (thread and counter).
//! `--same-reason` anywhere: every call has the same body (reason `bench`, no ticket), as before
//! issue 24, so the cached decision's figure can be stated on its own. OpenBao's `ssh/sign` takes
//! no reason or ticket: its calls are the same in both modes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_bench::{CALL_ID, Calls};
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

struct Load {
    url: String,
    header: &'static str,
    token: String,
    /// The JSON body; every [`CALL_ID`] in it is replaced by the call's own id.
    body: String,
    /// Where the certificate is in the answer.
    field: &'static [&'static str],
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let use_wrk = args.iter().any(|a| a == "--wrk");
    args.retain(|a| a != "--wrk");
    let calls = Calls::from_args(&mut args);
    let system = args.get(1).cloned().unwrap_or_else(|| "mayfly".into());
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10);
    let public_key = mayfly_crypto::ssh::generate_user_key().unwrap().1;
    // Mayfly's body (and the floor's, which parses the same): the request's reason and ticket
    // are the call's own unless `--same-reason`.
    let certificate_body = || {
        let mut body = json!({"target": "hosts", "role": "bench", "ttl_seconds": 600,
                              "public_key": public_key});
        for (field, value) in calls.fields(CALL_ID) {
            body[field] = Value::String(value);
        }
        body.to_string()
    };
    let mut broker = None;
    let load = if system == "floor" || system == "sign" {
        // The floor: a bare axum route that parses the same JSON body and answers with a
        // certificate-sized JSON, no authentication, policy, signing or store. What the HTTP
        // plumbing (this load generator and the server framework) costs on this machine alone.
        // `sign`: the same route also signs a real certificate for the key with an Ed25519 CA,
        // as Mayfly's does, and records nothing: the ceiling of a broker that keeps no record.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer =
            json!({"certificate": format!("ssh-ed25519-cert-v01@openssh.com {}", "A".repeat(560))});
        let seed = mayfly_crypto::ssh::SshCa::generate_seed().unwrap();
        let ca = Arc::new(mayfly_crypto::ssh::SshCa::from_seed(&seed).unwrap());
        let sign = system == "sign";
        let app = axum::Router::new().route(
            "/v1/certificates",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let answer = answer.clone();
                let ca = ca.clone();
                async move {
                    let key = body["public_key"].as_str().unwrap();
                    if !sign {
                        return axum::Json(answer);
                    }
                    let now = u64::try_from(
                        mayfly_server::clock::Clock::now(&mayfly_server::clock::SystemClock)
                            .unix_ms()
                            / 1000,
                    )
                    .unwrap();
                    let certificate = ca
                        .sign_user(&mayfly_crypto::ssh::UserCertificate {
                            public_key: key,
                            key_id: "bench",
                            serial: now,
                            principals: &["bench".to_owned()],
                            extensions: &["permit-pty".to_owned()],
                            critical_options: &[],
                            valid_after: now - 30,
                            valid_before: now + 600,
                        })
                        .unwrap();
                    axum::Json(json!({ "certificate": certificate }))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Load {
            url: format!("http://{addr}/v1/certificates"),
            header: "authorization",
            token: "Bearer floor".into(),
            body: certificate_body(),
            field: &["certificate"],
        }
    } else if system == "openbao" {
        let url = args
            .get(4)
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:8200".into());
        let token = args.get(5).cloned().unwrap_or_else(|| "root".into());
        let role = args.get(6).cloned().unwrap_or_else(|| "bench".into());
        Load {
            url: format!("{url}/v1/ssh/sign/{role}"),
            header: "x-vault-token",
            token,
            body: json!({"public_key": public_key, "valid_principals": "bench", "ttl": "600"})
                .to_string(),
            field: &["data", "signed_key"],
        }
    } else {
        let started = TestBroker::ready().await;
        let admin = started.admin_token.clone().unwrap();
        for (path, body) in [
            (
                "/v1/targets",
                json!({"kind": "ssh", "name": "hosts", "url": "ssh://127.0.0.1:22", "admin_user": "", "admin_password": ""}),
            ),
            (
                "/v1/roles",
                json!({"target": "hosts", "name": "bench", "max_ttl_seconds": 3600,
                        "creation_sql": r#"{"principals": ["bench"], "extensions": ["permit-pty"]}"#}),
            ),
        ] {
            let (status, answer) = started.call("POST", path, Some(&admin), Some(body)).await;
            assert_eq!(status, 200, "{answer}");
        }
        let policy = "@id(\"bench\") permit (principal in Group::\"admins\", action == Action::\"request\", resource in Target::\"hosts\");";
        let (status, answer) = started
            .call(
                "PUT",
                "/v1/policy",
                Some(&admin),
                Some(json!({"text": policy})),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        let load = Load {
            url: format!("{}/v1/certificates", started.addr),
            header: "authorization",
            token: format!("Bearer {admin}"),
            body: certificate_body(),
            field: &["certificate"],
        };
        broker = Some(started);
        load
    };

    // One call first: the answer carries a certificate for the key.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let answer: Value = http
        .post(&load.url)
        .header(load.header, &load.token)
        .header("content-type", "application/json")
        .body(load.body.replace(CALL_ID, "check"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let certificate = load
        .field
        .iter()
        .fold(&answer, |value, key| &value[*key])
        .as_str()
        .unwrap_or_else(|| panic!("no certificate in {answer}"));
    assert!(
        certificate.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{certificate}"
    );

    println!(
        "{system}: {clients} clients, {seconds} s, load from {}",
        if use_wrk { "wrk" } else { "this process" }
    );
    if system == "openbao" {
        println!("calls: all identical (OpenBao's ssh/sign takes no reason or ticket)");
    } else {
        println!("{}", calls.describe());
    }
    let load = Arc::new(load);
    let cpu_before = mayfly_bench::process_cpu();
    let run = if use_wrk {
        let load = load.clone();
        tokio::task::spawn_blocking(move || {
            let children_before = mayfly_bench::children_cpu();
            let run = mayfly_bench::wrk(
                &mayfly_bench::WrkLoad {
                    method: "POST",
                    url: &load.url,
                    header: (load.header, &load.token),
                    body: &load.body,
                },
                clients,
                seconds,
            )
            .unwrap();
            let wrk_cpu = mayfly_bench::children_cpu().saturating_sub(children_before);
            println!(
                "CPU of wrk: {:.3} ms per certificate",
                wrk_cpu.as_secs_f64() * 1000.0 / (run.n.max(1) as f64)
            );
            run
        })
        .await
        .unwrap()
    } else {
        own_clients(&http, &load, clients, seconds).await
    };
    let cpu = mayfly_bench::process_cpu().saturating_sub(cpu_before);
    println!(
        "{system}  {:>8.0} certificates/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} certificates)",
        run.per_second, run.p50_ms, run.p99_ms, run.n
    );
    // Mayfly, `floor` and `sign`: the server, and the load generator unless it is wrk; OpenBao:
    // the load generator only.
    println!(
        "CPU of this process: {:.3} ms per certificate",
        cpu.as_secs_f64() * 1000.0 / (run.n.max(1) as f64)
    );
    if let Some(broker) = broker {
        let grants = broker
            .broker
            .store()
            .grants(mayfly_store::GrantFilter::Live, i64::MAX)
            .await
            .unwrap()
            .len();
        println!("{grants} live grants recorded (one per certificate, plus the first call)");
        // wrk stops without waiting for the calls it has in flight; the broker still records them.
        assert!(
            (run.n + 1..=run.n + 1 + clients).contains(&grants),
            "{grants} grants recorded for {} certificates",
            run.n
        );
        // How the audit batches went (from the broker's own metrics).
        let metrics = http
            .get(format!("{}/metrics", broker.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = |name: &str| {
            metrics
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let batches = value("mayfly_audit_batch_size_count");
        println!(
            "audit: {batches:.0} batches, {:.1} events each, {:.2} ms per commit",
            value("mayfly_audit_batch_size_sum") / batches.max(1.0),
            value("mayfly_audit_commit_seconds_sum") * 1000.0 / batches.max(1.0)
        );
        broker.stop().await;
    }
}

/// The load from this process: `clients` tasks calling one after the other for `seconds`.
async fn own_clients(
    http: &reqwest::Client,
    load: &Arc<Load>,
    clients: usize,
    seconds: u64,
) -> mayfly_bench::Run {
    let started = Instant::now();
    let duration = Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, load) = (http.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while started.elapsed() < duration {
                n += 1;
                let t = Instant::now();
                let body = load.body.replace(CALL_ID, &format!("{client}-{n}"));
                let response = http
                    .post(&load.url)
                    .header(load.header, &load.token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
                response.bytes().await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    mayfly_bench::gather(tasks, started).await
}
