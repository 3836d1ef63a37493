//! Approvals bound to one exact tool call (issue 22), through the broker's operations as the MCP
//! front end calls them: the first call waits (one pending approval per call, its URL on the
//! console), a person who is neither the subject nor in the act chain approves it behind step-up,
//! the call then proceeds exactly once (also when two identical calls race), a replay or a call
//! with other arguments, for another subject or through another agent waits for a new approval; a
//! refusal answers that call refused; pending and unused approvals expire; a subject cannot flood
//! the approvers; hostile keys and summaries are refused; the audit log holds the digest of the
//! arguments and never the summary. Also answered on the console at `/ui/calls/{id}`.

use std::time::Duration;

use mayfly_core::policy::Tool;
use mayfly_server::access::{CallGate, CallKey};
use mayfly_server::auth::Caller;
use mayfly_server::error::BrokerError;
use mayfly_server::origin::Origin;
use mayfly_testkit::TestBroker;
use serde_json::Value;

fn origin() -> Origin {
    Origin::internal("calls-test")
}

async fn caller(broker: &TestBroker, token: &str) -> Caller {
    let hash = mayfly_crypto::token::hash_token(token);
    let session = broker
        .broker
        .store()
        .session_by_hash(&hash)
        .await
        .unwrap()
        .expect("the session exists");
    Caller { session }
}

fn digest(text: &str) -> String {
    hex::encode(mayfly_crypto::sha256(text.as_bytes()))
}

const DELETE: &str = r#"{"grant_id":"g1","max_rows":10,"sql":"DELETE FROM payments WHERE id = 7"}"#;

fn key(args: &str, subject: &str, actors: &[&str]) -> CallKey {
    CallKey {
        tool: Tool::RunQuery,
        args_sha256: digest(args),
        subject: subject.into(),
        actors: actors.iter().map(|a| (*a).to_owned()).collect(),
    }
}

fn summary(args: &str) -> String {
    format!(r#"{{"tool":"run_query","arguments":{args}}}"#)
}

async fn gate(broker: &TestBroker, key: &CallKey) -> CallGate {
    broker
        .broker
        .gate_call(
            &origin(),
            key,
            &summary(DELETE),
            &["writes-need-a-person".into()],
        )
        .await
        .unwrap()
}

fn waiting(gate: &CallGate) -> String {
    match gate {
        CallGate::Waiting {
            approval_id, url, ..
        } => {
            assert!(url.ends_with(&format!("/ui/calls/{approval_id}")), "{url}");
            approval_id.clone()
        }
        other => panic!("expected to wait, got {other:?}"),
    }
}

async fn bodies(broker: &TestBroker) -> Vec<Value> {
    broker
        .broker
        .store()
        .stored_audit_events(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| serde_json::from_str(&e.body).unwrap())
        .collect()
}

#[tokio::test]
async fn an_approval_serves_exactly_one_identical_call() {
    let broker = TestBroker::ready().await;
    let b = &broker.broker;
    let admin = caller(&broker, &broker.admin()).await;
    let alice = caller(&broker, &broker.login("alice").await).await;
    let bob = caller(&broker, &broker.login("bob").await).await;
    let the_call = key(DELETE, "user:alice", &["agent:claude"]);

    let first = gate(&broker, &the_call).await;
    let id = waiting(&first);
    // Asked again before anyone answers: the same approval.
    assert_eq!(waiting(&gate(&broker, &the_call).await), id);
    // Who may not answer: the subject, a user not in the approvers' group, an unknown id.
    let refused = b
        .answer_call(&origin(), alice.principal(), Some(b.now()), &id, true)
        .await;
    assert!(
        matches!(refused, Err(BrokerError::Forbidden(_))),
        "{refused:?}"
    );
    let refused = b
        .answer_call(&origin(), bob.principal(), Some(b.now()), &id, true)
        .await;
    assert!(
        matches!(refused, Err(BrokerError::NotFound(_))),
        "{refused:?}"
    );
    let refused = b
        .answer_call(&origin(), admin.principal(), Some(b.now()), "nope", true)
        .await;
    assert!(
        matches!(refused, Err(BrokerError::NotFound(_))),
        "{refused:?}"
    );
    // An admin whose second factor is stale must step up first.
    broker.clock.advance(Duration::from_secs(601));
    let refused = b
        .answer_call(
            &origin(),
            admin.principal(),
            admin.session.factor_at,
            &id,
            true,
        )
        .await;
    assert!(
        matches!(refused, Err(BrokerError::StepUpRequired { .. })),
        "{refused:?}"
    );
    // The pending approval expired meanwhile (10 minutes): a new one is asked for.
    let id = waiting(&gate(&broker, &the_call).await);
    b.answer_call(&origin(), admin.principal(), Some(b.now()), &id, true)
        .await
        .unwrap();
    let again = b
        .answer_call(&origin(), admin.principal(), Some(b.now()), &id, false)
        .await;
    assert!(matches!(again, Err(BrokerError::Conflict(_))), "{again:?}");

    // Other arguments, another subject, another chain: each waits for its own approval.
    let other_args = key(
        r#"{"grant_id":"g1","max_rows":10,"sql":"DELETE FROM payments"}"#,
        "user:alice",
        &["agent:claude"],
    );
    let other_subject = key(DELETE, "user:bob", &["agent:claude"]);
    let other_chain = key(DELETE, "user:alice", &["agent:cursor"]);
    let no_chain = key(DELETE, "user:alice", &[]);
    let mut others = Vec::new();
    for other in [&other_args, &other_subject, &other_chain, &no_chain] {
        let other_id = waiting(&gate(&broker, other).await);
        assert_ne!(other_id, id);
        others.push(other_id);
    }
    // The approved call proceeds once; a replay waits for a new approval.
    match gate(&broker, &the_call).await {
        CallGate::Proceed {
            approval_id,
            approver,
        } => {
            assert_eq!(approval_id, id);
            assert_eq!(approver, "user:admin");
        }
        other => panic!("expected to proceed, got {other:?}"),
    }
    let replay = waiting(&gate(&broker, &the_call).await);
    assert_ne!(replay, id);

    // A refusal answers that call refused, and only that one.
    b.answer_call(
        &origin(),
        admin.principal(),
        Some(b.now()),
        &others[0],
        false,
    )
    .await
    .unwrap();
    match gate(&broker, &other_args).await {
        CallGate::Refused {
            approval_id,
            reason,
        } => {
            assert_eq!(approval_id, others[0]);
            assert!(reason.contains("user:admin"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Someone in the act chain cannot answer: bob's call through alice.
    let through_admin = key(DELETE, "user:bob", &["user:admin"]);
    let through_id = waiting(&gate(&broker, &through_admin).await);
    let refused = b
        .answer_call(
            &origin(),
            admin.principal(),
            Some(b.now()),
            &through_id,
            true,
        )
        .await;
    assert!(
        matches!(refused, Err(BrokerError::Forbidden(_))),
        "{refused:?}"
    );

    // An approval not used within 5 minutes expires.
    b.answer_call(&origin(), admin.principal(), Some(b.now()), &replay, true)
        .await
        .unwrap();
    broker.clock.advance(Duration::from_secs(301));
    let after = waiting(&gate(&broker, &the_call).await);
    assert_ne!(after, replay);

    let events = bodies(&broker).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in [
        "call.approval.requested",
        "call.approval.approved",
        "call.approval.refused",
        "call.approval.used",
        "call.approval.expired",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let used: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "call.approval.used")
        .collect();
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0]["details"]["args_sha256"], digest(DELETE));
    assert_eq!(
        used[0]["details"]["act"],
        serde_json::json!(["agent:claude"])
    );
    assert_eq!(used[0]["subject"], "user:alice");
    // The arguments never reach the audit log in clear.
    let log: String = events.iter().map(Value::to_string).collect();
    assert!(
        !log.contains("DELETE FROM payments"),
        "arguments in the log"
    );
}

#[tokio::test]
async fn two_identical_calls_at_once_use_one_approval_once() {
    let broker = TestBroker::ready().await;
    let b = &broker.broker;
    let admin = caller(&broker, &broker.admin()).await;
    let the_call = key(DELETE, "user:alice", &["agent:claude"]);
    let id = waiting(&gate(&broker, &the_call).await);
    b.answer_call(&origin(), admin.principal(), Some(b.now()), &id, true)
        .await
        .unwrap();
    let calls = (0..8).map(|_| gate(&broker, &the_call));
    let gates = futures_util::future::join_all(calls).await;
    let proceeded = gates
        .iter()
        .filter(|g| matches!(g, CallGate::Proceed { .. }))
        .count();
    assert_eq!(proceeded, 1, "{gates:?}");
    // The others share one new pending approval.
    let mut waiting_ids: Vec<String> = gates
        .iter()
        .filter_map(|g| match g {
            CallGate::Waiting { approval_id, .. } => Some(approval_id.clone()),
            _ => None,
        })
        .collect();
    waiting_ids.dedup();
    assert_eq!(waiting_ids.len(), 1, "{gates:?}");
}

#[tokio::test]
async fn hostile_keys_summaries_and_floods_are_refused() {
    let broker = TestBroker::ready().await;
    let b = &broker.broker;
    let good = key(DELETE, "user:alice", &["agent:claude"]);
    let cases: Vec<(CallKey, String)> = vec![
        (
            CallKey {
                args_sha256: "ABC".into(),
                ..good.clone()
            },
            summary(DELETE),
        ),
        (
            CallKey {
                args_sha256: digest(DELETE).to_uppercase(),
                ..good.clone()
            },
            summary(DELETE),
        ),
        (
            CallKey {
                subject: "alice".into(),
                ..good.clone()
            },
            summary(DELETE),
        ),
        (
            CallKey {
                actors: vec!["agent:claude".into(); 9],
                ..good.clone()
            },
            summary(DELETE),
        ),
        (
            CallKey {
                actors: vec!["agent:\u{0}".into()],
                ..good.clone()
            },
            summary(DELETE),
        ),
        (good.clone(), "x".repeat(8 * 1024 + 1)),
    ];
    for (bad, text) in cases {
        let refused = b.gate_call(&origin(), &bad, &text, &[]).await;
        assert!(
            matches!(refused, Err(BrokerError::BadRequest(_))),
            "{bad:?}: {refused:?}"
        );
    }
    // 20 calls of one subject wait at once; the 21st is refused until some are answered.
    for n in 0..20 {
        let args = format!(r#"{{"n":{n}}}"#);
        waiting(&gate(&broker, &key(&args, "user:alice", &["agent:claude"])).await);
    }
    let flood = b
        .gate_call(
            &origin(),
            &key(r#"{"n":20}"#, "user:alice", &["agent:claude"]),
            "{}",
            &[],
        )
        .await;
    assert!(
        matches!(flood, Err(BrokerError::RateLimited { .. })),
        "{flood:?}"
    );
    // Another subject is not held up by alice's.
    waiting(&gate(&broker, &key(DELETE, "user:bob", &["agent:claude"])).await);
    // A disabled agent's calls are not gated: they are refused.
    let admin = caller(&broker, &broker.admin()).await;
    let pending = waiting(&gate(&broker, &key(DELETE, "user:bob", &["agent:claude"])).await);
    b.disable_agent(&origin(), admin.principal(), "claude")
        .await
        .unwrap();
    let refused = b.gate_call(&origin(), &good, "{}", &[]).await;
    assert!(
        matches!(refused, Err(BrokerError::Forbidden(_))),
        "{refused:?}"
    );
    // ... and its pending approvals were refused by the switch.
    let approval = b.store().call_approval(&pending).await.unwrap().unwrap();
    assert_eq!(approval.state.as_str(), "refused");
    let late = b
        .answer_call(&origin(), admin.principal(), Some(b.now()), &pending, true)
        .await;
    assert!(matches!(late, Err(BrokerError::Conflict(_))), "{late:?}");
}
