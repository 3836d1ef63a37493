//! The store story: every operation of the `Store` trait, as the broker uses them.

use std::sync::Arc;

use mayfly_core::audit::{AuditDraft, Outcome, Verifier};
use mayfly_core::{Principal, Timestamp};
use mayfly_store::{Change, SealRecord, SessionRecord, Store, UserRecord, Write, WriteOutcome};

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

fn event(kind: &str) -> AuditDraft {
    AuditDraft::new(at(1_000), kind, Outcome::Ok)
}

fn write(change: Change, kind: &str) -> Write {
    Write {
        change: Some(change),
        event: event(kind),
    }
}

fn user(name: &str) -> UserRecord {
    UserRecord {
        id: format!("id-{name}"),
        username: name.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        groups: vec!["admins".into(), "ops".into()],
        disabled: false,
        totp_last_step: None,
        created_at: at(1_000),
    }
}

fn session(id: &str, principal: Principal, hash: u8, expires_ms: i64) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        token_hash: vec![hash; 32],
        principal,
        created_at: at(1_000),
        expires_at: at(expires_ms),
        revoked_at: None,
        factor_at: None,
    }
}

/// Second factors (step-up) and Slack links: a TOTP step is used once, a session's factor only
/// moves forward, the latest factor counts only live sessions, a Slack id links one user.
async fn step_up_story(store: &dyn Store, alice: &UserRecord) {
    let step_up = |session_id: &str, at_ms: i64, step: Option<i64>| Change::RecordSecondFactor {
        session_id: session_id.into(),
        at: at(at_ms),
        totp: step.map(|step| mayfly_store::TotpStep {
            user_id: alice.id.clone(),
            username: "alice".into(),
            step,
        }),
    };
    assert_eq!(
        store
            .session_by_hash(&[1; 32])
            .await
            .unwrap()
            .unwrap()
            .factor_at,
        None
    );
    let outcomes = store
        .commit(vec![
            write(step_up("s1", 5_000, Some(200)), "auth.step_up"),
            // The same TOTP step again: refused, the factor stays.
            write(step_up("s1", 6_000, Some(200)), "auth.step_up"),
            // An older time never moves the factor back.
            write(step_up("s1", 4_000, None), "auth.step_up"),
            write(step_up("no-such-session", 5_000, None), "auth.step_up"),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], WriteOutcome::Applied { .. }));
    assert!(
        matches!(&outcomes[1], WriteOutcome::Conflict { reason, .. } if reason.contains("TOTP"))
    );
    assert!(matches!(outcomes[2], WriteOutcome::Applied { .. }));
    assert!(matches!(outcomes[3], WriteOutcome::Conflict { .. }));
    assert_eq!(
        store
            .session_by_hash(&[1; 32])
            .await
            .unwrap()
            .unwrap()
            .factor_at,
        Some(at(5_000))
    );
    assert_eq!(
        store
            .user_by_name("alice")
            .await
            .unwrap()
            .unwrap()
            .totp_last_step,
        Some(200)
    );
    assert_eq!(
        store.latest_factor_at(&alice.id, at(8_000)).await.unwrap(),
        Some(at(5_000))
    );
    // Session s1 expires at 9 000: afterwards its factor no longer counts.
    assert_eq!(
        store.latest_factor_at(&alice.id, at(9_000)).await.unwrap(),
        None
    );
    assert_eq!(store.latest_factor_at("nobody", at(1)).await.unwrap(), None);

    let link = |username: &str, slack: Option<&str>| Change::LinkSlackUser {
        username: username.into(),
        slack_user_id: slack.map(str::to_owned),
    };
    store
        .commit(vec![write(
            Change::CreateUser {
                user: user("carol"),
                secrets: vec![],
            },
            "user.create",
        )])
        .await
        .unwrap();
    let outcomes = store
        .commit(vec![
            write(link("alice", Some("U0ALICE")), "users.link_slack"),
            // One Slack user, one Mayfly user.
            write(link("carol", Some("U0ALICE")), "users.link_slack"),
            write(link("nobody", Some("U0NOBODY")), "users.link_slack"),
            // Linking again to the same user is allowed (idempotent).
            write(link("alice", Some("U0ALICE")), "users.link_slack"),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], WriteOutcome::Applied { .. }));
    assert!(matches!(outcomes[1], WriteOutcome::Conflict { .. }));
    assert!(matches!(outcomes[2], WriteOutcome::Conflict { .. }));
    assert!(matches!(outcomes[3], WriteOutcome::Applied { .. }));
    let linked = store.user_by_slack_id("U0ALICE").await.unwrap().unwrap();
    assert_eq!(linked.username, "alice");
    assert!(store.user_by_slack_id("U0CAROL").await.unwrap().is_none());
    store
        .commit(vec![write(link("alice", None), "users.link_slack")])
        .await
        .unwrap();
    assert!(store.user_by_slack_id("U0ALICE").await.unwrap().is_none());
}

pub async fn verify_chain(store: &dyn Store) -> i64 {
    let mut verifier = Verifier::new(None);
    let mut after = 0;
    loop {
        let events = store.audit_events(after, 100).await.unwrap();
        if events.is_empty() {
            break;
        }
        for e in events {
            let body: serde_json::Value = serde_json::from_str(&e.body).unwrap();
            verifier.push(e.seq as u64, &body, &e.hash).unwrap();
            after = e.seq;
        }
    }
    let report = verifier.finish();
    let (head_seq, head_hash) = store.audit_head().await.unwrap();
    assert_eq!(report.last_seq, head_seq);
    if head_seq > 0 {
        assert_eq!(report.last_hash, head_hash);
    }
    head_seq
}

pub async fn run(store: &dyn Store) {
    // The store's clock is the real time (one clock for every node sharing the store).
    let local = std::time::UNIX_EPOCH.elapsed().unwrap().as_millis() as i64;
    let store_ms = store.clock_ms().await.unwrap();
    assert!(
        (store_ms - local).abs() < 2_000,
        "store clock {store_ms} vs local {local}"
    );

    assert_eq!(store.seal().await.unwrap(), None);
    assert_eq!(store.audit_head().await.unwrap().0, 0);

    // Initialize: the seal and the first secrets, with one event.
    let seal = SealRecord {
        seal_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
        n_shares: 5,
        threshold: 3,
        kcv: vec![9; 40],
        wrapped_keyring: vec![7; 61],
        setup_code_hash: Some(vec![5; 32]),
        created_at: at(1_000),
    };
    let init = Change::Initialize {
        seal: seal.clone(),
        secrets: vec![("sys/audit/signing-key".into(), vec![0xAB; 60])],
    };
    let outcomes = store
        .commit(vec![write(init.clone(), "sys.init")])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Applied { seq: 1 }]);
    assert_eq!(store.seal().await.unwrap(), Some(seal.clone()));
    assert_eq!(
        store.secret("sys/audit/signing-key").await.unwrap(),
        Some(vec![0xAB; 60])
    );
    assert_eq!(store.secret("nope").await.unwrap(), None);

    // A second initialize conflicts, and is still audited, as refused.
    let outcomes = store.commit(vec![write(init, "sys.init")]).await.unwrap();
    assert!(matches!(
        &outcomes[..],
        [WriteOutcome::Conflict { seq: 2, .. }]
    ));

    // The setup code works once.
    let setup = |name: &str| Change::SetupFirstAdmin {
        code_hash: vec![5; 32],
        user: user(name),
        secrets: vec![(format!("users/id-{name}/totp"), vec![1; 48])],
    };
    let outcomes = store
        .commit(vec![
            write(setup("root"), "sys.setup"),
            write(setup("root2"), "sys.setup"),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes[0], WriteOutcome::Applied { seq: 3 });
    assert!(matches!(outcomes[1], WriteOutcome::Conflict { seq: 4, .. }));
    assert_eq!(store.seal().await.unwrap().unwrap().setup_code_hash, None);
    assert!(store.user_by_name("root2").await.unwrap().is_none());

    // Users: create, conflict on the same name, read back.
    let outcomes = store
        .commit(vec![
            write(
                Change::CreateUser {
                    user: user("alice"),
                    secrets: vec![],
                },
                "user.create",
            ),
            write(
                Change::CreateUser {
                    user: user("alice"),
                    secrets: vec![],
                },
                "user.create",
            ),
            Write {
                change: None,
                event: AuditDraft::new(at(1_001), "auth.refused", Outcome::Refused),
            },
        ])
        .await
        .unwrap();
    assert_eq!(outcomes[0], WriteOutcome::Applied { seq: 5 });
    assert!(
        matches!(&outcomes[1], WriteOutcome::Conflict { seq: 6, reason } if reason.contains("alice"))
    );
    assert_eq!(outcomes[2], WriteOutcome::Applied { seq: 7 });
    let alice = store.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!(alice, user("alice"));
    let names: Vec<String> = store
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, vec!["alice", "root"]);

    // Login failures count up and carry the throttle; a success clears them.
    for n in 1..=3 {
        store
            .commit(vec![write(
                Change::LoginFailed {
                    username: "alice".into(),
                    throttled_until: at(5_000 + n),
                },
                "auth.password.login",
            )])
            .await
            .unwrap();
    }
    let throttle = store.throttle("alice").await.unwrap().unwrap();
    assert_eq!(
        (throttle.n_failures, throttle.throttled_until),
        (3, at(5_003))
    );
    assert_eq!(store.throttle("mallory").await.unwrap(), None);

    let alice_principal = Principal::User {
        id: alice.id.clone(),
        name: "alice".into(),
        groups: alice.groups.clone(),
    };
    let login = |step: i64, hash: u8| Change::LoginSucceeded {
        user_id: alice.id.clone(),
        username: "alice".into(),
        totp_step: step,
        session: session(&format!("s{hash}"), alice_principal.clone(), hash, 9_000),
    };
    let outcomes = store
        .commit(vec![
            write(login(100, 1), "auth.password.login"),
            write(login(100, 2), "auth.password.login"),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], WriteOutcome::Applied { .. }));
    // The same TOTP step twice: the second is refused and made no session.
    assert!(
        matches!(&outcomes[1], WriteOutcome::Conflict { reason, .. } if reason.contains("TOTP"))
    );
    assert!(store.session_by_hash(&[2; 32]).await.unwrap().is_none());
    assert_eq!(store.throttle("alice").await.unwrap(), None);
    assert_eq!(
        store
            .user_by_name("alice")
            .await
            .unwrap()
            .unwrap()
            .totp_last_step,
        Some(100)
    );

    let found = store.session_by_hash(&[1; 32]).await.unwrap().unwrap();
    assert_eq!(found.principal, alice_principal);
    assert_eq!(found.expires_at, at(9_000));
    assert_eq!(found.revoked_at, None);

    step_up_story(store, &alice).await;

    // Workload sessions (they live as long as the binding they came through); revocation once.
    let workload = Principal::Workload {
        role: "builder".into(),
        name: "repo:acme/app".into(),
    };
    store
        .commit(vec![write(
            Change::CreateSession {
                session: session("w1", workload.clone(), 3, 2_000),
            },
            "auth.jwt.login",
        )])
        .await
        .unwrap();
    assert!(
        store.session_by_hash(&[3; 32]).await.unwrap().is_none(),
        "a workload session without its binding"
    );
    store
        .commit(vec![write(
            Change::PutJwtRole {
                name: "builder".into(),
                config: serde_json::json!({"issuer": "ci"}),
            },
            "auth.jwt.role.put",
        )])
        .await
        .unwrap();
    assert_eq!(
        store
            .session_by_hash(&[3; 32])
            .await
            .unwrap()
            .unwrap()
            .principal,
        workload
    );
    let revoke = || Change::RevokeSession {
        id: "w1".into(),
        at: at(1_500),
    };
    let outcomes = store
        .commit(vec![
            write(revoke(), "auth.token.revoke"),
            write(revoke(), "auth.token.revoke"),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], WriteOutcome::Applied { .. }));
    assert!(matches!(outcomes[1], WriteOutcome::Conflict { .. }));
    assert_eq!(
        store
            .session_by_hash(&[3; 32])
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(at(1_500))
    );

    // Purge drops expired sessions only.
    assert_eq!(store.purge_sessions(at(3_000)).await.unwrap(), 1);
    assert!(store.session_by_hash(&[3; 32]).await.unwrap().is_none());
    assert!(store.session_by_hash(&[1; 32]).await.unwrap().is_some());

    // JWT config upserts.
    let config = serde_json::json!({"issuer": "https://ci.example", "audiences": ["mayfly"]});
    store
        .commit(vec![write(
            Change::PutJwtIssuer {
                name: "ci".into(),
                config: config.clone(),
            },
            "auth.jwt.issuer.put",
        )])
        .await
        .unwrap();
    let config2 = serde_json::json!({"issuer": "https://ci2.example"});
    store
        .commit(vec![
            write(
                Change::PutJwtIssuer {
                    name: "ci".into(),
                    config: config2.clone(),
                },
                "auth.jwt.issuer.put",
            ),
            write(
                Change::PutJwtRole {
                    name: "deploy".into(),
                    config: config.clone(),
                },
                "auth.jwt.role.put",
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.jwt_issuer("ci").await.unwrap().unwrap().config,
        config2
    );
    assert_eq!(
        store.jwt_role("deploy").await.unwrap().unwrap().config,
        config
    );
    assert!(store.jwt_role("ci").await.unwrap().is_none());

    // Secrets replace.
    store
        .commit(vec![write(
            Change::PutSecret {
                path: "p".into(),
                blob: vec![1],
                at: at(1),
            },
            "secret.put",
        )])
        .await
        .unwrap();
    store
        .commit(vec![write(
            Change::PutSecret {
                path: "p".into(),
                blob: vec![2],
                at: at(2),
            },
            "secret.put",
        )])
        .await
        .unwrap();
    assert_eq!(store.secret("p").await.unwrap(), Some(vec![2]));

    // Sink cursors.
    assert_eq!(store.sink_cursor("file").await.unwrap(), 0);
    store.set_sink_cursor("file", 12).await.unwrap();
    store.set_sink_cursor("file", 13).await.unwrap();
    assert_eq!(store.sink_cursor("file").await.unwrap(), 13);

    // The audit log: one unbroken chain, conflicts recorded as refused.
    let head = verify_chain(store).await;
    assert!(head >= 20, "head {head}");
    let second = store.audit_events(1, 1).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&second[0].body).unwrap();
    assert_eq!(body["seq"], 2);
    assert_eq!(body["outcome"], "refused");
    assert_eq!(
        body["details"]["conflict"],
        "the broker is already initialized"
    );
    assert_eq!(store.last_checkpoint().await.unwrap(), None);

    let checkpoint = AuditDraft::new(at(5), mayfly_core::audit::CHECKPOINT_KIND, Outcome::Ok);
    let outcomes = store
        .commit(vec![Write {
            change: None,
            event: checkpoint,
        }])
        .await
        .unwrap();
    let WriteOutcome::Applied { seq } = outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(store.last_checkpoint().await.unwrap().unwrap().seq, seq);
}

pub async fn concurrent_commits(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for task in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let writes = (0..4)
                    .map(|j| Write {
                        change: None,
                        event: AuditDraft::new(at(i), "test.event", Outcome::Ok)
                            .detail("n", task * 1000 + i * 10 + j),
                    })
                    .collect();
                store.commit(writes).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(verify_chain(store.as_ref()).await, 8 * 25 * 4);
}

pub async fn two_nodes_one_chain(first: Arc<dyn Store>, second: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for (n, store) in [first.clone(), second.clone(), first.clone(), second.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let writes = (0..3)
                    .map(|j| Write {
                        change: None,
                        event: AuditDraft::new(at(i), "test.event", Outcome::Ok)
                            .detail("n", n as i64 * 1000 + i * 10 + j),
                    })
                    .collect();
                store.commit(writes).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(verify_chain(first.as_ref()).await, 4 * 40 * 3);
    assert_eq!(verify_chain(second.as_ref()).await, 4 * 40 * 3);
}
