//! The access story: targets, roles, policies, requests and approvals, grants, and the claim of
//! due grants with epoch fencing — on both backends.

use std::collections::HashSet;
use std::sync::Arc;

use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::grant::{GrantState, RequestState};
use mayfly_core::{Principal, Timestamp};
use mayfly_store::{
    ApprovalRecord, Change, GrantFilter, GrantRecord, GrantUpdate, Principals, RequestRecord,
    RoleRecord, Store, TargetRecord, Write, WriteOutcome,
};

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

async fn apply(store: &dyn Store, change: Change) -> WriteOutcome {
    let mut outcomes = store
        .commit(vec![Write {
            change: Some(change),
            event: AuditDraft::new(at(1), "test", Outcome::Ok),
        }])
        .await
        .unwrap();
    outcomes.remove(0)
}

fn applied(outcome: &WriteOutcome) -> bool {
    matches!(outcome, WriteOutcome::Applied { .. })
}

pub fn request(id: &str, state: RequestState, approvals: i64) -> RequestRecord {
    RequestRecord {
        id: id.into(),
        principal: Principal::User {
            id: "u1".into(),
            name: "alice".into(),
            groups: vec![],
        },
        target: "prod-db".into(),
        role: "readonly".into(),
        reason: "INC-1'; DROP TABLE grants; --".into(),
        ticket: "INC-1".into(),
        ttl_ms: 900_000,
        max_ttl_ms: 3_600_000,
        approvals_needed: approvals,
        state,
        decision: "policy p".into(),
        break_glass: false,
        created_at: at(1_000),
        expires_at: at(100_000),
        actors: vec![],
    }
}

pub fn grant(id: &str, request_id: &str, next: i64) -> GrantRecord {
    GrantRecord {
        id: id.into(),
        request_id: request_id.into(),
        principal: "user:alice".into(),
        target: "prod-db".into(),
        role: "readonly".into(),
        login: format!("mf_{id}"),
        state: GrantState::Issuing,
        created_at: at(1_000),
        expires_at: at(next),
        next_attempt_at: Some(at(next)),
        epoch: 0,
        n_attempts: 0,
        last_error: None,
        revoke_reason: None,
        revoked_at: None,
        verified_at: None,
        break_glass: false,
        reviewed_by: None,
        actors: vec![],
    }
}

pub async fn run(store: &dyn Store) {
    // A role needs its target.
    let role = RoleRecord {
        target: "prod-db".into(),
        name: "readonly".into(),
        creation_sql: "CREATE ROLE {{name}}".into(),
        revocation_sql: None,
        max_ttl_ms: 3_600_000,
    };
    assert!(!applied(
        &apply(store, Change::PutRole { role: role.clone() }).await
    ));
    let target = TargetRecord {
        name: "prod-db".into(),
        kind: "postgres".into(),
        url: "postgres://admin@db/app".into(),
        created_at: at(1),
    };
    assert!(applied(
        &apply(
            store,
            Change::PutTarget {
                target: target.clone(),
                secret: ("targets/prod-db/admin".into(), vec![1, 2]),
                rotate_admin_every_ms: None,
            }
        )
        .await
    ));
    // A rotation of the admin secret under way survives the target being saved again (its
    // holder may have set the pending password on the target already): the pending password is
    // kept for the recovery, and the holder can still finish it.
    assert!(applied(
        &apply(
            store,
            Change::BeginAdminRotation {
                target: "prod-db".into(),
                rotation_id: "rot-1".into(),
                pending: vec![7, 7],
                claimed_until: at(300_000),
                due_by: None,
            }
        )
        .await
    ));
    assert!(applied(
        &apply(
            store,
            Change::PutTarget {
                target: target.clone(),
                secret: ("targets/prod-db/admin".into(), vec![1, 2]),
                rotate_admin_every_ms: None,
            }
        )
        .await
    ));
    let rotation = store.admin_rotation("prod-db").await.unwrap().unwrap();
    let pending = rotation.pending.expect("the pending rotation was dropped");
    assert_eq!((pending.id.as_str(), pending.blob), ("rot-1", vec![7, 7]));
    assert!(applied(
        &apply(
            store,
            Change::CompleteAdminRotation {
                target: "prod-db".into(),
                rotation_id: "rot-1".into(),
                secret: ("targets/prod-db/admin".into(), vec![7, 7]),
                previous: ("targets/prod-db/admin-previous".into(), None),
                at: at(2),
            }
        )
        .await
    ));
    assert!(
        store
            .admin_rotation("prod-db")
            .await
            .unwrap()
            .unwrap()
            .pending
            .is_none()
    );
    assert_eq!(
        store.secret("targets/prod-db/admin").await.unwrap(),
        Some(vec![7, 7])
    );
    apply(
        store,
        Change::PutTarget {
            target: target.clone(),
            secret: ("targets/prod-db/admin".into(), vec![1, 2]),
            rotate_admin_every_ms: None,
        },
    )
    .await;

    assert!(applied(
        &apply(store, Change::PutRole { role: role.clone() }).await
    ));
    assert_eq!(store.target("prod-db").await.unwrap(), Some(target));
    assert_eq!(store.role("prod-db", "readonly").await.unwrap(), Some(role));
    assert_eq!(store.roles().await.unwrap().len(), 1);
    assert_eq!(
        store.secret("targets/prod-db/admin").await.unwrap(),
        Some(vec![1, 2])
    );

    // Policies are versioned.
    assert_eq!(store.policies().await.unwrap(), None);
    apply(
        store,
        Change::PutPolicies {
            text: "permit(principal, action, resource);".into(),
            at: at(2),
        },
    )
    .await;
    apply(
        store,
        Change::PutPolicies {
            text: "forbid(principal, action, resource);".into(),
            at: at(3),
        },
    )
    .await;
    assert_eq!(
        store.policies().await.unwrap(),
        Some(("forbid(principal, action, resource);".into(), 2))
    );

    // Two approvals by distinct approvers allow a pending request.
    apply(
        store,
        Change::CreateRequest {
            request: request("r1", RequestState::Pending, 2),
        },
    )
    .await;
    let approval = |who: &str| ApprovalRecord {
        request_id: "r1".into(),
        approver: who.into(),
        comment: "ok".into(),
        at: at(2_000),
    };
    assert!(applied(
        &apply(
            store,
            Change::Approve {
                approval: approval("bob")
            }
        )
        .await
    ));
    assert!(
        !applied(
            &apply(
                store,
                Change::Approve {
                    approval: approval("bob")
                }
            )
            .await
        ),
        "the same approver twice"
    );
    assert_eq!(
        store.request("r1").await.unwrap().unwrap().state,
        RequestState::Pending
    );
    assert!(applied(
        &apply(
            store,
            Change::Approve {
                approval: approval("carol")
            }
        )
        .await
    ));
    let r1 = store.request("r1").await.unwrap().unwrap();
    assert_eq!(r1.state, RequestState::Allowed);
    assert_eq!(r1.reason, "INC-1'; DROP TABLE grants; --");
    assert_eq!(store.approvals("r1").await.unwrap().len(), 2);
    assert!(!applied(
        &apply(
            store,
            Change::DenyRequest {
                request_id: "r1".into()
            }
        )
        .await
    ));

    // Deny, expire.
    apply(
        store,
        Change::CreateRequest {
            request: request("r2", RequestState::Pending, 1),
        },
    )
    .await;
    assert!(applied(
        &apply(
            store,
            Change::DenyRequest {
                request_id: "r2".into()
            }
        )
        .await
    ));
    let mut r3 = request("r3", RequestState::Pending, 1);
    r3.expires_at = at(40_000);
    apply(store, Change::CreateRequest { request: r3 }).await;
    apply(store, Change::ExpireRequests { before: at(50_000) }).await;
    assert_eq!(
        store.request("r3").await.unwrap().unwrap().state,
        RequestState::Expired
    );
    assert_eq!(store.requests(true, 10).await.unwrap().len(), 0);
    assert_eq!(store.requests(false, 10).await.unwrap().len(), 3);

    // The intent: once per allowed request.
    let g1 = grant("g1", "r1", 50_000);
    let intent = Change::RecordIntent {
        grant: g1.clone(),
        secret: ("grants/g1/secret".into(), vec![9; 40]),
        issuer: None,
    };
    assert!(applied(&apply(store, intent.clone()).await));
    assert!(
        !applied(&apply(store, intent).await),
        "a request activates once"
    );
    assert_eq!(
        store.request("r1").await.unwrap().unwrap().state,
        RequestState::Activated
    );
    assert_eq!(
        store.grant("g1").await.unwrap().unwrap().state,
        GrantState::Issuing
    );

    // Issuing → active by the activating call (no epoch: bumps it).
    let mut issued = GrantUpdate::new("g1", GrantState::Issuing, GrantState::Active);
    issued.next_attempt_at = Some(at(50_000));
    assert!(applied(
        &apply(
            store,
            Change::UpdateGrant {
                update: issued.clone()
            }
        )
        .await
    ));
    assert!(!applied(
        &apply(store, Change::UpdateGrant { update: issued }).await
    ));
    assert_eq!(store.grants(GrantFilter::Live, 10).await.unwrap().len(), 1);
    assert_eq!(store.next_due().await.unwrap(), Some(at(50_000)));

    // Claims: nothing due before its time; then one claim, with a new epoch; a stale epoch loses.
    assert!(
        store
            .claim_due(at(49_999), at(60_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store.claim_due(at(50_000), at(60_000), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let epoch = claimed[0].epoch;
    assert!(
        store
            .claim_due(at(50_001), at(60_000), 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed until 60 000"
    );
    // The claim timed out (a node died): another node claims it, with a newer epoch.
    let reclaimed = store.claim_due(at(60_000), at(70_000), 10).await.unwrap();
    assert_eq!(reclaimed[0].epoch, epoch + 1);
    let mut late = GrantUpdate::new("g1", GrantState::Active, GrantState::Revoking);
    late.epoch = Some(epoch);
    assert!(
        !applied(&apply(store, Change::UpdateGrant { update: late }).await),
        "the paused node's late write changes nothing"
    );
    let mut current = GrantUpdate::new("g1", GrantState::Active, GrantState::Revoking);
    current.epoch = Some(epoch + 1);
    current.next_attempt_at = Some(at(60_000));
    current.revoke_reason = Some("expired".into());
    assert!(applied(
        &apply(store, Change::UpdateGrant { update: current }).await
    ));
    let g = store.grant("g1").await.unwrap().unwrap();
    assert_eq!(
        (g.state, g.revoke_reason.as_deref()),
        (GrantState::Revoking, Some("expired"))
    );
    let live = store
        .live_logins(&["mf_g1".to_owned(), "mf_nobody".to_owned()])
        .await
        .unwrap();
    assert_eq!(live, HashSet::from(["mf_g1".to_owned()]));

    // A CA key is made once: a second creation (another node, at the same time) is refused and
    // the first stays.
    for (blob, made) in [(vec![1u8], true), (vec![2u8], false)] {
        let outcome = apply(
            store,
            Change::CreateSecret {
                path: "ssh/ca-seed".into(),
                blob,
                at: at(5),
            },
        )
        .await;
        assert_eq!(applied(&outcome), made, "{outcome:?}");
    }
    assert_eq!(store.secret("ssh/ca-seed").await.unwrap(), Some(vec![1]));

    // The secrets under a prefix, by path: `%`, `_` and `\\` in the prefix are themselves, and
    // the case of the letters counts.
    for path in [
        "sys/token-keys/002",
        "sys/token-keys/001",
        "sys/token-keysX",
        "sys/TOKEN-keys/003",
        "sys/token_keys/004",
        "a%b/1",
        "axb/1",
        "a\\b/1",
    ] {
        let outcome = apply(
            store,
            Change::CreateSecret {
                path: path.into(),
                blob: vec![9],
                at: at(6),
            },
        )
        .await;
        assert!(applied(&outcome), "{outcome:?}");
    }
    assert_eq!(
        store.secret_paths("sys/token-keys/").await.unwrap(),
        ["sys/token-keys/001", "sys/token-keys/002"]
    );
    assert_eq!(store.secret_paths("a%").await.unwrap(), ["a%b/1"]);
    assert_eq!(store.secret_paths("a\\").await.unwrap(), ["a\\b/1"]);
    assert!(store.secret_paths("nothing/").await.unwrap().is_empty());

    // The one-call certificate path: request and active grant in one change, and what a decision
    // reads in one query.
    let (t, r, text) = store
        .decision_inputs("prod-db", "readonly")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((t.name.as_str(), t.kind.as_str()), ("prod-db", "postgres"));
    assert_eq!((r.name.as_str(), r.max_ttl_ms), ("readonly", 3_600_000));
    assert_eq!(
        text.as_deref(),
        Some("forbid(principal, action, resource);")
    );
    assert!(
        store
            .decision_inputs("prod-db", "nope")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .decision_inputs("nope", "readonly")
            .await
            .unwrap()
            .is_none()
    );
    let mut cert_request = request("rc1", RequestState::Activated, 0);
    cert_request.reason = "deploy".into();
    let mut cert_grant = grant("gc1", "rc1", 600_000);
    cert_grant.state = GrantState::Active;
    let issue = |request: RequestRecord, grant: GrantRecord| Write {
        change: Some(Change::IssueCertificate {
            request: Box::new(request),
            grant: Box::new(grant),
        }),
        event: AuditDraft::new(at(1), "access.certificate", Outcome::Ok),
    };
    // A batch where one insert fails (the same ids again): the batch is applied again change by
    // change; the others are kept, the failed one is refused, nothing is lost from the chain.
    let (head, _) = store.audit_head().await.unwrap();
    let outcomes = store
        .commit(vec![
            issue(cert_request.clone(), cert_grant.clone()),
            issue(cert_request.clone(), cert_grant.clone()),
            issue(request("rc2", RequestState::Activated, 0), {
                let mut g = grant("gc2", "rc2", 600_000);
                g.state = GrantState::Active;
                g
            }),
        ])
        .await
        .unwrap();
    assert!(applied(&outcomes[0]), "{outcomes:?}");
    assert!(!applied(&outcomes[1]), "{outcomes:?}");
    assert!(applied(&outcomes[2]), "{outcomes:?}");
    assert_eq!(store.audit_head().await.unwrap().0, head + 3);
    assert_eq!(
        store.request("rc1").await.unwrap().unwrap().state,
        RequestState::Activated
    );
    assert_eq!(
        store.grant("gc1").await.unwrap().unwrap().state,
        GrantState::Active
    );
    assert!(store.grant("gc2").await.unwrap().is_some());
    let events = store.audit_events(head, 10).await.unwrap();
    let outcomes: Vec<bool> = events
        .iter()
        .map(|e| e.kind == "access.certificate" && e.body.contains("\"refused\""))
        .collect();
    assert_eq!(outcomes, [false, true, false], "{events:?}");

    // Walking the active grants of one principal, or of one workload binding, in the query.
    for (id, principal) in [("gc3", "workload:ci:repo-a"), ("gc4", "user:alicex")] {
        let mut g = grant(id, &format!("r{id}"), 600_000);
        g.state = GrantState::Active;
        g.principal = principal.into();
        let outcome = store
            .commit(vec![issue(
                request(&format!("r{id}"), RequestState::Activated, 0),
                g,
            )])
            .await
            .unwrap();
        assert!(applied(&outcome[0]), "{outcome:?}");
    }
    let walk = |principals| async move {
        let mut ids = store
            .grants_after(GrantFilter::Active, principals, "", 100)
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.id)
            .collect::<Vec<_>>();
        ids.sort();
        ids
    };
    assert_eq!(
        walk(Principals::Exactly("user:alice")).await,
        ["gc1", "gc2"]
    );
    assert_eq!(
        walk(Principals::StartingWith("workload:ci:")).await,
        ["gc3"]
    );
    assert_eq!(walk(Principals::All).await, ["gc1", "gc2", "gc3", "gc4"]);
}

/// Two nodes claiming at once never get the same grant.
pub async fn concurrent_claims(first: Arc<dyn Store>, second: Arc<dyn Store>) {
    for i in 0..60 {
        let id = format!("c{i}");
        apply(
            first.as_ref(),
            Change::CreateRequest {
                request: request(&format!("rq{i}"), RequestState::Allowed, 0),
            },
        )
        .await;
        let intent = Change::RecordIntent {
            grant: grant(&id, &format!("rq{i}"), 10_000),
            secret: (format!("grants/{id}/secret"), vec![1]),
            issuer: None,
        };
        assert!(applied(&apply(first.as_ref(), intent).await));
    }
    let mut tasks = Vec::new();
    for store in [first.clone(), second.clone(), first.clone(), second.clone()] {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = store.claim_due(at(20_000), at(90_000), 7).await.unwrap();
                if claimed.is_empty() {
                    break;
                }
                mine.extend(claimed.into_iter().map(|g| g.id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 60, "every due grant claimed once");
    assert_eq!(unique.len(), 60, "no grant claimed twice");
}
