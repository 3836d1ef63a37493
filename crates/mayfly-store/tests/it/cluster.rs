//! The cluster story (migration 0016) on both backends: nodes register with a new generation and
//! heartbeat; claims name their node and are taken over as soon as its lease ends (not after the
//! claim's timeout); a lapsed node claims nothing until it registers again; single-doer leases
//! are taken when free or ended, renewed by their holder, and fence the work's commit; the
//! cluster's reads.

use mayfly_core::Timestamp;
use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::grant::{GrantState, RequestState};
use mayfly_store::{
    Change, Claimant, GrantUpdate, LEASE_LOST_KIND, LeaseFence, NodeRegistration, Store, Write,
    WriteOutcome,
};

use crate::access::{grant, request};

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

async fn apply(store: &dyn Store, change: Change, kind: &str) -> WriteOutcome {
    let mut outcomes = store
        .commit(vec![Write {
            change: Some(change),
            event: AuditDraft::new(at(1), kind, Outcome::Ok),
        }])
        .await
        .unwrap();
    outcomes.remove(0)
}

fn node(name: &str) -> NodeRegistration {
    NodeRegistration {
        name: name.into(),
        version: "test".into(),
        address: format!("http://{name}"),
    }
}

pub async fn run(store: &dyn Store) {
    // Two nodes register; the same name cannot register again while alive.
    let a_gen = store
        .register_node(&node("a"), at(1_000), at(2_500))
        .await
        .unwrap()
        .unwrap();
    let b_gen = store
        .register_node(&node("b"), at(1_000), at(2_500))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .register_node(&node("a"), at(2_000), at(3_500))
            .await
            .unwrap(),
        None,
        "a live node's name is taken"
    );
    let a = Claimant {
        name: "a".into(),
        generation: a_gen,
    };
    let b = Claimant {
        name: "b".into(),
        generation: b_gen,
    };

    // Ten due grants.
    for i in 0..10 {
        let id = format!("k{i}");
        let rq = format!("kr{i}");
        apply(
            store,
            Change::CreateRequest {
                request: request(&rq, RequestState::Allowed, 0),
            },
            "test",
        )
        .await;
        let intent = Change::RecordIntent {
            grant: grant(&id, &rq, 1_500),
            secret: (format!("grants/{id}/secret"), vec![1]),
            issuer: None,
        };
        assert!(matches!(
            apply(store, intent, "test").await,
            WriteOutcome::Applied { .. }
        ));
    }
    assert_eq!(
        store.next_claimable(at(2_000)).await.unwrap(),
        Some(at(1_500))
    );

    // A claims them all until 60 s; B finds nothing while A's lease runs.
    let claimed = store
        .claim_due_as(&a, at(2_000), at(62_000), 100)
        .await
        .unwrap();
    assert_eq!(claimed.grants.len(), 10);
    assert_eq!(claimed.n_taken_over, 0);
    let epochs: Vec<(String, i64)> = claimed
        .grants
        .iter()
        .map(|g| (g.id.clone(), g.epoch))
        .collect();
    assert!(
        store
            .claim_due_as(&b, at(2_100), at(62_100), 100)
            .await
            .unwrap()
            .grants
            .is_empty()
    );
    assert_eq!(store.next_claimable(at(2_100)).await.unwrap(), None);
    let rows = store.cluster(at(2_100)).await.unwrap();
    assert_eq!(rows.claims, vec![("a".to_owned(), 10)]);
    assert_eq!(store.past_due_grants(at(2_100)).await.unwrap(), 10);

    // B heartbeats, A does not: once A's lease ends (2 500), B takes every claim over at once,
    // long before their own timeout (62 000).
    assert!(
        store
            .heartbeat_node(&b, at(2_400), at(3_900))
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_due_as(&b, at(2_499), at(62_499), 100)
            .await
            .unwrap()
            .grants
            .is_empty(),
        "A's lease still runs at 2 499"
    );
    assert_eq!(
        store.next_claimable(at(2_500)).await.unwrap(),
        Some(at(1_500))
    );
    let taken = store
        .claim_due_as(&b, at(2_500), at(62_500), 100)
        .await
        .unwrap();
    assert_eq!(taken.grants.len(), 10);
    assert_eq!(taken.n_taken_over, 10);
    // A's late write (its claim's epoch) changes nothing.
    let (id, epoch) = &epochs[0];
    let mut late = GrantUpdate::new(id, GrantState::Issuing, GrantState::Revoking);
    late.epoch = Some(*epoch);
    late.next_attempt_at = Some(at(2_600));
    assert!(matches!(
        apply(store, Change::UpdateGrant { update: late }, "grant.revoke").await,
        WriteOutcome::Conflict { .. }
    ));

    // A back from its pause: its heartbeat finds its lease lapsed; it claims nothing until it
    // registers again, with a new generation.
    assert!(
        !store
            .heartbeat_node(&a, at(3_000), at(4_500))
            .await
            .unwrap()
    );
    let a_again = store
        .register_node(&node("a"), at(3_000), at(4_500))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a_again, a_gen + 1);
    let nodes = store.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].generation, a_gen + 1);

    // Leases: taken when free, renewed by the holder (same epoch), refused to another while it
    // runs, taken once it ended (new epoch).
    let a = Claimant {
        name: "a".into(),
        generation: a_again,
    };
    let got = store
        .acquire_leases(&["checkpoint", "sweep"], &a, at(3_000), at(4_500))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    let epoch = got[0].1;
    let renewed = store
        .acquire_leases(&["checkpoint"], &a, at(3_500), at(5_000))
        .await
        .unwrap();
    assert_eq!(renewed, vec![("checkpoint".to_owned(), epoch)]);
    assert!(
        store
            .acquire_leases(&["checkpoint"], &b, at(4_000), at(5_500))
            .await
            .unwrap()
            .is_empty()
    );
    let fence = LeaseFence {
        name: "checkpoint".into(),
        holder: "a".into(),
        generation: a_again,
        epoch,
    };
    // Work under the lease commits while it is held...
    assert!(matches!(
        apply(
            store,
            Change::fenced(fence.clone(), None),
            "audit.checkpoint"
        )
        .await,
        WriteOutcome::Applied { .. }
    ));
    // ...and B takes it once it ended: A's fenced work changes nothing and is recorded as
    // `lease.lost`, never under its own kind.
    let taken = store
        .acquire_leases(&["checkpoint"], &b, at(5_000), at(6_500))
        .await
        .unwrap();
    assert_eq!(taken, vec![("checkpoint".to_owned(), epoch + 1)]);
    let before = store.last_checkpoint().await.unwrap();
    let mut renew = GrantUpdate::new("k1", GrantState::Issuing, GrantState::Revoking);
    renew.next_attempt_at = Some(at(5_000));
    let outcome = apply(
        store,
        Change::fenced(fence, Some(Change::UpdateGrant { update: renew })),
        "audit.checkpoint",
    )
    .await;
    let WriteOutcome::Conflict { seq, .. } = outcome else {
        panic!("a lost lease must refuse the work: {outcome:?}");
    };
    let events = store.audit_events(seq - 1, 1).await.unwrap();
    assert_eq!(events[0].kind, LEASE_LOST_KIND);
    assert!(events[0].body.contains("\"not_done\":\"audit.checkpoint\""));
    assert_eq!(
        store.last_checkpoint().await.unwrap().map(|e| e.seq),
        before.map(|e| e.seq)
    );
    assert_eq!(
        store.grant("k1").await.unwrap().unwrap().state,
        GrantState::Issuing,
        "nothing of the fenced change was applied"
    );
    let leases = store.cluster(at(5_100)).await.unwrap().leases;
    let checkpoint = leases.iter().find(|l| l.name == "checkpoint").unwrap();
    assert_eq!(
        (checkpoint.holder.as_str(), checkpoint.epoch),
        ("b", epoch + 1)
    );

    // A clean leave ends the node's lease and its leases at once.
    store.leave_node(&b, at(5_200)).await.unwrap();
    let rows = store.cluster(at(5_200)).await.unwrap();
    assert!(
        rows.nodes
            .iter()
            .all(|n| n.name != "b" || n.lease_until <= 5_200)
    );
    assert!(
        rows.leases
            .iter()
            .all(|l| l.holder != "b" || l.until <= 5_200)
    );

    // An intent recorded by its issuer C is C's claim until its issue deadline (67 000), due at
    // once: not past due, nobody else's to claim while C lives; once C's lease ends (7 500) D
    // takes it over at once, a minute before the deadline.
    let c = Claimant {
        name: "c".into(),
        generation: store
            .register_node(&node("c"), at(7_000), at(7_500))
            .await
            .unwrap()
            .unwrap(),
    };
    let d = Claimant {
        name: "d".into(),
        generation: store
            .register_node(&node("d"), at(7_000), at(9_000))
            .await
            .unwrap()
            .unwrap(),
    };
    apply(
        store,
        Change::CreateRequest {
            request: request("cr", RequestState::Allowed, 0),
        },
        "test",
    )
    .await;
    let past_due = store.past_due_grants(at(7_000)).await.unwrap();
    let mut issuing = grant("c1", "cr", 67_000);
    issuing.created_at = at(7_000);
    let intent = Change::RecordIntent {
        grant: issuing,
        secret: ("grants/c1/secret".into(), vec![1]),
        issuer: Some(c.clone()),
    };
    assert!(matches!(
        apply(store, intent, "grant.intent").await,
        WriteOutcome::Applied { .. }
    ));
    assert_eq!(
        store.past_due_grants(at(7_100)).await.unwrap(),
        past_due,
        "an intent being issued counts as past due"
    );
    // D claims what B (gone) held, but not C's intent.
    let claimed = store
        .claim_due_as(&d, at(7_100), at(67_100), 100)
        .await
        .unwrap();
    assert!(!claimed.grants.is_empty());
    assert!(
        claimed.grants.iter().all(|g| g.id != "c1"),
        "the intent of a live issuer was claimed"
    );
    let rows = store.cluster(at(7_100)).await.unwrap();
    assert!(
        rows.claims.contains(&("c".to_owned(), 1)),
        "{:?}",
        rows.claims
    );
    let taken = store
        .claim_due_as(&d, at(7_500), at(67_500), 100)
        .await
        .unwrap();
    let ids: Vec<&str> = taken.grants.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["c1"],
        "the intent of a dead issuer waits for its deadline"
    );
    assert_eq!(taken.grants[0].epoch, 1);
    assert_eq!(taken.n_taken_over, 1);
}

#[tokio::test]
async fn cluster_story_sqlite() {
    let (store, _dir) = crate::sqlite_store().await;
    run(&store).await;
    store.close().await;
}

#[tokio::test]
async fn cluster_story_postgres() {
    let db = crate::postgres::ThrowawayDb::create().await;
    let store = mayfly_store::open(&db.url).await.unwrap();
    run(&store).await;
    store.close().await;
    db.drop_db().await;
}
