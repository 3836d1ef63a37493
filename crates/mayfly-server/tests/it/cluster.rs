//! Several brokers on one PostgreSQL store (issue 23, docs/cluster.md): a dead node's claimed due
//! grants are taken over by the others once its node lease ends (long before the claims' own
//! timeout), and its late writes change nothing; a checkpoint signed under a lost lease is not a
//! checkpoint, and the lease holder signs after N events whichever node committed them; the due hints (`LISTEN`/`NOTIFY`) wake the engine, and the poll alone still
//! revokes; `GET /v1/sys/cluster` for admins only.

use std::time::Duration;

use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::grant::GrantState;
use mayfly_server::audit::checkpoint::{CheckpointOutcome, sign_under};
use mayfly_server::cluster::CHECKPOINT_LEASE;
use mayfly_store::{
    Change, Claimant, GrantUpdate, LEASE_LOST_KIND, NodeRegistration, Store, Write, WriteOutcome,
};
use mayfly_testkit::TestBroker;
use mayfly_testkit::access::{ask, grant_id};
use mayfly_testkit::pgcluster::PgCluster;
use mayfly_testkit::postgres::ThrowawayDb;
use serde_json::Value;

const POLICY: &str = r#"
@id("dev-readonly")
@max_ttl("3600")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/readonly");
"#;

fn node(name: &str) -> NodeRegistration {
    NodeRegistration {
        name: name.into(),
        version: "test".into(),
        address: format!("http://{name}.invalid"),
    }
}

async fn register(store: &dyn Store, name: &str, at: mayfly_core::Timestamp) -> Claimant {
    let generation = store
        .register_node(&node(name), at, at + Duration::from_millis(1500))
        .await
        .unwrap()
        .unwrap();
    Claimant {
        name: name.into(),
        generation,
    }
}

/// A third node claims every due grant and dies with them. While its lease runs nobody else may
/// take them; once it has ended (1.5 s later on the nodes' clocks, far before the claims' 60 s
/// timeout) the two live nodes take them over, revoke and prove each once; the dead node's late
/// write is refused; the chain verifies.
#[tokio::test]
async fn a_dead_nodes_due_grants_are_taken_over_when_its_lease_ends() {
    const GRANTS: usize = 12;
    let cluster = PgCluster::start();
    let db = ThrowawayDb::create().await;
    let (first, second) = TestBroker::two_nodes(&db.url).await;
    first
        .postgres_access(&cluster, &[("readonly", 3600)], POLICY)
        .await;
    let admin = first.admin();
    let alice = first.login("alice").await;
    let mut ids = Vec::new();
    for i in 0..GRANTS {
        let node = if i % 2 == 0 { &first } else { &second };
        let credential = node.grant(&alice, ask("pg", "readonly", 120, "test")).await;
        ids.push(grant_id(&credential));
    }
    let store = first.broker.store();
    // The ghost's time: every grant has expired (the nodes' clocks have not moved yet).
    let expired = first.broker.now().max(second.broker.now()) + Duration::from_secs(121);
    let ghost = register(store, "ghost", expired).await;
    let claimed = store
        .claim_due_as(&ghost, expired, expired + Duration::from_secs(60), 1000)
        .await
        .unwrap();
    assert_eq!(
        claimed.grants.len(),
        GRANTS,
        "the ghost claims every due grant"
    );
    let ghost_epochs: Vec<(String, i64)> = claimed
        .grants
        .iter()
        .map(|g| (g.id.clone(), g.epoch))
        .collect();

    // While the ghost's lease runs, its claims are its own.
    let probe = register(store, "probe", expired).await;
    let stolen = store
        .claim_due_as(
            &probe,
            expired + Duration::from_millis(1000),
            expired + Duration::from_secs(61),
            1000,
        )
        .await
        .unwrap();
    assert!(stolen.grants.is_empty(), "{:?}", stolen.grants);
    store.leave_node(&probe, expired).await.unwrap();
    let status = first
        .expect(200, "GET", "/v1/sys/cluster", Some(&admin), None)
        .await;
    let ghost_row = node_row(&status, "ghost");
    assert_eq!(ghost_row["generation"], ghost.generation, "{status}");

    // The nodes' clocks pass the ghost's lease end (2 s), nowhere near the claims' timeout.
    for node in [&first, &second] {
        node.clock.set(expired + Duration::from_secs(2));
    }
    for id in &ids {
        first.wait_for_grant(&admin, id, "verified").await;
    }
    let status = first
        .expect(200, "GET", "/v1/sys/cluster", Some(&admin), None)
        .await;
    assert_eq!(node_row(&status, "ghost")["alive"], false, "{status}");
    assert_eq!(
        node_row(&status, "ghost")["claims_in_flight"],
        0,
        "{status}"
    );

    // The ghost comes back from its pause: its lease lapsed, and its late writes change nothing.
    assert!(
        !store
            .heartbeat_node(
                &ghost,
                expired + Duration::from_secs(3),
                expired + Duration::from_secs(5)
            )
            .await
            .unwrap()
    );
    for (id, epoch) in &ghost_epochs {
        let mut late = GrantUpdate::new(id, GrantState::Active, GrantState::Revoking);
        late.epoch = Some(*epoch);
        late.next_attempt_at = Some(expired);
        let outcome = store
            .commit(vec![Write {
                change: Some(Change::UpdateGrant { update: late }),
                event: AuditDraft::new(expired, "grant.revoke_requested", Outcome::Ok),
            }])
            .await
            .unwrap();
        assert!(
            matches!(outcome[0], WriteOutcome::Conflict { .. }),
            "{outcome:?}"
        );
        assert_eq!(
            store.grant(id).await.unwrap().unwrap().state,
            GrantState::Verified
        );
    }

    // Each grant revoked once, by a live node; the chain verifies.
    let events = store.audit_events(0, 1_000_000).await.unwrap();
    let mut revoked: std::collections::HashMap<String, usize> = Default::default();
    for event in &events {
        let body: Value = serde_json::from_str(&event.body).unwrap();
        if event.kind == "grant.revoked" && body["outcome"] == "ok" {
            *revoked
                .entry(body["details"]["grant_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(revoked.len(), GRANTS, "{revoked:?}");
    assert!(revoked.values().all(|n| *n == 1), "{revoked:?}");
    let report = second
        .expect(200, "POST", "/v1/sys/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(report["ok"], true, "{report}");
    let metrics = first
        .raw()
        .await
        .get(format!("{}/metrics", first.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mayfly_cluster_takeovers_total"),
        "{metrics}"
    );
    assert!(metrics.contains("mayfly_cluster_nodes_alive"));
    assert!(metrics.contains("mayfly_lease_held{name=\"checkpoint\"}"));
    first.stop().await;
    second.stop().await;
    db.drop_db().await;
}

/// Polls `check` every 20 ms until it holds (at most 15 s, then the test fails naming `what`).
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..750 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never true: {what}");
}

fn node_row<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node `{name}` in {status}"))
}

/// The checkpoint lease's holder is paused; another node takes the lease; the holder's
/// checkpoint, signed meanwhile, is refused in its commit: the log gets a `lease.lost` event,
/// no checkpoint, and the chain verifies.
#[tokio::test]
async fn a_checkpoint_signed_under_a_lost_lease_changes_nothing() {
    let db = ThrowawayDb::create().await;
    let (first, second) = TestBroker::two_nodes(&db.url).await;
    let admin = first.admin();
    // The first node, unsealed first, takes the checkpoint lease with its first heartbeat.
    eventually("the first node holds the checkpoint lease", || async {
        first
            .broker
            .cluster()
            .fence(CHECKPOINT_LEASE, first.broker.now())
            .is_some()
    })
    .await;
    let fence = first
        .broker
        .cluster()
        .fence(CHECKPOINT_LEASE, first.broker.now())
        .unwrap();
    for node in [&first, &second] {
        node.call("GET", "/v1/auth/token/lookup-self", Some("mft_bad"), None)
            .await;
    }
    let store = first.broker.store();
    let before = store.last_checkpoint().await.unwrap().map(|e| e.seq);
    // Past the holder's lease, a thief takes it (a new epoch).
    let later = first.broker.now() + Duration::from_secs(10);
    let thief = register(store, "thief", later).await;
    let taken = store
        .acquire_leases(
            &[CHECKPOINT_LEASE],
            &thief,
            later,
            later + Duration::from_millis(1500),
        )
        .await
        .unwrap();
    assert_eq!(
        taken,
        vec![(CHECKPOINT_LEASE.to_owned(), fence.epoch + 1)],
        "the epoch bumps with the new holder"
    );
    let outcome = sign_under(&first.broker, fence).await.unwrap();
    assert_eq!(outcome, CheckpointOutcome::LeaseLost);
    assert_eq!(
        store.last_checkpoint().await.unwrap().map(|e| e.seq),
        before,
        "no checkpoint was written"
    );
    let (head, _) = store.audit_head().await.unwrap();
    let last = store.audit_events(head - 1, 1).await.unwrap();
    assert_eq!(last[0].kind, LEASE_LOST_KIND);
    let body: Value = serde_json::from_str(&last[0].body).unwrap();
    assert_eq!(body["details"]["not_done"], "audit.checkpoint", "{body}");
    assert!(body["details"].get("signature").is_none(), "{body}");
    let status = second
        .expect(200, "GET", "/v1/sys/cluster", Some(&admin), None)
        .await;
    let lease = status["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == CHECKPOINT_LEASE)
        .unwrap();
    assert_eq!(lease["holder"], "thief", "{status}");
    let report = second
        .expect(200, "POST", "/v1/sys/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(report["ok"], true, "{report}");
    first.stop().await;
    second.stop().await;
    db.drop_db().await;
}

/// The holder of the checkpoint lease signs once `checkpoint_every_events` events were
/// committed, also when another node committed them (here: straight into the store), long before
/// the interval.
#[tokio::test]
async fn the_lease_holder_signs_after_n_events_committed_by_any_node() {
    let db = ThrowawayDb::create().await;
    let node = TestBroker::start(mayfly_testkit::Options {
        store_url: Some(db.url.clone()),
        checkpoint_every_events: 10,
        checkpoint_interval: Duration::from_secs(3600),
        ..mayfly_testkit::Options::default()
    })
    .await;
    eventually("the node holds the checkpoint lease", || async {
        node.broker
            .cluster()
            .fence(CHECKPOINT_LEASE, node.broker.now())
            .is_some()
    })
    .await;
    let store = node.broker.store();
    // Whatever the node signs at start (taking the lease) is done before the others commit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = store.last_checkpoint().await.unwrap().map_or(0, |e| e.seq);
    let others: Vec<Write> = (0..25)
        .map(|_| Write {
            change: None,
            event: AuditDraft::new(node.broker.now(), "test.other_node", Outcome::Ok),
        })
        .collect();
    store.commit(others).await.unwrap();
    let (head, _) = store.audit_head().await.unwrap();
    eventually("a checkpoint over the other node's events", || async {
        store
            .last_checkpoint()
            .await
            .unwrap()
            .is_some_and(|e| e.seq > head && e.seq > before)
    })
    .await;
    let report = node
        .expect(
            200,
            "POST",
            "/v1/sys/audit/verify",
            Some(&node.admin()),
            None,
        )
        .await;
    assert_eq!(report["ok"], true, "{report}");
    node.stop().await;
    db.drop_db().await;
}

/// A grant made due now by another writer's commit: the node hears the hint and revokes it; with
/// the hints off, the poll alone still does.
#[tokio::test]
async fn due_hints_wake_the_engine_and_the_poll_alone_still_revokes() {
    let cluster = PgCluster::start();
    let db = ThrowawayDb::create().await;
    let broker = TestBroker::start(mayfly_testkit::Options {
        store_url: Some(db.url.clone()),
        ..mayfly_testkit::Options::default()
    })
    .await;
    broker
        .postgres_access(&cluster, &[("readonly", 3600)], POLICY)
        .await;
    let admin = broker.admin();
    let alice = broker.login("alice").await;
    let other_writer = mayfly_store::open(&db.url).await.unwrap();
    eventually("the node listens for due hints", || async {
        broker.broker.cluster().hints_listening()
    })
    .await;
    for (hints, offset_ms) in [(true, 7), (false, 11)] {
        broker.broker.cluster().set_due_hints(hints);
        let credential = broker
            .grant(&alice, ask("pg", "readonly", 3600, "test"))
            .await;
        let id = grant_id(&credential);
        // Another writer (a node without an engine) revokes it now.
        let due = broker.broker.now() - Duration::from_millis(offset_ms);
        let mut update = GrantUpdate::new(&id, GrantState::Active, GrantState::Revoking);
        update.next_attempt_at = Some(due);
        update.revoke_reason = Some("revoked by another node".into());
        let outcome = other_writer
            .commit(vec![Write {
                change: Some(Change::UpdateGrant { update }),
                event: AuditDraft::new(due, "grant.revoke_requested", Outcome::Ok),
            }])
            .await
            .unwrap();
        assert!(matches!(outcome[0], WriteOutcome::Applied { .. }));
        broker.wait_for_grant(&admin, &id, "verified").await;
        assert_eq!(
            broker.broker.cluster().heard_hint(due),
            hints,
            "hints {hints}"
        );
    }
    other_writer.close().await;
    broker.stop().await;
    db.drop_db().await;
}

/// `GET /v1/sys/cluster`: admins see both nodes alive with their generations, the leases and the
/// audit head; anyone else is refused, and the query string changes nothing.
#[tokio::test]
async fn the_cluster_status_is_for_admins_only() {
    let db = ThrowawayDb::create().await;
    let (first, second) = TestBroker::two_nodes(&db.url).await;
    let admin = first.admin();
    eventually("both nodes registered", || async {
        first.broker.cluster().claimant().is_some() && second.broker.cluster().claimant().is_some()
    })
    .await;
    let status = second
        .expect(200, "GET", "/v1/sys/cluster", Some(&admin), None)
        .await;
    assert_eq!(
        status["node"],
        second.broker.inner.config.node_name.as_str()
    );
    for node in [&first, &second] {
        let row = node_row(&status, &node.broker.inner.config.node_name);
        assert_eq!(row["alive"], true, "{status}");
        assert!(row["generation"].as_i64().unwrap() >= 1);
    }
    let leases: Vec<&str> = status["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert!(leases.contains(&CHECKPOINT_LEASE), "{status}");
    assert!(status["audit_head"]["seq"].as_i64().unwrap() > 0);
    assert_eq!(status["past_due_grants"], 0);

    let alice = first.login("alice").await;
    first
        .expect(403, "GET", "/v1/sys/cluster", Some(&alice), None)
        .await;
    first
        .expect(
            403,
            "GET",
            "/v1/sys/cluster?admin=true&node=../../etc",
            Some(&alice),
            None,
        )
        .await;
    first
        .expect(401, "GET", "/v1/sys/cluster", None, None)
        .await;
    first
        .expect(401, "GET", "/v1/sys/cluster", Some("mft_forged"), None)
        .await;
    first
        .expect(405, "POST", "/v1/sys/cluster", Some(&admin), None)
        .await;
    first.stop().await;
    second.stop().await;
    db.drop_db().await;
}
