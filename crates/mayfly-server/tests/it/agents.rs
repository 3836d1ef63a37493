//! Agents as principals (issue 22). An agent acting for a user is recorded on the request, on the
//! grant made from it and in their audit events; an agent logs in through an agent JWT role as
//! `agent:NAME`; token exchange names an agent as actor (`actor=agent:NAME`), nests the act chain,
//! keeps `may_act` (a subject token naming who may act for it admits no other actor) and refuses
//! a disabled agent. The kill switch (`POST /v1/agents/NAME/disable`, admins only) revokes the
//! agent's sessions and every grant it holds or acted in, withdraws its open requests, makes its
//! exchanged tokens inactive and refuses its new requests, exchanges and logins at once; enabling
//! it gives nothing back. Hostile input (malformed and too deep chains, bad names, other
//! principals) is refused.

use std::time::Duration;

use mayfly_api::{PolicyText, RoleRequest, TargetRequest};
use mayfly_server::access::NewRequest;
use mayfly_server::auth::Caller;
use mayfly_server::error::BrokerError;
use mayfly_server::origin::Origin;
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

use crate::exchange::{exchange, introspect, verify};
use crate::jwt::{ed25519, ed25519_pem, sign};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SESSION: &str = "urn:mayfly:token-type:session";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ISSUER: &str = "https://agents.example.test";

const POLICY: &str = r#"
@id("dev-readonly")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/readonly");

@id("dev-owner-needs-one")
@approvals("1")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/owner");

@id("agents-readonly")
permit (principal is Agent, action == Action::"request", resource == Role::"pg/readonly");

@id("mcp-through-claude")
permit (principal in Group::"dev", action == Action::"exchange", resource == Audience::"mcp")
when { context has actor && ["agent:claude", "agent:cursor"].contains(context.actor) };

@id("agents-exchange")
permit (principal is Agent, action == Action::"exchange", resource == Audience::"mcp");
"#;

fn origin() -> Origin {
    Origin::internal("agents-test")
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

/// A `pg` target on the machine's PostgreSQL, two roles and the policy.
async fn setup(broker: &TestBroker) -> Caller {
    let admin = caller(broker, broker.admin_token.as_deref().unwrap()).await;
    let b = &broker.broker;
    b.add_target(
        &origin(),
        &admin,
        TargetRequest {
            kind: "postgres".into(),
            name: "pg".into(),
            url: "postgres://127.0.0.1:5432/postgres".into(),
            admin_user: "postgres".into(),
            admin_password: "unused-with-trust".into(),
            rotate_admin_every_seconds: None,
        },
    )
    .await
    .unwrap();
    for name in ["readonly", "owner"] {
        b.add_role(
            &origin(),
            &admin,
            RoleRequest {
                target: "pg".into(),
                name: name.into(),
                max_ttl_seconds: 600,
                creation_sql: "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};".into(),
                revocation_sql: None,
            },
        )
        .await
        .unwrap();
    }
    b.put_policy(
        &origin(),
        &admin,
        PolicyText {
            text: POLICY.into(),
        },
    )
    .await
    .unwrap();
    admin
}

fn ask(role: &str) -> NewRequest {
    NewRequest {
        target: "pg".into(),
        role: role.into(),
        ttl: Duration::from_secs(300),
        reason: "the agent looks at a slow query".into(),
        ticket: String::new(),
        break_glass: false,
    }
}

fn chain(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// Every audit event's body, in order.
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

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[tokio::test]
async fn the_act_chain_is_recorded_and_the_kill_switch_ends_everything_of_the_agent() {
    let broker = TestBroker::ready().await;
    let admin = setup(&broker).await;
    let alice_token = broker.login("alice").await;
    let alice = caller(&broker, &alice_token).await;
    let bob = caller(&broker, &broker.login("bob").await).await;
    let b = &broker.broker;
    let claude = chain(&["agent:claude"]);

    // An agent asks for alice: the request and the grant carry the chain.
    let request = b
        .create_request_as(&origin(), alice.principal(), &claude, None, ask("readonly"))
        .await
        .unwrap();
    assert_eq!(request.state, "allowed", "{request:?}");
    assert_eq!(request.principal, "user:alice");
    assert_eq!(request.act, claude);
    let stored = b.store().request(&request.id).await.unwrap().unwrap();
    assert_eq!(stored.actors, claude);
    let credential = b
        .activate(&origin(), alice.principal(), None, &request.id, None)
        .await
        .unwrap();
    let grant = b
        .store()
        .grant(&credential.grant.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grant.actors, claude);
    assert_eq!(grant.principal, "user:alice");
    assert_eq!(credential.grant.act, claude);
    // A request alice makes herself carries none, and an agent's other pending request waits.
    let own = b
        .create_request(&origin(), alice.principal(), None, ask("readonly"))
        .await
        .unwrap();
    let own = b.store().request(&own.id).await.unwrap().unwrap();
    assert!(own.actors.is_empty());
    let pending = b
        .create_request_as(&origin(), alice.principal(), &claude, None, ask("owner"))
        .await
        .unwrap();
    assert_eq!(pending.state, "pending");
    // Another agent, through claude, for bob: a chain of two.
    let nested = chain(&["agent:cursor", "agent:claude"]);
    let bobs = b
        .create_request_as(&origin(), bob.principal(), &nested, None, ask("readonly"))
        .await
        .unwrap();
    let bobs_grant = b
        .activate(&origin(), bob.principal(), None, &bobs.id, None)
        .await
        .unwrap();
    let events = bodies(&broker).await;
    let asked: Vec<&Value> = of_kind(&events, "access.request")
        .into_iter()
        .filter(|e| e["details"]["request_id"] == request.id.as_str())
        .collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["details"]["act"], json!(["agent:claude"]));
    assert_eq!(asked[0]["actor"], "user:alice");
    let issued = of_kind(&events, "grant.issue");
    assert!(
        issued
            .iter()
            .any(|e| e["details"]["act"] == json!(["agent:cursor", "agent:claude"])),
        "{issued:?}"
    );

    // Hostile chains.
    for bad in [
        chain(&["agent:"]),
        chain(&["root"]),
        chain(&["agent:a\"b"]),
        vec!["agent:x".to_owned(); 9],
    ] {
        let refused = b
            .create_request_as(&origin(), alice.principal(), &bad, None, ask("readonly"))
            .await;
        assert!(
            matches!(refused, Err(BrokerError::BadRequest(_))),
            "{bad:?}: {refused:?}"
        );
    }

    // The kill switch: admins only, and a name checked.
    let refused = b
        .disable_agent(&origin(), alice.principal(), "claude")
        .await;
    assert!(
        matches!(refused, Err(BrokerError::Forbidden(_))),
        "{refused:?}"
    );
    let refused = b
        .disable_agent(&origin(), admin.principal(), "Claude; DROP")
        .await;
    assert!(
        matches!(refused, Err(BrokerError::BadRequest(_))),
        "{refused:?}"
    );
    assert_eq!(
        b.disabled_agent(&["user:alice", "agent:claude"])
            .await
            .unwrap(),
        None
    );
    let done = b
        .disable_agent(&origin(), admin.principal(), "claude")
        .await
        .unwrap();
    // alice's grant (claude acted) and bob's (claude in the chain, behind cursor).
    assert_eq!(done.grants_revoked, 2, "{done:?}");
    assert_eq!(done.requests_withdrawn, 1, "{done:?}");
    assert_eq!(
        b.disabled_agent(&["user:alice", "agent:cursor", "agent:claude"])
            .await
            .unwrap()
            .as_deref(),
        Some("agent:claude")
    );
    for id in [&credential.grant.id, &bobs_grant.grant.id] {
        let grant = b.store().grant(id).await.unwrap().unwrap();
        assert_ne!(grant.state.as_str(), "active", "{grant:?}");
        assert_eq!(
            grant.revoke_reason.as_deref(),
            Some("the agent `claude` was disabled")
        );
    }
    let withdrawn = b.store().request(&pending.id).await.unwrap().unwrap();
    assert_eq!(withdrawn.state.as_str(), "denied");
    // alice's own request is untouched.
    let own = b.store().request(&own.id).await.unwrap().unwrap();
    assert_eq!(own.state.as_str(), "allowed");
    let again = b
        .disable_agent(&origin(), admin.principal(), "claude")
        .await;
    assert!(matches!(again, Err(BrokerError::Conflict(_))), "{again:?}");
    // Nothing new through claude: a request, an activation of what it asked for earlier.
    let refused = b
        .create_request_as(&origin(), alice.principal(), &claude, None, ask("readonly"))
        .await;
    assert!(
        matches!(refused, Err(BrokerError::Forbidden(_))),
        "{refused:?}"
    );
    let refused = b
        .create_request_as(&origin(), bob.principal(), &nested, None, ask("readonly"))
        .await;
    assert!(
        matches!(refused, Err(BrokerError::Forbidden(_))),
        "{refused:?}"
    );
    // Audited with who did it.
    let events = bodies(&broker).await;
    let disabled = of_kind(&events, "agent.disabled");
    // The second switch is in the log too, refused.
    assert_eq!(disabled.len(), 2);
    assert_eq!(disabled[1]["outcome"], "refused");
    assert_eq!(disabled[0]["actor"], "user:admin");
    assert_eq!(disabled[0]["subject"], "agent:claude");

    // Enabled again: asked again from nothing.
    let refused = b.enable_agent(&origin(), bob.principal(), "claude").await;
    assert!(
        matches!(refused, Err(BrokerError::Forbidden(_))),
        "{refused:?}"
    );
    b.enable_agent(&origin(), admin.principal(), "claude")
        .await
        .unwrap();
    let again = b.enable_agent(&origin(), admin.principal(), "claude").await;
    assert!(matches!(again, Err(BrokerError::Conflict(_))), "{again:?}");
    let grant = b
        .store()
        .grant(&credential.grant.id)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(grant.state.as_str(), "active");
    let fresh = b
        .create_request_as(&origin(), alice.principal(), &claude, None, ask("readonly"))
        .await
        .unwrap();
    assert_eq!(fresh.state, "allowed");

    // The listing (admins only) knows claude and cursor.
    let agents = broker
        .expect(200, "GET", "/v1/agents", Some(&broker.admin()), None)
        .await;
    let names: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"claude"), "{agents}");
    broker
        .expect(403, "GET", "/v1/agents", Some(&alice_token), None)
        .await;
    broker
        .expect(
            403,
            "POST",
            "/v1/agents/claude/disable",
            Some(&alice_token),
            None,
        )
        .await;
    broker
        .expect(
            400,
            "POST",
            "/v1/agents/Bad%20Name/disable",
            Some(&broker.admin()),
            None,
        )
        .await;
}

async fn exchange_for(
    broker: &TestBroker,
    subject: &str,
    kind: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut fields = vec![
        ("grant_type", GRANT),
        ("subject_token", subject),
        ("subject_token_type", kind),
        ("audience", "mcp"),
    ];
    fields.extend_from_slice(extra);
    exchange(broker, &fields).await
}

#[tokio::test]
async fn token_exchange_names_an_agent_keeps_may_act_and_refuses_a_disabled_agent() {
    let broker = TestBroker::ready().await;
    broker.set_policy(POLICY).await;
    let admin = broker.admin();
    let alice = broker.login("alice").await;

    // No actor: the policy wants one.
    let (status, body) = exchange_for(&broker, &alice, SESSION, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
    // Hostile actors.
    for bad in ["claude", "user:bob", "agent:", "agent:Claude", "agent:a b"] {
        let (status, body) = exchange_for(&broker, &alice, SESSION, &[("actor", bad)]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{bad}: {body}"
        );
    }
    let (status, body) = exchange_for(
        &broker,
        &alice,
        SESSION,
        &[
            ("actor", "agent:claude"),
            ("actor_token", &alice),
            ("actor_token_type", SESSION),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    // An agent the policy does not name.
    let (status, body) =
        exchange_for(&broker, &alice, SESSION, &[("actor", "agent:mallory")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );

    // alice lets claude act for her, and only claude.
    let (status, body) = exchange_for(
        &broker,
        &alice,
        SESSION,
        &[("actor", "agent:claude"), ("may_act", "agent:claude")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let claims = verify(&broker, &token, "mcp").await.expect("verifies");
    assert_eq!(claims["sub"], "user:alice");
    assert_eq!(claims["act"], json!({"sub": "agent:claude"}));
    assert_eq!(claims["may_act"], json!({"sub": "agent:claude"}));
    let answer = introspect(&broker, &admin, &token).await;
    assert_eq!(answer["active"], true, "{answer}");
    // Exchanged again with cursor acting: `may_act` does not allow it.
    let (status, body) = exchange_for(&broker, &token, JWT, &[("actor", "agent:cursor")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // With claude again: the chain nests.
    let (status, body) = exchange_for(&broker, &token, JWT, &[("actor", "agent:claude")]).await;
    assert_eq!(status, 200, "{body}");
    let nested = body["access_token"].as_str().unwrap().to_owned();
    let claims = verify(&broker, &nested, "mcp").await.expect("verifies");
    assert_eq!(
        claims["act"],
        json!({"sub": "agent:claude", "act": {"sub": "agent:claude"}})
    );
    assert_eq!(claims["may_act"], json!({"sub": "agent:claude"}));
    // `may_act` cannot be widened.
    let (status, body) = exchange_for(&broker, &token, JWT, &[("may_act", "agent:cursor")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let events = bodies(&broker).await;
    let issued = of_kind(&events, "token.exchanged");
    assert!(
        issued
            .iter()
            .any(|e| e["details"]["act_chain"] == json!(["agent:claude", "agent:claude"])),
        "{issued:?}"
    );

    // The kill switch: claude's tokens are inactive, and no new one is issued.
    broker
        .expect(200, "POST", "/v1/agents/claude/disable", Some(&admin), None)
        .await;
    for token in [&token, &nested] {
        let answer = introspect(&broker, &admin, token).await;
        assert_eq!(answer["active"], false, "{answer}");
    }
    let (status, body) = exchange_for(&broker, &alice, SESSION, &[("actor", "agent:claude")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("disabled"),
        "{body}"
    );
    // Cursor is not claude: it still works.
    let (status, body) = exchange_for(&broker, &alice, SESSION, &[("actor", "agent:cursor")]).await;
    assert_eq!(status, 200, "{body}");
    // Enabled: a new token is issued; those issued before the switch stay dead.
    broker
        .expect(204, "POST", "/v1/agents/claude/enable", Some(&admin), None)
        .await;
    for token in [&token, &nested] {
        let answer = introspect(&broker, &admin, token).await;
        assert_eq!(answer["active"], false, "{answer}");
    }
    broker.clock.advance(Duration::from_millis(5));
    let (status, body) = exchange_for(&broker, &alice, SESSION, &[("actor", "agent:claude")]).await;
    assert_eq!(status, 200, "{body}");
    let fresh = body["access_token"].as_str().unwrap().to_owned();
    let answer = introspect(&broker, &admin, &fresh).await;
    assert_eq!(answer["active"], true, "{answer}");
}

#[tokio::test]
async fn an_agent_logs_in_through_its_jwt_role_until_it_is_disabled() {
    let broker = TestBroker::ready().await;
    broker.set_policy(POLICY).await;
    let admin = broker.admin();
    let signer = ed25519();
    broker
        .expect(
            204,
            "PUT",
            "/v1/auth/jwt/issuers/runtime",
            Some(&admin),
            Some(json!({"issuer": ISSUER, "public_keys": [{"kid": "k1", "pem": ed25519_pem(&signer.public)}]})),
        )
        .await;
    broker
        .expect(
            204,
            "PUT",
            "/v1/auth/jwt/roles/claude",
            Some(&admin),
            Some(json!({"issuer": "runtime", "audiences": ["mayfly"], "agent": true})),
        )
        .await;
    let jwt = |instance: &str| {
        let now = broker.clock_secs() as i64;
        sign(
            &signer,
            Some("k1"),
            &json!({"iss": ISSUER, "aud": "mayfly", "sub": instance, "iat": now, "exp": now + 300}),
        )
    };
    let login = |jwt: String| {
        let broker = &broker;
        async move {
            broker
                .call(
                    "POST",
                    "/v1/auth/jwt/login",
                    None,
                    Some(json!({"role": "claude", "jwt": jwt})),
                )
                .await
        }
    };
    let (status, body) = login(jwt("pod-1")).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let me = broker
        .expect(200, "GET", "/v1/auth/token/lookup-self", Some(&token), None)
        .await;
    assert_eq!(me["principal"]["kind"], "agent", "{me}");
    assert_eq!(me["principal"]["name"], "claude", "{me}");
    // Two instances are one agent.
    let (status, body) = login(jwt("pod-2")).await;
    assert_eq!(status, 200, "{body}");
    let second = body["token"].as_str().unwrap().to_owned();
    // Its own platform JWT exchanged as subject: the token's subject is the agent.
    let (status, body) = exchange_for(&broker, &jwt("pod-3"), JWT, &[]).await;
    assert_eq!(status, 200, "{body}");
    let exchanged = body["access_token"].as_str().unwrap().to_owned();
    let claims = verify(&broker, &exchanged, "mcp").await.expect("verifies");
    assert_eq!(claims["sub"], "agent:claude");
    // An agent is no admin.
    let (status, body) = broker
        .call("POST", "/v1/agents/claude/disable", Some(&token), None)
        .await;
    assert_eq!(status, 403, "{body}");

    broker
        .expect(200, "POST", "/v1/agents/claude/disable", Some(&admin), None)
        .await;
    for token in [&token, &second] {
        broker
            .expect(401, "GET", "/v1/auth/token/lookup-self", Some(token), None)
            .await;
    }
    let answer = introspect(&broker, &admin, &exchanged).await;
    assert_eq!(answer["active"], false, "{answer}");
    let (status, body) = login(jwt("pod-1")).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = exchange_for(&broker, &jwt("pod-4"), JWT, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let events = bodies(&broker).await;
    let logins = of_kind(&events, "auth.jwt.login");
    assert!(
        logins
            .iter()
            .any(|e| e["outcome"] == "refused" && e["actor"] == "agent:claude"),
        "{logins:?}"
    );
    assert!(
        logins.iter().any(|e| e["details"]["instance"] == "pod-2"),
        "{logins:?}"
    );

    broker
        .expect(204, "POST", "/v1/agents/claude/enable", Some(&admin), None)
        .await;
    // The old sessions stay revoked; a new login works.
    broker
        .expect(401, "GET", "/v1/auth/token/lookup-self", Some(&token), None)
        .await;
    let (status, body) = login(jwt("pod-1")).await;
    assert_eq!(status, 200, "{body}");
    let listed = broker
        .expect(200, "GET", "/v1/agents", Some(&admin), None)
        .await;
    let claude = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "claude")
        .unwrap();
    assert_eq!(claude["jwt_role"], true, "{listed}");
    assert_eq!(claude["disabled"], false, "{listed}");
}
