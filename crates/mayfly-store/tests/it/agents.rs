//! Migration 0015's story, on both backends: act chains on requests and grants (and the grants an
//! agent holds or acted in found by `Principals::Acting`, `LIKE`'s wildcards escaped), agents'
//! sessions and the kill switch, and approvals of single tool calls (one pending per key, single
//! use, expiry, refused by the switch).

use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::grant::{GrantState, RequestState};
use mayfly_core::{Principal, Timestamp};
use mayfly_store::{
    CallApprovalRecord, CallApprovalState, Change, ExchangedTokenRecord, GrantFilter, Principals,
    SessionRecord, Store, Write, WriteOutcome,
};

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

async fn commit(store: &dyn Store, change: Change) -> WriteOutcome {
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

fn call(id: &str, key_hash: &str, subject: &str, actors: &[&str]) -> CallApprovalRecord {
    CallApprovalRecord {
        id: id.into(),
        key_hash: key_hash.into(),
        tool: "run_query".into(),
        args_sha256: "ab".repeat(32),
        subject: subject.into(),
        actors: actors.iter().map(|a| (*a).to_owned()).collect(),
        summary: r#"{"sql":"DELETE FROM t"}"#.into(),
        policies: vec!["p1".into()],
        state: CallApprovalState::Pending,
        created_at: at(1_000),
        expires_at: at(601_000),
        answered_by: None,
        answered_at: None,
        usable_until: None,
        used_at: None,
    }
}

pub async fn run(store: &dyn Store) {
    // Act chains on a request and its grant.
    let mut request = super::access::request("ar1", RequestState::Allowed, 0);
    request.actors = vec!["agent:c_aude".into(), "user:bob".into()];
    assert!(applied(
        &commit(
            store,
            Change::CreateRequest {
                request: request.clone()
            }
        )
        .await
    ));
    assert_eq!(
        store.request("ar1").await.unwrap().unwrap().actors,
        request.actors
    );
    let mut grant = super::access::grant("ag1", "ar1", 600_000);
    grant.actors = request.actors.clone();
    assert!(applied(
        &commit(
            store,
            Change::RecordIntent {
                grant,
                secret: ("grants/ag1/secret".into(), vec![1, 2, 3]),
                issuer: None,
            }
        )
        .await
    ));
    let grant = store.grant("ag1").await.unwrap().unwrap();
    assert_eq!(grant.actors, request.actors);
    assert_eq!(grant.state, GrantState::Issuing);
    let acting = |key: &'static str| async move {
        store
            .grants_after(GrantFilter::Live, Principals::Acting(key), "", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(acting("agent:c_aude").await, ["ag1"]);
    assert!(acting("user:bob").await.contains(&"ag1".to_owned()));
    assert!(
        acting("user:alice").await.contains(&"ag1".to_owned()),
        "the principal itself"
    );
    // `_` and `%` are no wildcards, and a prefix is not the key.
    assert!(acting("agent:cXaude").await.is_empty());
    assert!(acting("agent:c%").await.is_empty());
    assert!(acting("agent:c_aud").await.is_empty());

    // An agent's session lasts while its JWT role does and until the switch.
    assert!(applied(
        &commit(
            store,
            Change::PutJwtRole {
                name: "claude".into(),
                config: serde_json::json!({"agent": true}),
            }
        )
        .await
    ));
    let session = SessionRecord {
        id: "as1".into(),
        token_hash: vec![0xa5; 32],
        principal: Principal::Agent {
            name: "claude".into(),
        },
        created_at: at(1_000),
        expires_at: at(900_000),
        revoked_at: None,
        factor_at: None,
    };
    assert!(applied(
        &commit(
            store,
            Change::CreateSession {
                session: session.clone()
            }
        )
        .await
    ));
    let read = store.session_by_hash(&[0xa5; 32]).await.unwrap().unwrap();
    assert_eq!(read.principal, session.principal);
    assert_eq!(
        store.disabled_agents(&["claude"], None).await.unwrap(),
        Vec::<String>::new()
    );

    // Call approvals: one pending per key.
    assert!(applied(
        &commit(
            store,
            Change::CreateCallApproval {
                approval: call("c1", "k1", "user:alice", &["agent:claude"])
            }
        )
        .await
    ));
    let second = commit(
        store,
        Change::CreateCallApproval {
            approval: call("c2", "k1", "user:alice", &["agent:claude"]),
        },
    )
    .await;
    assert!(!applied(&second), "{second:?}");
    assert!(applied(
        &commit(
            store,
            Change::CreateCallApproval {
                approval: call("c3", "k3", "user:bob", &["agent:claude", "user:carol"])
            }
        )
        .await
    ));
    assert!(applied(
        &commit(
            store,
            Change::CreateCallApproval {
                approval: call("c4", "k4", "user:bob", &["agent:cursor"])
            }
        )
        .await
    ));
    assert_eq!(
        store
            .n_pending_call_approvals("user:bob", at(2_000))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .n_pending_call_approvals("user:bob", at(601_000))
            .await
            .unwrap(),
        0
    );
    // Answered once; used once, only while usable.
    let answer = |id: &str, at_ms: i64| Change::AnswerCallApproval {
        id: id.into(),
        approve: true,
        by: "user:admin".into(),
        at: at(at_ms),
        usable_until: at(at_ms + 300_000),
    };
    assert!(applied(&commit(store, answer("c1", 2_000)).await));
    assert!(!applied(&commit(store, answer("c1", 2_000)).await));
    assert!(
        !applied(&commit(store, answer("c4", 601_000)).await),
        "expired"
    );
    let use_at = |id: &str, at_ms: i64| Change::UseCallApproval {
        id: id.into(),
        at: at(at_ms),
    };
    assert!(
        !applied(&commit(store, use_at("c1", 302_000)).await),
        "no longer usable"
    );
    assert!(applied(&commit(store, use_at("c1", 3_000)).await));
    assert!(
        !applied(&commit(store, use_at("c1", 3_000)).await),
        "single use"
    );
    let used = store.call_approval("c1").await.unwrap().unwrap();
    assert_eq!(used.state, CallApprovalState::Used);
    assert_eq!(used.answered_by.as_deref(), Some("user:admin"));
    assert_eq!(used.actors, ["agent:claude"]);
    // Now a new one of that key may be made; the newest comes first.
    assert!(applied(
        &commit(
            store,
            Change::CreateCallApproval {
                approval: CallApprovalRecord {
                    created_at: at(4_000),
                    ..call("c5", "k1", "user:alice", &["agent:claude"])
                }
            }
        )
        .await
    ));
    let of_key: Vec<String> = store
        .call_approvals_of_key("k1", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(of_key, ["c5", "c1"]);
    let expire = |id: &str, at_ms: i64| Change::ExpireCallApproval {
        id: id.into(),
        at: at(at_ms),
    };
    assert!(
        !applied(&commit(store, expire("c4", 5_000)).await),
        "not yet"
    );
    assert!(applied(&commit(store, expire("c4", 601_000)).await));

    // The kill switch: sessions revoked, pending calls through it refused, new sessions and
    // tokens naming it refused.
    let switch = Change::DisableAgent {
        name: "claude".into(),
        by: "user:admin".into(),
        at: at(10_000),
    };
    assert!(applied(&commit(store, switch.clone()).await));
    assert!(!applied(&commit(store, switch).await), "disabled already");
    let read = store.session_by_hash(&[0xa5; 32]).await.unwrap().unwrap();
    assert_eq!(read.revoked_at, Some(at(10_000)));
    for id in ["c3", "c5"] {
        let refused = store.call_approval(id).await.unwrap().unwrap();
        assert_eq!(refused.state, CallApprovalState::Refused, "{id}");
        assert_eq!(refused.answered_by.as_deref(), Some("user:admin"));
    }
    assert_eq!(
        store
            .disabled_agents(&["claude", "cursor"], None)
            .await
            .unwrap(),
        ["claude"]
    );
    let again = commit(
        store,
        Change::CreateSession {
            session: SessionRecord {
                id: "as2".into(),
                token_hash: vec![0xa6; 32],
                ..session.clone()
            },
        },
    )
    .await;
    assert!(!applied(&again), "{again:?}");
    let token = |jti: &str| ExchangedTokenRecord {
        jti: jti.into(),
        session_id: "as1".into(),
        issued_at: at(11_000),
        expires_at: at(20_000),
    };
    let refused = commit(
        store,
        Change::RecordExchangedToken {
            token: token("j1"),
            agents: vec!["cursor".into(), "claude".into()],
        },
    )
    .await;
    assert!(!applied(&refused), "{refused:?}");
    assert!(applied(
        &commit(
            store,
            Change::RecordExchangedToken {
                token: token("j2"),
                agents: vec!["cursor".into()],
            }
        )
        .await
    ));
    // Enabled: nothing revived; what was issued before the switch still counts as cut.
    assert!(applied(
        &commit(
            store,
            Change::EnableAgent {
                name: "claude".into()
            }
        )
        .await
    ));
    assert!(
        !applied(
            &commit(
                store,
                Change::EnableAgent {
                    name: "claude".into()
                }
            )
            .await
        ),
        "not disabled"
    );
    assert!(
        store
            .disabled_agents(&["claude"], None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .disabled_agents(&["claude"], Some(at(9_000)))
            .await
            .unwrap(),
        ["claude"]
    );
    assert!(
        store
            .disabled_agents(&["claude"], Some(at(10_001)))
            .await
            .unwrap()
            .is_empty()
    );
    let read = store.session_by_hash(&[0xa5; 32]).await.unwrap().unwrap();
    assert!(read.revoked_at.is_some());
    let agents: Vec<(String, bool)> = store
        .agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.name, a.disabled_at.is_some()))
        .collect();
    assert_eq!(
        agents,
        [("claude".to_owned(), false), ("cursor".to_owned(), false)]
    );
}
