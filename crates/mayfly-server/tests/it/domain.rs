//! The broker's operations called directly, with no HTTP in between: what a console, a chat
//! button or an MCP tool will call. Requests are decided by policy, self-approval and strangers
//! are refused with the domain's own error, a grant is issued on and removed from the real
//! PostgreSQL, users and the seal answer typed errors. The HTTP tests check the same rules as
//! statuses; these check that the rules live below the API.

use std::time::Duration;

use mayfly_api::{CreateUserRequest, PolicyText, RoleRequest, TargetRequest};
use mayfly_server::access::NewRequest;
use mayfly_server::auth::Caller;
use mayfly_server::error::BrokerError;
use mayfly_server::origin::Origin;
use mayfly_testkit::TestBroker;
use sqlx::{ConnectOptions, Connection};

const POLICY: &str = r#"
@id("dev-readonly")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/readonly")
when { context.reason like "INC-*" };

@id("dev-owner-needs-one")
@approvals("1")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/owner");

@id("approvers")
permit (principal, action == Action::"approve", resource in Target::"pg")
when { principal in Group::"dev" };
"#;

fn origin() -> Origin {
    Origin::internal("domain-test")
}

/// The caller behind a session of `name` (a demo user, or `admin`).
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

async fn admin(broker: &TestBroker) -> Caller {
    caller(broker, broker.admin_token.as_deref().unwrap()).await
}

/// A `pg` target on the machine's PostgreSQL, two roles and the policy, all through the
/// broker's operations.
async fn setup(broker: &TestBroker) -> Caller {
    let admin = admin(broker).await;
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

fn ask(role: &str, reason: &str) -> NewRequest {
    NewRequest {
        target: "pg".into(),
        role: role.into(),
        ttl: Duration::from_secs(300),
        reason: reason.into(),
        ticket: String::new(),
        break_glass: false,
    }
}

#[tokio::test]
async fn requests_are_decided_and_approved_by_the_broker_itself() {
    let broker = TestBroker::ready().await;
    setup(&broker).await;
    let alice = caller(&broker, &broker.login("alice").await).await;
    let bob = caller(&broker, &broker.login("bob").await).await;
    let b = &broker.broker;

    let allowed = b
        .create_request(
            &origin(),
            alice.principal(),
            alice.session.factor_at,
            ask("readonly", "INC-1 triage"),
        )
        .await
        .unwrap();
    assert_eq!(allowed.state, "allowed", "{allowed:?}");

    let denied = b
        .create_request(
            &origin(),
            alice.principal(),
            alice.session.factor_at,
            ask("readonly", "just curious"),
        )
        .await
        .unwrap();
    assert_eq!(denied.state, "denied", "{denied:?}");

    let pending = b
        .create_request(
            &origin(),
            alice.principal(),
            alice.session.factor_at,
            ask("owner", "migration"),
        )
        .await
        .unwrap();
    assert_eq!(pending.state, "pending", "{pending:?}");
    match b
        .approve(
            &origin(),
            alice.principal(),
            alice.session.factor_at,
            &pending.id,
            "",
        )
        .await
    {
        Err(BrokerError::Forbidden(message)) => assert!(message.contains("own"), "{message}"),
        other => panic!("self-approval must be forbidden, got {other:?}"),
    }
    let approved = b
        .approve(
            &origin(),
            bob.principal(),
            bob.session.factor_at,
            &pending.id,
            "ok",
        )
        .await
        .unwrap();
    assert_eq!(approved.state, "allowed", "{approved:?}");
    match b
        .approve(
            &origin(),
            bob.principal(),
            bob.session.factor_at,
            &pending.id,
            "",
        )
        .await
    {
        Err(BrokerError::Conflict(_)) => {}
        other => panic!("a decided request cannot be approved again, got {other:?}"),
    }
    // Another principal's request is not theirs to see.
    match b.get_request(&bob, allowed.id.clone()).await {
        Err(BrokerError::NotFound(_)) => {}
        other => panic!("bob must not see alice's allowed request, got {other:?}"),
    }
    broker.stop().await;
}

async fn pg_login(username: &str, password: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(5432)
        .database("postgres")
        .username(username)
        .password(password)
        .connect()
        .await
}

#[tokio::test]
async fn a_grant_is_made_and_removed_on_the_real_target_without_http() {
    let broker = TestBroker::ready().await;
    setup(&broker).await;
    let alice = caller(&broker, &broker.login("alice").await).await;
    let b = &broker.broker;
    let request = b
        .create_request(
            &origin(),
            alice.principal(),
            alice.session.factor_at,
            ask("readonly", "INC-2"),
        )
        .await
        .unwrap();
    let credential = b
        .activate(
            &origin(),
            alice.principal(),
            alice.session.factor_at,
            &request.id,
            None,
        )
        .await
        .unwrap();
    let mut connection = pg_login(&credential.username, &credential.password)
        .await
        .expect("the new login works");
    connection.ping().await.unwrap();
    drop(connection);

    // Activating twice shows nothing twice.
    assert!(
        b.activate(
            &origin(),
            alice.principal(),
            alice.session.factor_at,
            &request.id,
            None
        )
        .await
        .is_err()
    );

    let grant = b
        .store()
        .grant(&credential.grant.id)
        .await
        .unwrap()
        .unwrap();
    b.revoke_now(&origin(), &grant, "test", "done")
        .await
        .unwrap();
    let refused = pg_login(&credential.username, &credential.password).await;
    let error = refused.expect_err("the revoked login must be refused by PostgreSQL");
    assert!(
        error.to_string().contains("does not exist"),
        "expected the role to be gone: {error}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn users_answer_typed_errors() {
    let broker = TestBroker::ready().await;
    let alice = caller(&broker, &broker.login("alice").await).await;
    let admin = admin(&broker).await;
    let b = &broker.broker;

    match b.list_users(&alice).await {
        Err(BrokerError::Forbidden(_)) => {}
        other => panic!("only admins list users, got {other:?}"),
    }
    let users = b.list_users(&admin).await.unwrap();
    assert!(users.iter().any(|u| u.username == "alice"), "{users:?}");

    let weak = mayfly_server::users::create(
        b,
        &origin(),
        "test",
        CreateUserRequest {
            username: "carol".into(),
            password: Some("short".into()),
            groups: vec!["dev".into()],
        },
    )
    .await;
    match weak {
        Err(BrokerError::BadRequest(message)) => {
            assert!(message.contains("password"), "{message}")
        }
        other => panic!("a short password must be refused, got {other:?}"),
    }

    broker.stop().await;
}

#[tokio::test]
async fn the_seal_refuses_bad_shares_and_a_second_init() {
    let broker = TestBroker::uninitialized().await;
    let b = &broker.broker;
    let init = b.initialize(1, 1).await.unwrap();
    match b.unseal_with_share("mayfly-share-1-not-a-share").await {
        Err(BrokerError::BadRequest(_)) => {}
        other => panic!("a malformed share must be refused, got {other:?}"),
    }
    assert!(b.unsealed().await.is_none(), "still sealed");
    let status = b.unseal_with_share(&init.shares[0]).await.unwrap();
    assert!(!status.sealed, "{status:?}");
    match b.initialize(1, 1).await {
        Err(BrokerError::Conflict(message)) => {
            assert!(message.contains("already initialized"), "{message}")
        }
        other => panic!("an initialized broker cannot be initialized again, got {other:?}"),
    }
    broker.stop().await;
}
