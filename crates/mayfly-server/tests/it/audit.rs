//! The audit trail: one chain in the store and in the sink file; edits, deletions and swaps in the
//! file are named by `verify`; a rewrite in the store with recomputed hashes is caught by the
//! signed checkpoints; a store that cannot take the event fails the call with 503.

use std::time::Duration;

use mayfly_testkit::{Options, TestBroker};
use serde_json::json;
use sqlx::Connection;

async fn wait_for_file_lines(broker: &TestBroker, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let text = std::fs::read_to_string(broker.audit_file()).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the audit file did not reach {n} lines");
}

fn verify_lines(lines: &[String], public_key: Option<&[u8]>) -> Result<u64, String> {
    let mut verifier = mayfly_core::audit::Verifier::new(public_key);
    for (i, line) in lines.iter().enumerate() {
        let (body, hash) = mayfly_core::audit::split_line(line)?;
        verifier
            .push(i as u64 + 1, &body, &hash)
            .map_err(|e| e.to_string())?;
    }
    Ok(verifier.finish().n_events)
}

async fn generate_traffic(broker: &TestBroker) {
    for _ in 0..5 {
        broker
            .call("GET", "/v1/auth/token/lookup-self", Some("mft_bad"), None)
            .await;
    }
    // A new TOTP step for each login.
    broker.clock.advance(Duration::from_secs(31));
    broker.login("alice").await;
}

#[tokio::test]
async fn sink_file_matches_the_store_and_tampering_is_named() {
    let broker = TestBroker::ready().await;
    generate_traffic(&broker).await;
    let admin = broker.admin_token.clone().unwrap();
    // Sign the head, then let the file catch up.
    let (status, report) = broker
        .call("POST", "/v1/sys/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["n_checkpoints"].as_u64().unwrap() >= 1);
    let (head, _) = broker.broker.store().audit_head().await.unwrap();
    let lines = wait_for_file_lines(&broker, head as usize).await;
    let (_, key) = broker
        .call("GET", "/v1/sys/audit/public-key", None, None)
        .await;
    let public_key = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        key["public_key"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        verify_lines(&lines, Some(&public_key)).unwrap(),
        lines.len() as u64
    );

    // Edit one field of line 5.
    let mut edited = lines.clone();
    edited[4] = if edited[4].contains("\"outcome\":\"ok\"") {
        edited[4].replacen("\"outcome\":\"ok\"", "\"outcome\":\"failed\"", 1)
    } else {
        edited[4].replacen("\"outcome\":\"refused\"", "\"outcome\":\"ok\"", 1)
    };
    assert_ne!(edited[4], lines[4]);
    assert_eq!(
        verify_lines(&edited, None).unwrap_err(),
        "event 5 was edited: its hash does not match its content"
    );

    // Delete line 4.
    let mut deleted = lines.clone();
    deleted.remove(3);
    assert!(
        verify_lines(&deleted, None)
            .unwrap_err()
            .contains("expected event 4")
    );

    // Swap lines 6 and 7.
    let mut swapped = lines.clone();
    swapped.swap(5, 6);
    assert!(
        verify_lines(&swapped, None)
            .unwrap_err()
            .contains("expected event 6")
    );

    // Insert a copy of line 2 after it.
    let mut inserted = lines.clone();
    inserted.insert(2, lines[1].clone());
    assert!(
        verify_lines(&inserted, None)
            .unwrap_err()
            .contains("expected event 3")
    );
}

#[tokio::test]
async fn rewriting_the_store_and_recomputing_hashes_is_caught_by_checkpoints() {
    let broker = TestBroker::ready().await;
    generate_traffic(&broker).await;
    let admin = broker.admin_token.clone().unwrap();
    let (_, report) = broker
        .call("POST", "/v1/sys/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(report["ok"], true, "{report}");

    // Someone with write access to the database turns a refused login into a success, then
    // recomputes every hash after it so that the chain alone looks intact.
    let url = broker.store_url.clone();
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, body FROM audit_events ORDER BY seq")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let target = rows
        .iter()
        .find(|(_, body)| body.contains("auth.refused"))
        .unwrap()
        .0;
    let mut prev = if target == 1 {
        [0u8; 32]
    } else {
        let (hash,): (String,) = sqlx::query_as("SELECT hash FROM audit_events WHERE seq = $1")
            .bind(target - 1)
            .fetch_one(&mut db)
            .await
            .unwrap();
        hex_decode(&hash)
    };
    for (seq, body) in rows.iter().filter(|(seq, _)| *seq >= target) {
        let mut value: serde_json::Value = serde_json::from_str(body).unwrap();
        if *seq == target {
            value["outcome"] = json!("ok");
        }
        value["prev"] = json!(hex_encode(&prev));
        let hash = mayfly_core::audit::hash_body(&value);
        let text = String::from_utf8(mayfly_core::audit::canonical(&value)).unwrap();
        sqlx::query("UPDATE audit_events SET body = $1, hash = $2 WHERE seq = $3")
            .bind(text)
            .bind(hex_encode(&hash))
            .bind(seq)
            .execute(&mut db)
            .await
            .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE audit_head SET hash = $1")
        .bind(hex_encode(&prev))
        .execute(&mut db)
        .await
        .unwrap();
    drop(db);

    // The chain alone is consistent again, in the rows now in the database file: read through a
    // fresh connection, not through the broker's store, which answers from the events it keeps
    // in memory (the ones it wrote, before the rewrite) ...
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rewritten: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT seq, body, hash FROM audit_events ORDER BY seq")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let (head_hash,): (String,) = sqlx::query_as("SELECT hash FROM audit_head")
        .fetch_one(&mut db)
        .await
        .unwrap();
    drop(db);
    let (_, edited, _) = rewritten.iter().find(|(seq, _, _)| *seq == target).unwrap();
    assert!(
        edited.contains("\"outcome\":\"ok\""),
        "not rewritten: {edited}"
    );
    let mut previous = "0".repeat(64);
    for (seq, body, hash) in &rewritten {
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["prev"], json!(previous), "event {seq}'s prev");
        assert_eq!(
            hex_encode(&mayfly_core::audit::hash_body(&body)),
            *hash,
            "event {seq}'s hash"
        );
        previous = hash.clone();
    }
    assert_eq!(head_hash, previous, "the head");
    // ... but the signed checkpoint names the rewritten event.
    let (status, report) = broker
        .call("POST", "/v1/sys/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(report["ok"], false, "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("event {target} differs from what checkpoint")),
        "{error}"
    );
}

#[tokio::test]
async fn checkpoints_come_every_n_events_by_themselves() {
    // N is 50 here (1,000 by default) so the test needs a hundred events, not thousands; the
    // checkpointer's other trigger, 10 s, could give one checkpoint in this time, never two.
    let broker = TestBroker::start(Options {
        checkpoint_every_events: 50,
        ..Options::default()
    })
    .await;
    // A signed-in user refused an admin call: each refusal is one event of its own (refusals of
    // unauthenticated calls may be counted together instead).
    let alice = broker.login("alice").await;
    let (before, _) = broker.broker.store().audit_head().await.unwrap();
    for _ in 0..120 {
        broker
            .expect(403, "POST", "/v1/sys/audit/verify", Some(&alice), None)
            .await;
    }
    let events = broker
        .broker
        .store()
        .audit_events(before, 10_000)
        .await
        .unwrap();
    let n_events = events
        .iter()
        .filter(|e| e.kind != mayfly_core::audit::CHECKPOINT_KIND)
        .count();
    assert!(n_events >= 120, "{n_events} events for 120 refusals");
    let mut n_checkpoints = 0;
    for _ in 0..100 {
        let events = broker.broker.store().audit_events(0, 10_000).await.unwrap();
        n_checkpoints = events
            .iter()
            .filter(|e| e.kind == mayfly_core::audit::CHECKPOINT_KIND)
            .count();
        if n_checkpoints >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        n_checkpoints >= 2,
        "{n_checkpoints} checkpoints after {n_events} events with one every 50"
    );
}

#[tokio::test]
async fn a_store_that_cannot_take_the_event_fails_the_call_closed() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let mut db = sqlx::SqliteConnection::connect(&broker.store_url)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_gone")
        .execute(&mut db)
        .await
        .unwrap();
    let (status, body) = broker
        .call(
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"username": "carol"})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    // Nothing happened: no user without its audit event.
    assert!(
        broker
            .broker
            .store()
            .user_by_name("carol")
            .await
            .unwrap()
            .is_none()
    );
    // A refusal that cannot be audited is also a 503, not a silent 401.
    let (status, _) = broker
        .call("GET", "/v1/auth/token/lookup-self", Some("mft_bad"), None)
        .await;
    assert_eq!(status, 503);
    sqlx::query("ALTER TABLE audit_events_gone RENAME TO audit_events")
        .execute(&mut db)
        .await
        .unwrap();
    let (status, body) = broker
        .call(
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"username": "carol"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_sink_catches_up_after_being_down() {
    let broker = TestBroker::start(Options {
        audit_file: false,
        ..Options::default()
    })
    .await;
    generate_traffic(&broker).await;
    let path = broker.dir.path().join("manual-sink.jsonl");
    let mut sink = mayfly_server::audit::sink::FileSink::open(&path).unwrap();
    while sink.run_once(&broker.broker).await.unwrap() > 0 {}
    let (head, _) = broker.broker.store().audit_head().await.unwrap();
    assert_eq!(sink.position(), head);
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len() as i64, head);

    // The sink was down for the last three events (and left half a line behind), and more
    // traffic came meanwhile.
    let kept = &lines[..lines.len() - 3];
    std::fs::write(&path, format!("{}\n{{\"seq\":", kept.join("\n"))).unwrap();
    generate_traffic(&broker).await;
    let mut sink = mayfly_server::audit::sink::FileSink::open(&path).unwrap();
    assert_eq!(sink.position(), head - 3);
    // The partial last line was cut off at open, so appends start on a fresh line.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    while sink.run_once(&broker.broker).await.unwrap() > 0 {}
    let (new_head, _) = broker.broker.store().audit_head().await.unwrap();
    let again: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(again.len() as i64, new_head);
    assert_eq!(&again[..lines.len()], &lines[..]);
    assert_eq!(verify_lines(&again, None).unwrap(), new_head as u64);
    assert_eq!(
        broker
            .broker
            .store()
            .sink_cursor(&format!("file:{}", path.display()))
            .await
            .unwrap(),
        new_head
    );
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[tokio::test]
async fn a_broker_on_postgres_keeps_one_verified_chain_across_two_nodes() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    // Two nodes on one store; the second unseals from the same root key file.
    let (first, second) = TestBroker::two_nodes(&db.url).await;
    // Alice's token, minted by node one, works on node two: sessions live in the shared store.
    let token = first.login("alice").await;
    let (status, info) = second
        .call("GET", "/v1/auth/token/lookup-self", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{info}");
    for node in [&first, &second, &first, &second] {
        node.call("GET", "/v1/auth/token/lookup-self", Some("mft_bad"), None)
            .await;
    }
    let admin = first.admin_token.clone().unwrap();
    let (status, report) = second
        .call("POST", "/v1/sys/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    // Both nodes wrote into the one chain: each audited its first refusal (the next ones from
    // the same source are counted into an aggregate event, written later).
    let kinds: Vec<String> = first
        .broker
        .store()
        .audit_events(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "auth.refused").count(),
        2,
        "{kinds:?}"
    );
    assert!(report["n_events"].as_u64().unwrap() >= 9, "{report}");
    first.stop().await;
    second.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_store_clock_follows_postgres() {
    use mayfly_server::clock::Clock;
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let store = mayfly_store::open(&db.url).await.unwrap();
    let clock = mayfly_server::clock::StoreClock::default();
    let offset = clock.sync(&store).await.unwrap();
    // Same machine: the offset is the round trip's noise, and now() is the server's time.
    assert!(offset.abs() < 1_000, "offset {offset} ms");
    let server_ms = mayfly_store::Store::clock_ms(&store).await.unwrap();
    assert!((clock.now().unix_ms() - server_ms).abs() < 1_000);
    store.close().await;
    db.drop_db().await;
}
