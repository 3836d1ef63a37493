//! Notifications from the durable outbox, delivered to real receivers: the Python receiver of
//! docs/notifications.md (run as it is printed there, with python3) and a Slack-shaped receiver.
//! Each event kind produces a delivery; the outbox row is written with its cause; while the
//! receiver is down every attempt fails and shows (listing, metrics), and once it is back every
//! notification arrives once, signed; a channel with the wrong key is refused by the receiver and
//! stays failing. On SQLite and on PostgreSQL.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_server::notify::config::{Channel, NotifyConfig};
use mayfly_store::NotificationRecord;
use mayfly_testkit::TestBroker;
use mayfly_testkit::access::{ask, id, with};
use mayfly_testkit::pgcluster::PgCluster;
use serde_json::{Value, json};

const KEY: &[u8] = b"the-receivers-key-0123456789abcdef";
const WRONG_KEY: &[u8] = b"a-key-the-receiver-does-not-know-0123";

const KINDS: [&str; 7] = [
    "request.pending",
    "request.approved",
    "request.denied",
    "grant.activated",
    "break_glass.used",
    "revocation.failing",
    "grant.expiring",
];

/// The Python receiver printed in docs/notifications.md, running on `port`.
struct PyReceiver {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl PyReceiver {
    async fn start(dir: &Path, port: u16, key: &[u8]) -> PyReceiver {
        let docs = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/notifications.md"
        ))
        .unwrap();
        let script = docs
            .split("```python\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/notifications.md has a Python receiver");
        let path = dir.join("receiver.py");
        std::fs::write(&path, script).unwrap();
        let key_file = dir.join("receiver.key");
        std::fs::write(&key_file, key).unwrap();
        let out = dir.join("receiver.out");
        let err = dir.join("receiver.err");
        let child = Command::new("python3")
            .arg(&path)
            .arg(port.to_string())
            .env("MAYFLY_WEBHOOK_SECRET_FILE", &key_file)
            .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
            .spawn()
            .expect("python3 runs the receiver of docs/notifications.md (apt install python3)");
        // Killed and waited for when dropped, also if it never listens.
        let receiver = PyReceiver { child, out, err };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return receiver;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the Python receiver did not listen: {}",
            receiver.refusals()
        );
    }

    /// The notifications it accepted (each delivery id once), in order: the lines it finished.
    fn accepted(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let finished = text.rsplit_once('\n').map_or("", |(done, _)| done);
        finished
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?} in {text}"))
            })
            .collect()
    }

    fn refusals(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for PyReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

/// A receiver that keeps what it is sent: (headers, body) of each POST.
type Received = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

async fn recording_receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push((headers, body.to_vec()));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, received)
}

/// Every notification of `channel`, any kind.
async fn rows(broker: &TestBroker, channel: &str) -> Vec<NotificationRecord> {
    let mut all = Vec::new();
    for kind in KINDS {
        all.extend(
            broker
                .broker
                .store()
                .notifications_of_kind(kind, 10_000)
                .await
                .unwrap()
                .into_iter()
                .filter(|n| n.channel == channel),
        );
    }
    all
}

async fn fresh_rows(broker: &TestBroker, channel: &str) -> Vec<NotificationRecord> {
    let mut all = Vec::new();
    for row in rows(broker, channel).await {
        all.push(
            broker
                .broker
                .store()
                .notification(&row.id)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    all
}

fn count(rows: &[NotificationRecord], kind: &str) -> usize {
    rows.iter().filter(|n| n.kind == kind).count()
}

fn payload(row: &NotificationRecord) -> Value {
    serde_json::from_str(&row.payload).unwrap()
}

async fn metric(broker: &TestBroker, name: &str, channel: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", broker.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name}{{channel=\"{channel}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().unwrap())
}

const POLICY: &str = r#"
@id("direct")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"api/client");

@id("needs-one")
@approvals("1")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"api/admin");

@id("glass")
permit (principal in Group::"dev", action == Action::"break_glass", resource == Role::"api/client");

@id("approvers")
permit (principal, action == Action::"approve", resource in Target::"api")
when { principal in Group::"dev" || principal in Group::"admins" };
"#;

async fn story(store_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hook_url = format!("http://127.0.0.1:{port}/");
    let (hook, wrong, slack) = (unique("hook"), unique("wrongkey"), unique("slack"));
    let (slack_url, slack_received) = recording_receiver().await;
    let notifications = NotifyConfig {
        channels: vec![
            Channel::webhook(&hook, &hook_url, KEY),
            Channel::webhook(&wrong, &hook_url, WRONG_KEY),
            Channel::slack(&slack, &slack_url),
        ],
        expiring_lead: Duration::from_secs(60),
        failing_after: 1,
        max_backoff: Duration::from_secs(1),
    };
    let broker = TestBroker::start(mayfly_testkit::Options {
        store_url,
        notifications,
        ..mayfly_testkit::Options::default()
    })
    .await;
    broker
        .add_target(json!({"kind": "x509", "name": "api", "url": "tls://127.0.0.1:8443", "admin_user": "", "admin_password": ""}))
        .await;
    for role in ["client", "admin"] {
        broker
            .add_role("api", role, 3600, &json!({"common_name": role}).to_string())
            .await;
    }
    broker.set_policy(POLICY).await;
    let admin = broker.admin();
    let alice = broker.login("alice").await;
    let bob = broker.login("bob").await;

    // A pending request: its notification, one per channel, is in the outbox as soon as the
    // request is, whether or not a worker ran.
    let asked = with(
        ask("api", "admin", 600, "deploy the fix"),
        json!({"ticket": "INC-42"}),
    );
    let pending = broker.pending(&alice, asked).await;
    let request_id = id(&pending);
    let written = broker
        .broker
        .store()
        .notifications_of_kind("request.pending", 100)
        .await
        .unwrap();
    assert_eq!(written.len(), 3, "{written:?}");
    let facts = payload(&written[0]);
    assert_eq!(facts["request_id"], request_id.as_str());
    assert_eq!(facts["requester"], "user:alice");
    assert_eq!(facts["role"], "admin");
    assert_eq!(facts["target"], "api");
    assert_eq!(facts["ttl_seconds"], 600);
    assert_eq!(facts["reason"], "deploy the fix");
    assert_eq!(facts["ticket"], "INC-42");
    let approvers: BTreeSet<&str> = facts["approvers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(approvers, BTreeSet::from(["admin", "bob"]), "{facts}");

    // A refused approval (self-approval) notifies nothing; the approval that allows it does,
    // once; approving again conflicts and notifies nothing more.
    broker
        .expect(
            403,
            "POST",
            &format!("/v1/requests/{request_id}/approve"),
            Some(&alice),
            Some(json!({"comment": "me"})),
        )
        .await;
    assert_eq!(
        broker
            .broker
            .store()
            .notifications_of_kind("request.approved", 100)
            .await
            .unwrap()
            .len(),
        0
    );
    let approved = broker.approve(&bob, &request_id, "ok").await;
    assert_eq!(approved["state"], "allowed");
    broker
        .expect(
            409,
            "POST",
            &format!("/v1/requests/{request_id}/approve"),
            Some(&admin),
            Some(json!({"comment": "late"})),
        )
        .await;
    let decided = broker
        .broker
        .store()
        .notifications_of_kind("request.approved", 100)
        .await
        .unwrap();
    assert_eq!(decided.len(), 3, "{decided:?}");
    assert_eq!(payload(&decided[0])["decided_by"], "user:bob");

    // Denied.
    let second = broker
        .pending(&alice, ask("api", "admin", 600, "second try"))
        .await;
    broker
        .expect(
            200,
            "POST",
            &format!("/v1/requests/{}/deny", id(&second)),
            Some(&bob),
            Some(json!({"comment": "no"})),
        )
        .await;
    // Activated, and break-glass.
    broker.activate(&alice, &request_id).await;
    let glass = broker
        .request(
            &alice,
            with(
                ask("api", "client", 600, "SEV1"),
                json!({"break_glass": true}),
            ),
        )
        .await;
    assert_eq!(glass["state"], "allowed", "{glass}");
    broker.activate(&alice, &id(&glass)).await;
    // Both grants expire in 600 s: within the 60 s lead after 545 s, warned once each however
    // many rounds (and nodes) look.
    // Let the worker finish what it is delivering to the (live) Slack receiver before the clock
    // jumps past its claims' 60 s lease: a claim that outlives its lease is delivered again
    // (at least once, by design), which this test's count of Slack messages would see.
    for _ in 0..500 {
        if rows(&broker, &slack)
            .await
            .iter()
            .all(|n| n.delivered_at.is_some())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.clock.advance(Duration::from_secs(545));
    mayfly_server::notify::deliver::run_once(&broker.broker)
        .await
        .unwrap();
    mayfly_server::notify::deliver::run_once(&broker.broker)
        .await
        .unwrap();
    let hook_rows = rows(&broker, &hook).await;
    let expected = [
        ("request.pending", 2),
        ("request.approved", 1),
        ("request.denied", 1),
        ("grant.activated", 2),
        ("break_glass.used", 1),
        ("grant.expiring", 2),
    ];
    for (kind, n) in expected {
        assert_eq!(count(&hook_rows, kind), n, "{kind}: {hook_rows:?}");
    }
    let n_hook = hook_rows.len();
    assert_eq!(n_hook, 9);

    // The receiver is down: every attempt fails, and (after one attempt, as configured) each
    // is failing: listed for admins, and in the metrics.
    for _ in 0..200 {
        let fresh = fresh_rows(&broker, &hook).await;
        if fresh.iter().all(|n| n.n_attempts >= 1) {
            break;
        }
        mayfly_server::notify::deliver::run_once(&broker.broker)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = fresh_rows(&broker, &hook).await;
    assert!(
        fresh
            .iter()
            .all(|n| n.n_attempts >= 1 && n.delivered_at.is_none()),
        "{fresh:?}"
    );
    let listed = broker
        .expect(
            200,
            "GET",
            "/v1/notifications?failing=true",
            Some(&admin),
            None,
        )
        .await;
    let listed_ids: BTreeSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["channel"] == hook.as_str())
        .map(|n| {
            assert_eq!(n["failing"], true);
            assert!(
                n["last_error"].as_str().unwrap().contains("unreachable"),
                "{n}"
            );
            assert!(
                !n["last_error"].as_str().unwrap().contains("127.0.0.1"),
                "{n}"
            );
            n["id"].as_str().unwrap()
        })
        .collect();
    let hook_ids: BTreeSet<&str> = hook_rows.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(listed_ids, hook_ids);
    // Admins only; a bad query is named.
    broker
        .expect(
            403,
            "GET",
            "/v1/notifications?failing=true",
            Some(&alice),
            None,
        )
        .await;
    broker
        .expect(401, "GET", "/v1/notifications?failing=true", None, None)
        .await;
    broker
        .expect(
            400,
            "GET",
            "/v1/notifications?failing=maybe",
            Some(&admin),
            None,
        )
        .await;
    mayfly_server::notify::deliver::run_once(&broker.broker)
        .await
        .unwrap();
    assert_eq!(
        metric(&broker, "mayfly_notifications_failing", &hook).await,
        Some(9.0)
    );
    assert!(
        metric(&broker, "mayfly_notification_failures_total", &hook)
            .await
            .unwrap()
            >= 9.0
    );
    assert!(
        metric(
            &broker,
            "mayfly_notifications_oldest_pending_age_seconds",
            &hook
        )
        .await
        .unwrap()
            >= 545.0
    );

    // The receiver comes back: everything pending arrives, each delivery id once, signed (the
    // receiver prints only what verifies); the channel with the wrong key is refused by it.
    let receiver = PyReceiver::start(dir.path(), port, KEY).await;
    for _ in 0..600 {
        if fresh_rows(&broker, &hook)
            .await
            .iter()
            .all(|n| n.delivered_at.is_some())
        {
            break;
        }
        broker.clock.advance(Duration::from_secs(2));
        mayfly_server::notify::deliver::run_once(&broker.broker)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = receiver.accepted();
    let accepted_ids: BTreeSet<&str> = accepted.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(accepted_ids, hook_ids, "{accepted:?}");
    assert_eq!(accepted.len(), n_hook, "{accepted:?}");
    let kinds: BTreeSet<&str> = accepted
        .iter()
        .map(|n| n["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    let glass_note = accepted
        .iter()
        .find(|n| n["event"] == "break_glass.used")
        .unwrap();
    assert_eq!(glass_note["break_glass"], true);
    assert_eq!(glass_note["requester"], "user:alice");
    assert!(
        glass_note["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/ui/review#grant-", broker.addr))
    );
    mayfly_server::notify::deliver::run_once(&broker.broker)
        .await
        .unwrap();
    assert_eq!(
        metric(&broker, "mayfly_notifications_pending", &hook).await,
        Some(0.0)
    );
    assert!(
        metric(&broker, "mayfly_notifications_delivered_total", &hook)
            .await
            .unwrap()
            >= 9.0
    );
    let refused = fresh_rows(&broker, &wrong).await;
    assert_eq!(refused.len(), n_hook);
    assert!(
        refused.iter().all(|n| n.delivered_at.is_none()
            && n.last_error.as_deref() == Some("the receiver answered 401 Unauthorized")),
        "{refused:?}"
    );
    assert!(receiver.refusals().contains("bad signature"));
    assert_eq!(
        metric(&broker, "mayfly_notifications_failing", &wrong).await,
        Some(9.0)
    );

    // Slack got Block Kit, with Approve and Deny on the pending request.
    let messages: Vec<Value> = slack_received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| serde_json::from_slice(body).unwrap())
        .collect();
    assert_eq!(messages.len(), n_hook, "{messages:?}");
    let buttons: Vec<&Value> = messages
        .iter()
        .flat_map(|m| m["blocks"].as_array().unwrap())
        .filter(|b| b["type"] == "actions")
        .collect();
    assert_eq!(buttons.len(), 2, "one per pending request: {buttons:?}");
    assert!(buttons.iter().any(|b| {
        b["elements"][0]["action_id"] == mayfly_server::notify::slack::ACTION_APPROVE
            && b["elements"][0]["value"] == request_id.as_str()
            && b["elements"][1]["action_id"] == mayfly_server::notify::slack::ACTION_DENY
            && b["elements"][1]["value"] == request_id.as_str()
    }));
    let text = serde_json::to_string(&messages).unwrap();
    for fact in ["user:alice", "api/admin", "10m", "deploy the fix", "INC-42"] {
        assert!(
            text.contains(fact),
            "{fact} missing from the Slack messages"
        );
    }
    drop(receiver);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_once_signed_after_the_receiver_was_down_on_sqlite() {
    story(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_once_signed_after_the_receiver_was_down_on_postgres() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    story(Some(db.url.clone())).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_revocation_notifies_once_with_a_valid_signature() {
    let cluster = PgCluster::start();
    let (url, received) = recording_receiver().await;
    let channel = unique("ops");
    let broker = TestBroker::start(mayfly_testkit::Options {
        notifications: NotifyConfig {
            channels: vec![Channel::webhook(&channel, &url, KEY)],
            ..NotifyConfig::default()
        },
        ..mayfly_testkit::Options::default()
    })
    .await;
    broker
        .postgres_access(
            &cluster,
            &[("readonly", 3600)],
            r#"@id("direct") permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/readonly");"#,
        )
        .await;
    let alice = broker.login("alice").await;
    let credential = broker
        .grant(&alice, ask("pg", "readonly", 60, "look"))
        .await;
    let grant_id = mayfly_testkit::access::grant_id(&credential);
    cluster.stop();
    broker.clock.advance(Duration::from_secs(61));
    broker.wait_for_grant(&alice, &grant_id, "failed").await;
    // A second failed attempt: still one notification.
    broker.clock.advance(Duration::from_secs(60));
    for _ in 0..600 {
        let grant = broker
            .broker
            .store()
            .grant(&grant_id)
            .await
            .unwrap()
            .unwrap();
        if grant.n_attempts >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let written = broker
        .broker
        .store()
        .notifications_of_kind("revocation.failing", 100)
        .await
        .unwrap();
    assert_eq!(written.len(), 1, "{written:?}");
    let mut body = None;
    for _ in 0..600 {
        let got = received.lock().unwrap().clone();
        if let Some((headers, bytes)) = got.iter().find(|(headers, _)| {
            headers.get("x-mayfly-event").and_then(|v| v.to_str().ok())
                == Some("revocation.failing")
        }) {
            let header = headers.get("x-mayfly-signature").unwrap().to_str().unwrap();
            let now = mayfly_server::clock::Clock::now(&mayfly_server::clock::SystemClock);
            mayfly_server::notify::webhook::verify(
                KEY,
                header,
                bytes,
                now,
                Duration::from_secs(300),
            )
            .unwrap();
            assert_eq!(
                mayfly_server::notify::webhook::verify(
                    WRONG_KEY,
                    header,
                    bytes,
                    now,
                    Duration::from_secs(300)
                ),
                Err(mayfly_server::notify::webhook::SignatureError::Mismatch)
            );
            assert_eq!(
                headers.get("x-mayfly-delivery").unwrap().to_str().unwrap(),
                written[0].id
            );
            body = Some(serde_json::from_slice::<Value>(bytes).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = body.expect("the revocation.failing notification arrives");
    assert_eq!(body["grant_id"], grant_id.as_str());
    assert_eq!(body["requester"], "user:alice");
    assert!(
        !body
            .to_string()
            .contains(credential["password"].as_str().unwrap()),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    broker.stop().await;
}
