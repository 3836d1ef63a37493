//! Store failover (docs/store.md): a broker given its store as a primary and its synchronous
//! streaming standby (`pg_basebackup -R`) serves again after the primary is killed (`kill -9`)
//! and the standby promoted, loses no acknowledged grant, answers calls caught in the switch with
//! 503 and `Retry-After`, and its audit chain still verifies. A store never connects to a
//! standby.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mayfly_server::clock::StoreClock;
use mayfly_testkit::access::{ask, grant_id};
use mayfly_testkit::pgcluster::PgCluster;
use mayfly_testkit::{Options, TestBroker};
use serde_json::Value;
use tokio::sync::Mutex;

const POLICY: &str = r#"
@id("dev-readonly")
@max_ttl("3600")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/readonly")
when { context.reason != "" };
"#;

/// What one attempt at a grant (request, then activation) was answered.
#[derive(Debug)]
enum Attempt {
    /// Both calls answered 200: the grant is acknowledged (when: for the report only).
    Granted(String, tokio::time::Instant),
    /// A call answered 503 with this `Retry-After` and error code.
    Unavailable {
        retry_after: Option<String>,
        code: String,
    },
    /// Anything else: the test fails on it.
    Other(u16, String),
}

/// One call as a client makes it: status, `Retry-After`, body.
async fn call(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut request = http.post(url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return (0, None, Value::String(error.to_string())),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// A grant as a client asks for it: the request (allowed by the policy), then its activation.
async fn try_grant(http: &reqwest::Client, addr: &str, token: &str) -> Attempt {
    let (status, retry_after, body) = call(
        http,
        format!("{addr}/v1/requests"),
        token,
        Some(ask("pg", "readonly", 600, "failover test")),
    )
    .await;
    let request_id = match status {
        200 => body["id"].as_str().unwrap_or_default().to_owned(),
        503 => {
            return Attempt::Unavailable {
                retry_after,
                code: body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            };
        }
        other => return Attempt::Other(other, body.to_string()),
    };
    let (status, retry_after, body) = call(
        http,
        format!("{addr}/v1/requests/{request_id}/activate"),
        token,
        None,
    )
    .await;
    match status {
        200 => Attempt::Granted(grant_id(&body), tokio::time::Instant::now()),
        503 => Attempt::Unavailable {
            retry_after,
            code: body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        },
        other => Attempt::Other(other, body.to_string()),
    }
}

/// Polls `done` every 50 ms for at most `bound`; false if it never held.
async fn eventually(bound: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_takes_over_and_no_acknowledged_grant_is_lost() {
    let primary = PgCluster::start();
    let standby = PgCluster::replica_of(&primary, true);
    let target = PgCluster::start();
    let store_urls = format!(
        "{},{}",
        primary.store_url("postgres"),
        standby.store_url("postgres")
    );
    let broker = TestBroker::start(Options {
        store_url: Some(store_urls),
        ..Options::default()
    })
    .await;
    broker
        .postgres_access(&target, &[("readonly", 3600)], POLICY)
        .await;
    let alice = broker.login("alice").await;
    let admin = broker.admin();
    let clock = StoreClock::default();
    let offset_before = clock.sync(broker.broker.store()).await.unwrap();

    // Clients make grants all along, two at a time.
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (attempts, stop) = (attempts.clone(), stop.clone());
        let (addr, token) = (broker.addr.clone(), alice.clone());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let attempt = try_grant(&http, &addr, &token).await;
                let unavailable = matches!(attempt, Attempt::Unavailable { .. });
                attempts.lock().await.push(attempt);
                if unavailable {
                    // As Retry-After says (a client that hammers would only add load).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    let n_granted = async || {
        attempts
            .lock()
            .await
            .iter()
            .filter(|a| matches!(a, Attempt::Granted(..)))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(60), async || n_granted().await >= 10).await,
        "no grants before the failover: {:?}",
        attempts.lock().await
    );

    // The primary dies mid-load; the standby, which has every acknowledged commit, is promoted.
    let killed_at = tokio::time::Instant::now();
    primary.kill9();
    let granted_at_kill = n_granted().await;
    standby.promote();

    // The broker serves again: new grants are acknowledged (a generous bound, not a measure).
    assert!(
        eventually(Duration::from_secs(60), async || n_granted().await
            >= granted_at_kill + 10)
        .await,
        "the broker did not serve again after the promotion: {:?}",
        attempts.lock().await
    );
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let attempts = attempts.lock().await;

    // Every answer was a grant or a 503 that says when to try again, with the JSON error body.
    let mut acknowledged = HashSet::new();
    let mut n_unavailable = 0;
    let mut first_after_kill: Option<Duration> = None;
    for attempt in attempts.iter() {
        match attempt {
            Attempt::Granted(id, at) => {
                acknowledged.insert(id.clone());
                if *at > killed_at {
                    let after = *at - killed_at;
                    first_after_kill = Some(first_after_kill.map_or(after, |d| d.min(after)));
                }
            }
            Attempt::Unavailable { retry_after, code } => {
                n_unavailable += 1;
                assert_eq!(retry_after.as_deref(), Some("1"), "{attempt:?}");
                assert_eq!(code, "unavailable", "{attempt:?}");
            }
            Attempt::Other(status, body) => {
                panic!("an answer that is neither a grant nor a 503: {status} {body}")
            }
        }
    }
    eprintln!(
        "store failover: {} grants acknowledged ({granted_at_kill} before the kill), {n_unavailable} answered 503; first grant {first_after_kill:?} after the kill (promotion included)",
        acknowledged.len()
    );

    // Every acknowledged grant is in the promoted store, with its audit events.
    let store = broker.broker.store();
    for id in &acknowledged {
        let grant = store.grant(id).await.unwrap();
        assert!(grant.is_some(), "acknowledged grant {id} is missing");
    }
    let (head, _) = store.audit_head().await.unwrap();
    let events = store.audit_events(0, head).await.unwrap();
    let issued: HashSet<String> = events
        .iter()
        .filter(|e| e.kind == "grant.issue")
        .filter_map(|e| {
            let body: Value = serde_json::from_str(&e.body).ok()?;
            body["details"]["grant_id"].as_str().map(str::to_owned)
        })
        .collect();
    let missing: Vec<&String> = acknowledged.difference(&issued).collect();
    assert!(
        missing.is_empty(),
        "grants without their event: {missing:?}"
    );
    // Read on the promoted server itself, not through the broker.
    let n_on_standby = standby.psql(&format!(
        "SELECT count(*) FROM grants WHERE id IN ({})",
        acknowledged
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    assert_eq!(n_on_standby, acknowledged.len().to_string());

    // The chain verifies (and a checkpoint is signed on the new primary).
    let report = broker
        .expect(200, "POST", "/v1/sys/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(report["ok"], true, "{report}");

    // The store's clock is read from the new primary.
    let offset_after = clock.sync(store).await.unwrap();
    assert!(
        (offset_after - offset_before).abs() < 5_000,
        "{offset_before} ms, then {offset_after} ms"
    );
}

/// Given a standby first and the primary second, the store writes to the primary and holds no
/// connection to the standby; given only a standby, it does not open.
#[tokio::test]
async fn a_store_never_connects_to_a_standby() {
    let primary = PgCluster::start();
    let standby = PgCluster::replica_of(&primary, false);
    let store =
        mayfly_store::open_any(&[standby.store_url("postgres"), primary.store_url("postgres")])
            .await
            .unwrap();
    assert_eq!(
        store.writable_server(),
        Some(format!("127.0.0.1:{}", primary.port))
    );
    mayfly_store::Store::clock_ms(&store).await.unwrap();
    // The standby was asked once, on a connection closed at once (its backend may take a moment
    // to exit); the pool's and the watcher's connections are the primary's.
    let clients = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
    assert!(
        eventually(Duration::from_secs(10), async || standby.psql(clients)
            == "0")
        .await
    );
    assert_ne!(primary.psql(clients), "0");

    let error = mayfly_store::open_any(&[standby.store_url("postgres")])
        .await
        .unwrap_err();
    assert!(
        matches!(error, mayfly_store::StoreError::Unavailable(_)),
        "{error}"
    );
    assert!(
        eventually(Duration::from_secs(10), async || standby.psql(clients)
            == "0")
        .await
    );

    let error = mayfly_store::open_any(&[
        primary.store_url("postgres"),
        "sqlite:///tmp/x.db".to_owned(),
    ])
    .await
    .unwrap_err();
    assert!(error.to_string().contains("postgres://"), "{error}");
}
