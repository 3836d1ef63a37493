//! Audit forwarding against real receivers: a real `rsyslogd` (TLS and UDP) started by the test
//! and stopped for a while, and a real HTTP receiver that checks the webhook's signature. Every
//! event must arrive once, in order (by `seq`), with the chain intact, and each sink's cursor
//! must match the head. A `block` sink that is down closes state changes (503, `Retry-After`)
//! until it is back; hostile configuration is refused when it is loaded.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_server::audit::sink_spec::SinkSpec;
use mayfly_server::config::{Config, ConfigSources};
use mayfly_testkit::rsyslog::Rsyslog;
use mayfly_testkit::{Options, TestBroker};
use serde_json::json;

/// The sinks of a config file holding `sinks` (TOML), as `mayfly server --config` loads them.
fn load_sinks(dir: &Path, sinks: &str) -> Result<Vec<Arc<SinkSpec>>, String> {
    let path = dir.join(format!("mayfly-{}.toml", uuid::Uuid::now_v7().simple()));
    std::fs::write(
        &path,
        format!("version = 1\nstore = \"sqlite:///unused.db\"\n{sinks}"),
    )
    .unwrap();
    let no_env = |_: &str| Err(std::env::VarError::NotPresent);
    Config::load(&ConfigSources {
        file: Some(&path),
        env: &no_env,
        flags: Vec::new(),
    })
    .map(|(config, _)| config.audit_sinks)
    .map_err(|e| e.to_string())
}

/// State changes (users created by the admin) and refusals (bad tokens).
async fn traffic(broker: &TestBroker, tag: &str, n: usize) {
    let admin = broker.admin_token.clone().unwrap();
    for i in 0..n {
        broker
            .expect(
                200,
                "POST",
                "/v1/users",
                Some(&admin),
                Some(json!({"username": format!("{tag}{i}")})),
            )
            .await;
        broker
            .call("GET", "/v1/auth/token/lookup-self", Some("mft_bad"), None)
            .await;
    }
}

async fn head(broker: &TestBroker) -> i64 {
    broker.broker.store().audit_head().await.unwrap().0
}

/// Waits until the sink's stored cursor is the head and stays there for a moment (the sink's own
/// `audit.sink.*` events move the head too). Returns the head.
async fn caught_up(broker: &TestBroker, cursor_key: &str) -> i64 {
    let mut stable = 0;
    for _ in 0..1200 {
        let head = head(broker).await;
        let cursor = broker.broker.store().sink_cursor(cursor_key).await.unwrap();
        if cursor == head {
            stable += 1;
            if stable == 10 {
                return head;
            }
        } else {
            stable = 0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "sink `{cursor_key}` did not catch up: cursor {} head {}",
        broker.broker.store().sink_cursor(cursor_key).await.unwrap(),
        head(broker).await
    );
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..1200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The canonical lines carried by syslog messages, after checking each message's
/// STRUCTURED-DATA `seq` and `hash` against the line itself.
fn syslog_lines(messages: &[String]) -> Vec<String> {
    messages
        .iter()
        .map(|message| {
            let (header, line) = message.split_once("] ").unwrap();
            assert!(header.contains(" mayfly "), "{message}");
            let sd_seq = header
                .split("seq=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let sd_hash = header
                .split("hash=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            assert!(!header.contains("truncated="), "{message}");
            let (body, hash) = mayfly_core::audit::split_line(line).unwrap();
            assert_eq!(body["seq"].as_i64().unwrap().to_string(), sd_seq);
            assert_eq!(hash, sd_hash);
            line.to_owned()
        })
        .collect()
}

fn seqs(lines: &[String]) -> Vec<i64> {
    lines
        .iter()
        .map(|line| {
            mayfly_core::audit::split_line(line).unwrap().0["seq"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

/// The lines verify as one hash chain from the first event.
fn verify(lines: &[String]) -> u64 {
    let mut verifier = mayfly_core::audit::Verifier::new(None);
    for (i, line) in lines.iter().enumerate() {
        let (body, hash) = mayfly_core::audit::split_line(line).unwrap();
        verifier.push(i as u64 + 1, &body, &hash).unwrap();
    }
    verifier.finish().n_events
}

/// A TLS sink `name` and a UDP sink `name-udp` (names differ per test: `/metrics` is one per
/// process).
fn rsyslog_sinks(rsyslog: &Rsyslog, name: &str, on_failure: &str) -> String {
    format!(
        r#"
[[audit_sink]]
name = "{name}"
kind = "syslog-tls"
address = "localhost:{tcp}"
ca_file = "{ca}"
on_failure = "{on_failure}"
batch = 7

[[audit_sink]]
name = "{name}-udp"
kind = "syslog-udp"
address = "127.0.0.1:{udp}"
"#,
        tcp = rsyslog.tcp_port,
        udp = rsyslog.udp_port,
        ca = rsyslog.ca_file.display(),
    )
}

#[tokio::test]
async fn every_event_reaches_rsyslog_once_and_in_order_after_it_was_down() {
    let certs = mayfly_testkit::target_tls::server_certs();
    let mut rsyslog = Rsyslog::start(&certs).await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = load_sinks(dir.path(), &rsyslog_sinks(&rsyslog, "siem", "alarm")).unwrap();
    let broker = TestBroker::start(Options {
        audit_sinks: sinks,
        ..Options::default()
    })
    .await;
    traffic(&broker, "before", 10).await;
    caught_up(&broker, "syslog-tls:siem").await;
    caught_up(&broker, "syslog-udp:siem-udp").await;

    // The receiver goes away; the broker keeps working and its events wait.
    rsyslog.stop().await;
    let down_at = head(&broker).await;
    traffic(&broker, "during", 15).await;
    let statuses = broker.broker.inner.sinks.statuses().to_vec();
    wait_for("the TLS sink to notice the outage", async || {
        statuses[0].observed().failing_since_ms.is_some()
    })
    .await;
    let observed = statuses[0].observed();
    assert!(observed.cursor <= down_at + 1, "{observed:?}");
    assert!(observed.head > observed.cursor, "{observed:?}");
    let text = broker
        .raw()
        .await
        .get(format!("{}/metrics", broker.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("mayfly_audit_forward_state{sink=\"siem\"} 1"),
        "{text}"
    );
    assert!(text.contains("mayfly_audit_forward_lag_events{sink=\"siem\"}"));
    // Still down while more events come; then it is back.
    traffic(&broker, "later", 5).await;
    rsyslog.resume().await;
    traffic(&broker, "after", 5).await;
    let head_tls = caught_up(&broker, "syslog-tls:siem").await;
    let lines = syslog_lines(&rsyslog.lines(&rsyslog.tcp_log));
    assert_eq!(seqs(&lines), (1..=head_tls).collect::<Vec<_>>());
    assert_eq!(verify(&lines), head_tls as u64);
    // The outage is in the log, as the broker's own events.
    let kinds: Vec<String> = lines
        .iter()
        .map(|l| {
            mayfly_core::audit::split_line(l).unwrap().0["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(kinds.iter().any(|k| k == "audit.sink.failing"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "audit.sink.recovered"),
        "{kinds:?}"
    );

    // UDP: ICMP "port unreachable" on loopback tells the sink the receiver was down, so it sent
    // those events again: none is missing, in order.
    let head_udp = caught_up(&broker, "syslog-udp:siem-udp").await;
    let lines = syslog_lines(&rsyslog.lines(&rsyslog.udp_log));
    let got = seqs(&lines);
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique, (1..=head_udp).collect::<Vec<_>>(), "{got:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_block_sink_that_is_down_refuses_state_changes_until_it_is_back() {
    let certs = mayfly_testkit::target_tls::server_certs();
    let mut rsyslog = Rsyslog::start(&certs).await;
    let dir = tempfile::tempdir().unwrap();
    let sinks = load_sinks(dir.path(), &rsyslog_sinks(&rsyslog, "guard", "block")).unwrap();
    let broker = TestBroker::start(Options {
        audit_sinks: sinks,
        ..Options::default()
    })
    .await;
    let admin = broker.admin_token.clone().unwrap();
    traffic(&broker, "before", 3).await;
    caught_up(&broker, "syslog-tls:guard").await;

    rsyslog.stop().await;
    // The next change is taken (the sink has not failed yet), then the sink fails on it.
    let http = broker.raw().await.clone();
    let mut n = 0;
    let mut refused = None;
    wait_for("a state change to be refused", async || {
        n += 1;
        let answer = http
            .post(format!("{}/v1/users", broker.addr))
            .bearer_auth(&admin)
            .json(&json!({"username": format!("blocked{n}")}))
            .send()
            .await
            .unwrap();
        if answer.status() == 503 {
            refused = Some(answer);
            return true;
        }
        assert_eq!(answer.status(), 200);
        false
    })
    .await;
    let refused = refused.unwrap();
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audit_sink_blocked", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`guard`"),
        "{body}"
    );
    // Nothing of the refused change was done.
    let (status, users) = broker.call("GET", "/v1/users", Some(&admin), None).await;
    assert_eq!(status, 200, "read-only calls still work: {users}");
    assert!(
        !users.to_string().contains(&format!("blocked{n}\"")),
        "{users}"
    );
    // Health, metrics and logging in still work.
    assert_eq!(broker.call("GET", "/healthz", None, None).await.0, 200);
    let metrics = http
        .get(format!("{}/metrics", broker.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mayfly_audit_forward_state{sink=\"guard\"} 2"),
        "{metrics}"
    );
    // An admin can still take access away (disable a user) but not widen it (change groups).
    let (status, body) = broker
        .call(
            "PATCH",
            "/v1/users/bob",
            Some(&admin),
            Some(json!({"groups": ["dev", "admins"]})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = broker
        .call(
            "PATCH",
            "/v1/users/bob",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200, "disabling a user is not blocked: {body}");
    broker.clock.advance(Duration::from_secs(31));
    broker.login("alice").await;
    // The broker's own work goes on: the sinks' listing shows the cursor behind.
    let listing = broker
        .expect(200, "GET", "/v1/sys/audit/sinks", Some(&admin), None)
        .await;
    assert_eq!(listing["sinks"][0]["name"], "guard", "{listing}");
    assert_eq!(listing["sinks"][0]["state"], "blocking", "{listing}");
    assert!(listing["sinks"][0]["lag_events"].as_i64().unwrap() > 0);

    // The receiver comes back: the broker opens again by itself, and nothing was lost.
    rsyslog.resume().await;
    let mut m = 0;
    wait_for("state changes to be taken again", async || {
        m += 1;
        let (status, _) = broker
            .call(
                "POST",
                "/v1/users",
                Some(&admin),
                Some(json!({"username": format!("open{m}")})),
            )
            .await;
        status == 200
    })
    .await;
    let head = caught_up(&broker, "syslog-tls:guard").await;
    let lines = syslog_lines(&rsyslog.lines(&rsyslog.tcp_log));
    assert_eq!(seqs(&lines), (1..=head).collect::<Vec<_>>());
    assert_eq!(verify(&lines), head as u64);
    broker.stop().await;
}

/// What the test's webhook receiver got.
#[derive(Default)]
struct Received {
    lines: Vec<String>,
    bad_signatures: usize,
    refused: usize,
}

#[tokio::test]
async fn the_webhook_sink_posts_signed_batches_and_catches_up_after_refusals() {
    use axum::http::{HeaderMap, StatusCode};
    let key = b"0123456789abcdef0123456789abcdef-webhook".to_vec();
    let received = Arc::new(Mutex::new(Received::default()));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = {
        let (received, down, key) = (received.clone(), down.clone(), key.clone());
        axum::Router::new().route(
            "/audit",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (received, down, key) = (received.clone(), down.clone(), key.clone());
                async move {
                    let mut received = received.lock().unwrap();
                    if down.load(std::sync::atomic::Ordering::SeqCst) {
                        received.refused += 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    // As docs/audit.md tells a receiver: `t=<unix>,v1=<hex>`, the HMAC over
                    // "<t>.<body>".
                    let header = headers["x-mayfly-signature"].to_str().unwrap();
                    let (timestamp, given) = header
                        .strip_prefix("t=")
                        .and_then(|rest| rest.split_once(",v1="))
                        .unwrap();
                    let mut signed = format!("{timestamp}.").into_bytes();
                    signed.extend_from_slice(&body);
                    let expected = hex::encode(mayfly_crypto::hmac_sha256(&key, &signed));
                    if !mayfly_crypto::constant_time_eq(expected.as_bytes(), given.as_bytes()) {
                        received.bad_signatures += 1;
                        return StatusCode::UNAUTHORIZED;
                    }
                    let now = std::time::SystemTime::UNIX_EPOCH
                        .elapsed()
                        .unwrap()
                        .as_secs();
                    let at: u64 = timestamp.parse().unwrap();
                    assert!(now.abs_diff(at) < 300);
                    // Each event as sent: its canonical line, byte for byte.
                    #[derive(serde::Deserialize)]
                    struct Posted<'a> {
                        sink: String,
                        #[serde(borrow)]
                        events: Vec<&'a serde_json::value::RawValue>,
                    }
                    let posted: Posted<'_> = serde_json::from_slice(&body).unwrap();
                    assert_eq!(posted.sink, "hook");
                    for event in posted.events {
                        received.lines.push(event.get().to_owned());
                    }
                    StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("hook.key");
    std::fs::write(&key_file, [key.as_slice(), b"\n"].concat()).unwrap();
    let sinks = load_sinks(
        dir.path(),
        &format!(
            "[[audit_sink]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/audit\"\nhmac_key_file = \"{}\"\nbatch = 4\n",
            key_file.display()
        ),
    )
    .unwrap();
    // The key is never shown.
    let shown = format!("{sinks:?}");
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    let broker = TestBroker::start(Options {
        audit_sinks: sinks,
        ..Options::default()
    })
    .await;
    traffic(&broker, "before", 5).await;
    caught_up(&broker, "webhook:hook").await;
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    traffic(&broker, "during", 8).await;
    wait_for("the receiver to refuse a post", async || {
        received.lock().unwrap().refused >= 2
    })
    .await;
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    traffic(&broker, "after", 3).await;
    let head = caught_up(&broker, "webhook:hook").await;
    let (bad_signatures, lines) = {
        let received = received.lock().unwrap();
        (received.bad_signatures, received.lines.clone())
    };
    assert_eq!(bad_signatures, 0);
    // The receiver kept only what it answered 2xx to: each event once, in order.
    assert_eq!(seqs(&lines), (1..=head).collect::<Vec<_>>());
    assert_eq!(verify(&lines), head as u64);
    broker.stop().await;
}

#[test]
fn hostile_sink_configuration_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, mayfly_testkit::target_tls::server_certs().ca_pem).unwrap();
    let short_key = dir.path().join("short.key");
    std::fs::write(&short_key, "too-short").unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "[[audit_sink]]\nname = \"u\"\nkind = \"syslog-udp\"\naddress = \"siem.example.com\"\n",
            &[
                "audit sink `u`",
                "`address`",
                "siem.example.com",
                "is not an address",
            ],
        ),
        (
            "[[audit_sink]]\nname = \"u\"\nkind = \"syslog-udp\"\naddress = \"127.0.0.1:514; rm -rf /\"\n",
            &["`address`", "is not an address"],
        ),
        (
            "[[audit_sink]]\nname = \"t\"\nkind = \"syslog-tls\"\naddress = \"siem.example.com:6514\"\n",
            &["audit sink `t`", "`ca_file` is missing"],
        ),
        (
            &format!(
                "[[audit_sink]]\nname = \"t\"\nkind = \"syslog-tls\"\naddress = \"siem.example.com:6514\"\nca_file = \"{}\"\n",
                short_key.display()
            ),
            &["`ca_file`", "BEGIN CERTIFICATE"],
        ),
        (
            &format!(
                "[[audit_sink]]\nname = \"t\"\nkind = \"syslog-tls\"\naddress = \"siem\"\nca_file = \"{}\"\n",
                ca.display()
            ),
            &["`address`", "HOST:PORT"],
        ),
        (
            "[[audit_sink]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://siem.example.com/in\"\nhmac_key_file = \"/nonexistent\"\n",
            &["`url`", "must be https"],
        ),
        (
            "[[audit_sink]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"https://siem.example.com/in\"\n",
            &["`hmac_key_file` is missing"],
        ),
        (
            &format!(
                "[[audit_sink]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"https://siem.example.com/in\"\nhmac_key_file = \"{}\"\n",
                short_key.display()
            ),
            &["fewer than 32 bytes"],
        ),
        (
            "[[audit_sink]]\nname = \"x\"\nkind = \"kafka\"\n",
            &["`kind`", "`kafka`"],
        ),
        (
            "[[audit_sink]]\nname = \"Bad Name\"\nkind = \"syslog-udp\"\naddress = \"127.0.0.1:514\"\n",
            &["`name`"],
        ),
        (
            "[[audit_sink]]\nname = \"u\"\nkind = \"syslog-udp\"\naddress = \"127.0.0.1:514\"\non_failure = \"ignore\"\n",
            &["`on_failure`", "`alarm` or `block`"],
        ),
        (
            "[[audit_sink]]\nname = \"u\"\nkind = \"syslog-udp\"\naddress = \"127.0.0.1:514\"\nmax_datagram = 100\n",
            &["`max_datagram`"],
        ),
        (
            "[[audit_sink]]\nname = \"u\"\nkind = \"syslog-udp\"\naddress = \"127.0.0.1:514\"\n[[audit_sink]]\nname = \"u\"\nkind = \"syslog-udp\"\naddress = \"127.0.0.1:515\"\n",
            &["`u` is configured twice"],
        ),
        (
            "[[audit_sink]]\nname = \"u\"\nkind = \"syslog-udp\"\naddress = \"127.0.0.1:514\"\npassword = \"x\"\n",
            &["unknown key `password`"],
        ),
    ];
    for (text, expected) in cases {
        let error = load_sinks(dir.path(), text).unwrap_err();
        for part in *expected {
            assert!(error.contains(part), "{text}\n=> {error}\n(missing {part})");
        }
        assert!(!error.contains('\n'), "{error}");
    }
    // A good one loads.
    let sinks = load_sinks(
        dir.path(),
        &format!(
            "[[audit_sink]]\nname = \"t\"\nkind = \"syslog-tls\"\naddress = \"siem.example.com:6514\"\nca_file = \"{}\"\non_failure = \"block\"\n",
            ca.display()
        ),
    )
    .unwrap();
    assert_eq!(sinks.len(), 1);
    assert_eq!(sinks[0].cursor_key(), "syslog-tls:t");
}
