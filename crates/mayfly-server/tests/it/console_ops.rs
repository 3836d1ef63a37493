//! The broker operations the web console's pages call (issue 21), without HTTP: logout
//! everywhere, the audit search, overview and export, policy problems at their line, a role's dry
//! run on the real PostgreSQL, and the roles a principal may request. Each runs on the real
//! stores (SQLite, and PostgreSQL where the store's SQL changed).

use std::time::{Duration, Instant};

use mayfly_api::{PolicyText, RoleRequest, TargetRequest};
use mayfly_core::Timestamp;
use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_server::audit::search::{AuditFilter, FULL_EVERY};
use mayfly_server::auth::Caller;
use mayfly_server::error::BrokerError;
use mayfly_server::origin::Origin;
use mayfly_store::Write;
use mayfly_testkit::{Options, TestBroker};

fn origin() -> Origin {
    Origin::internal("console-test")
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

async fn admin(broker: &TestBroker) -> Caller {
    caller(broker, broker.admin_token.as_deref().unwrap()).await
}

/// A second login of the same user needs a TOTP code of a later step.
async fn login_again(broker: &TestBroker, name: &str) -> String {
    broker.clock.advance(Duration::from_secs(31));
    broker.login(name).await
}

async fn lookup_status(broker: &TestBroker, token: &str) -> u16 {
    broker
        .call("GET", "/v1/auth/token/lookup-self", Some(token), None)
        .await
        .0
}

/// Alice has two sessions, bob one; all three were just used (so SQLite keeps them in memory).
/// Logging out everywhere from one of alice's ends both of hers at their very next call and
/// leaves bob's alone.
async fn logout_everywhere_story(broker: &TestBroker) {
    let alice_laptop = broker.login("alice").await;
    let alice_phone = login_again(broker, "alice").await;
    let bob = broker.login("bob").await;
    for token in [&alice_laptop, &alice_phone, &bob] {
        assert_eq!(lookup_status(broker, token).await, 200);
        assert_eq!(lookup_status(broker, token).await, 200);
    }
    let alice = caller(broker, &alice_laptop).await;
    broker
        .broker
        .logout_everywhere(&origin(), &alice)
        .await
        .unwrap();
    assert_eq!(lookup_status(broker, &alice_laptop).await, 401);
    assert_eq!(lookup_status(broker, &alice_phone).await, 401);
    assert_eq!(lookup_status(broker, &bob).await, 200);
    // Nothing is left to revoke: the state moved on.
    match broker.broker.logout_everywhere(&origin(), &alice).await {
        Err(BrokerError::Conflict(_)) => {}
        other => panic!("a second logout everywhere has nothing to revoke, got {other:?}"),
    }
    // The API's route does the same, for the caller's user only.
    let bob_again = login_again(broker, "bob").await;
    broker
        .expect(204, "POST", "/v1/auth/token/revoke-all", Some(&bob), None)
        .await;
    assert_eq!(lookup_status(broker, &bob).await, 401);
    assert_eq!(lookup_status(broker, &bob_again).await, 401);
    broker
        .expect(401, "POST", "/v1/auth/token/revoke-all", Some(&bob), None)
        .await;
    // Audited, with who did it.
    let page = broker
        .broker
        .audit_search(
            &admin(broker).await,
            AuditFilter {
                kind: Some("auth.token.revoke_all".into()),
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    let principals: Vec<_> = page
        .events
        .iter()
        .map(|e| e.principal.clone().unwrap_or_default())
        .collect();
    assert!(principals.contains(&"user:alice".into()), "{principals:?}");
    assert!(principals.contains(&"user:bob".into()), "{principals:?}");
}

#[tokio::test]
async fn logout_everywhere_ends_every_session_of_the_user_at_once() {
    let broker = TestBroker::ready().await;
    logout_everywhere_story(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn logout_everywhere_ends_every_session_of_the_user_at_once_on_postgres() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let broker = TestBroker::start(Options {
        store_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    logout_everywhere_story(&broker).await;
    broker.stop().await;
    db.drop_db().await;
}

/// `n` events of several kinds, principals and targets, appended straight to the store in
/// batches (the chain is the broker's, the events are made up), `apart` milliseconds apart from
/// `start`.
async fn append_events(broker: &TestBroker, n: usize, start: Timestamp) {
    append_spaced(broker, n, start, 1).await;
}

async fn append_spaced(broker: &TestBroker, n: usize, start: Timestamp, apart: i64) {
    let kinds = [
        "access.request",
        "grant.issue",
        "grant.revoked",
        "auth.login",
    ];
    let mut written = 0;
    while written < n {
        let batch: Vec<Write> = (written..(written + 1000).min(n))
            .map(|i| {
                let at = Timestamp::from_unix_ms(start.unix_ms() + i as i64 * apart);
                let mut event = AuditDraft::new(at, kinds[i % kinds.len()], Outcome::Ok)
                    .detail("role", format!("db{}/readonly", i % 10));
                event.actor = Some(format!("user:u{}", i % 100));
                Write {
                    change: None,
                    event,
                }
            })
            .collect();
        written += batch.len();
        broker.broker.store().commit(batch).await.unwrap();
    }
}

fn filter(limit: u32) -> AuditFilter {
    AuditFilter {
        limit,
        ..AuditFilter::default()
    }
}

async fn audit_search_story(broker: &TestBroker) {
    let admin = admin(broker).await;
    let b = &broker.broker;
    let start = Timestamp::from_unix_ms(1_900_000_000_000);
    append_events(broker, 2000, start).await;

    // Newest first, in pages that follow each other.
    let first = b.audit_search(&admin, filter(3)).await.unwrap();
    assert_eq!(first.events.len(), 3);
    assert!(first.events[0].seq > first.events[1].seq);
    let next = first.next_before_seq.unwrap();
    let second = b
        .audit_search(
            &admin,
            AuditFilter {
                before_seq: Some(next),
                ..filter(3)
            },
        )
        .await
        .unwrap();
    assert_eq!(second.events[0].seq, next - 1);

    // By principal (a bare name is a user), target and kind; every condition holds.
    let found = b
        .audit_search(
            &admin,
            AuditFilter {
                principal: Some("u7".into()),
                target: Some("db7".into()),
                kind: Some("grant.revoked".into()),
                ..filter(1000)
            },
        )
        .await
        .unwrap();
    // i % 100 == 7 and i % 4 == 2 never both hold; i % 100 == 7 → i % 10 == 7 → db7.
    assert!(found.events.is_empty(), "{:?}", found.events.first());
    let found = b
        .audit_search(
            &admin,
            AuditFilter {
                principal: Some("user:u7".into()),
                target: Some("db7".into()),
                kind: Some("grant.*".into()),
                ..filter(1000)
            },
        )
        .await
        .unwrap();
    // i ≡ 7 (mod 100): 20 events, kinds by i % 4 = 3 → `auth.login`: none are `grant.*`…
    assert!(found.events.is_empty());
    let found = b
        .audit_search(
            &admin,
            AuditFilter {
                principal: Some("u6".into()),
                kind: Some("grant.".into()),
                ..filter(1000)
            },
        )
        .await
        .unwrap();
    // …and i ≡ 6 (mod 100) has i % 4 = 2: `grant.revoked`, 20 of them.
    assert_eq!(found.events.len(), 20);
    for event in &found.events {
        assert_eq!(event.kind, "grant.revoked");
        assert_eq!(event.principal.as_deref(), Some("user:u6"));
        assert_eq!(event.target.as_deref(), Some("db6"));
        assert_eq!(event.outcome, "ok");
        let line: serde_json::Value = serde_json::from_str(&event.line).unwrap();
        assert_eq!(line["seq"], event.seq);
        assert!(line["hash"].is_string());
    }
    // By time: [from, to).
    let found = b
        .audit_search(
            &admin,
            AuditFilter {
                from: Some(Timestamp::from_unix_ms(start.unix_ms() + 100)),
                to: Some(Timestamp::from_unix_ms(start.unix_ms() + 110)),
                ..filter(1000)
            },
        )
        .await
        .unwrap();
    assert_eq!(found.events.len(), 10);
    assert_eq!(found.events[0].at.unix_ms(), start.unix_ms() + 109);
    assert_eq!(found.next_before_seq, None);

    // Bad input is refused naming the field.
    for (bad, field) in [
        (filter(0), "limit"),
        (filter(1001), "limit"),
        (
            AuditFilter {
                kind: Some("Grant Issue".into()),
                ..filter(10)
            },
            "kind",
        ),
        (
            AuditFilter {
                target: Some("../x".into()),
                ..filter(10)
            },
            "target",
        ),
        (
            AuditFilter {
                from: Some(start),
                to: Some(start),
                ..filter(10)
            },
            "from",
        ),
        (
            AuditFilter {
                before_seq: Some(0),
                ..filter(10)
            },
            "before_seq",
        ),
    ] {
        match b.audit_search(&admin, bad.clone()).await {
            Err(BrokerError::BadRequest(message)) => {
                assert!(message.contains(&format!("`{field}`")), "{message}")
            }
            other => panic!("{bad:?} must be refused, got {other:?}"),
        }
    }
    // Admins only.
    let alice = caller(broker, &broker.login("alice").await).await;
    assert!(matches!(
        b.audit_search(&alice, filter(10)).await,
        Err(BrokerError::Forbidden(_))
    ));
    assert!(matches!(
        b.audit_overview(&alice).await,
        Err(BrokerError::Forbidden(_))
    ));

    // The export: oldest first, the lines as the search shows them.
    let export = b
        .audit_export(
            &admin,
            AuditFilter {
                principal: Some("u6".into()),
                ..filter(1)
            },
        )
        .await
        .unwrap();
    assert_eq!(export.lines.len(), 20);
    assert!(!export.truncated);
    let seqs: Vec<i64> = export
        .lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(
        export.lines.last(),
        found_line(b, &admin, "u6").await.as_ref()
    );
}

async fn found_line(
    b: &mayfly_server::state::Broker,
    admin: &Caller,
    principal: &str,
) -> Option<String> {
    b.audit_search(
        admin,
        AuditFilter {
            principal: Some(principal.into()),
            ..filter(1)
        },
    )
    .await
    .unwrap()
    .events
    .into_iter()
    .next()
    .map(|e| e.line)
}

#[tokio::test]
async fn the_audit_log_is_searched_by_principal_target_kind_and_time() {
    let broker = TestBroker::ready().await;
    audit_search_story(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_searched_by_principal_target_kind_and_time_on_postgres() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let broker = TestBroker::start(Options {
        store_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    audit_search_story(&broker).await;
    broker.stop().await;
    db.drop_db().await;
}

/// With 100,000 events in the store, each search finds its page (its time is printed; the figures
/// are console_bench's), and the overview, once it verified the chain, continues from where it
/// stopped instead of verifying it all again.
async fn audit_at_scale(broker: &TestBroker, store: &str) {
    let admin = admin(broker).await;
    let b = &broker.broker;
    let start = Timestamp::from_unix_ms(1_900_000_000_000);
    // A second apart: 100,000 events over 28 hours.
    append_spaced(broker, 100_000, start, 1000).await;
    let searches = [
        ("newest", filter(50)),
        (
            "principal",
            AuditFilter {
                principal: Some("u42".into()),
                ..filter(50)
            },
        ),
        (
            "target",
            AuditFilter {
                target: Some("db3".into()),
                ..filter(50)
            },
        ),
        (
            "kind",
            AuditFilter {
                kind: Some("grant.issue".into()),
                ..filter(50)
            },
        ),
        (
            "kind prefix",
            AuditFilter {
                kind: Some("grant.".into()),
                ..filter(50)
            },
        ),
        (
            "principal and kind, an old page",
            AuditFilter {
                principal: Some("u42".into()),
                kind: Some("access.request".into()),
                before_seq: Some(20_000),
                ..filter(50)
            },
        ),
        (
            "a rare kind",
            AuditFilter {
                kind: Some("auth.token.".into()),
                ..filter(50)
            },
        ),
        (
            "an old time window",
            AuditFilter {
                from: Some(Timestamp::from_unix_ms(start.unix_ms() + 10_000_000)),
                to: Some(Timestamp::from_unix_ms(start.unix_ms() + 10_050_000)),
                ..filter(50)
            },
        ),
        (
            "a kind prefix in an old time window",
            AuditFilter {
                kind: Some("grant.".into()),
                from: Some(Timestamp::from_unix_ms(start.unix_ms() + 10_000_000)),
                to: Some(Timestamp::from_unix_ms(start.unix_ms() + 10_050_000)),
                ..filter(50)
            },
        ),
    ];
    for (name, search) in searches {
        // Once to warm the caches, then timed.
        b.audit_search(&admin, search.clone()).await.unwrap();
        let started = Instant::now();
        let page = b.audit_search(&admin, search.clone()).await.unwrap();
        let took = started.elapsed();
        println!(
            "{store}: search `{name}`: {} events in {took:?}",
            page.events.len()
        );
        // How fast is the benchmark's business (BENCHMARKS.md, console_bench); that each search
        // walks an index is the store's query-plan test. Here: the page is right.
        // (u42's events are never `access.request`, and no event is `auth.token.*`: those two
        // searches walk to the end and find nothing, the slowest case.)
        let none_match = matches!(name, "principal and kind, an old page" | "a rare kind");
        assert_eq!(
            page.events.is_empty(),
            none_match,
            "{store}: search `{name}`: {} events",
            page.events.len()
        );
    }
    // An export holds the newest 10,000 and says there are more.
    // (The broker may sign a checkpoint over the events meanwhile: the head is read on both
    // sides.)
    let (head_before, _) = b.store().audit_head().await.unwrap();
    let started = Instant::now();
    let export = b.audit_export(&admin, filter(1)).await.unwrap();
    println!("{store}: export of 10,000 lines in {:?}", started.elapsed());
    assert_eq!(export.lines.len(), 10_000);
    assert!(export.truncated);
    let (head_after, _) = b.store().audit_head().await.unwrap();
    let last: serde_json::Value = serde_json::from_str(export.lines.last().unwrap()).unwrap();
    let last_seq = last["seq"].as_i64().unwrap();
    assert!(
        (head_before..=head_after).contains(&last_seq),
        "the export ends at {last_seq}, the head was {head_before}, then {head_after}"
    );
    let started = Instant::now();
    let overview = b.audit_overview(&admin).await.unwrap();
    println!(
        "{store}: first overview (the whole chain) in {:?}",
        started.elapsed()
    );
    assert!(overview.chain.valid, "{overview:?}");
    assert_eq!(overview.chain.verified_to_seq, overview.head_seq);
    let first_full_at = overview.chain.full_at;
    broker.clock.advance(Duration::from_secs(1));
    append_events(broker, 10, start).await;
    let started = Instant::now();
    let overview = b.audit_overview(&admin).await.unwrap();
    let took = started.elapsed();
    println!("{store}: next overview (10 more events) in {took:?}");
    assert!(overview.chain.valid, "{overview:?}");
    assert_eq!(overview.chain.verified_to_seq, overview.head_seq);
    // Continued, not verified again from the first event (a checkpoint signed meanwhile over
    // every event appended is checked against each of them, which takes its time in a debug
    // build: the bound is loose, the full verification took seconds).
    assert_eq!(overview.chain.full_at, first_full_at, "{overview:?}");
}

#[tokio::test]
async fn the_audit_search_finds_its_pages_among_100000_events() {
    let broker = TestBroker::start(Options {
        audit_file: false,
        ..Options::default()
    })
    .await;
    audit_at_scale(&broker, "sqlite").await;
    broker.stop().await;
}

#[tokio::test]
async fn the_audit_search_finds_its_pages_among_100000_events_on_postgres() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let broker = TestBroker::start(Options {
        store_url: Some(db.url.clone()),
        audit_file: false,
        ..Options::default()
    })
    .await;
    audit_at_scale(&broker, "postgres").await;
    broker.stop().await;
    db.drop_db().await;
}

/// The overview verifies the chain and keeps its verification: the last event it verified must
/// still be there as it was, and after `FULL_EVERY` it verifies everything again, so an edit of
/// an old event shows then (and at once with `audit_verify`).
#[tokio::test]
async fn the_overview_shows_the_chain_status_and_the_last_checkpoint() {
    let broker = TestBroker::ready().await;
    let admin = admin(&broker).await;
    let b = &broker.broker;
    append_events(&broker, 50, b.now()).await;
    // A signed checkpoint over what is there, once this node holds the checkpoint lease (its
    // first heartbeats after the unseal take it).
    for _ in 0..500 {
        if b.cluster()
            .fence(mayfly_server::cluster::CHECKPOINT_LEASE, b.now())
            .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.audit_verify(&admin).await.unwrap();
    let overview = b.audit_overview(&admin).await.unwrap();
    assert!(overview.chain.valid, "{overview:?}");
    let checkpoint = overview.last_checkpoint.expect("a checkpoint was signed");
    assert!(checkpoint.covers_to_seq >= 50, "{checkpoint:?}");
    assert!(checkpoint.seq <= overview.head_seq);
    assert!(overview.chain.n_signatures_checked >= 1, "{overview:?}");

    // Someone with the database edits an old event.
    let pool = sqlx::SqlitePool::connect(&broker.store_url).await.unwrap();
    sqlx::query("UPDATE audit_events SET body = substr(body, 1, length(body) - 1) || ',\"x\":1}' WHERE seq = 4")
        .execute(&pool)
        .await
        .unwrap();
    // Continued from the kept verification: not read again yet.
    assert!(b.audit_overview(&admin).await.unwrap().chain.valid);
    // …but `audit_verify` reads everything, and so does the overview after FULL_EVERY.
    assert!(!b.audit_verify(&admin).await.unwrap().ok);
    broker.clock.advance(FULL_EVERY + Duration::from_secs(1));
    let overview = b.audit_overview(&admin).await.unwrap();
    assert!(!overview.chain.valid, "{overview:?}");
    assert!(
        overview
            .chain
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("event 4"),
        "{overview:?}"
    );
    pool.close().await;
    broker.stop().await;
}

/// An edit of the last event the overview verified shows at its next call.
#[tokio::test]
async fn the_overview_sees_its_last_verified_event_change() {
    let broker = TestBroker::ready().await;
    let admin = admin(&broker).await;
    let b = &broker.broker;
    append_events(&broker, 20, b.now()).await;
    let overview = b.audit_overview(&admin).await.unwrap();
    assert!(overview.chain.valid, "{overview:?}");
    let last = overview.chain.verified_to_seq;
    let pool = sqlx::SqlitePool::connect(&broker.store_url).await.unwrap();
    sqlx::query(
        "UPDATE audit_events SET hash = replace(hash, substr(hash, 1, 1), 'x') WHERE seq = ?",
    )
    .bind(last)
    .execute(&pool)
    .await
    .unwrap();
    let overview = b.audit_overview(&admin).await.unwrap();
    assert!(!overview.chain.valid, "{overview:?}");
    pool.close().await;
    broker.stop().await;
}

const POLICY_SYNTAX_LINE_3: &str = "@id(\"a\")\npermit (principal, action == Action::\"request\", resource)\nwhen { context.reason like };\n";
const POLICY_UNKNOWN_ATTRIBUTE_LINE_2: &str = "@id(\"b\")\npermit (principal, action == Action::\"request\", resource) when { context.colour == \"red\" };\n";

#[tokio::test]
async fn a_refused_policy_names_the_line_of_each_problem() {
    let broker = TestBroker::ready().await;
    let admin = admin(&broker).await;
    let b = &broker.broker;
    for (text, line, what) in [
        (POLICY_SYNTAX_LINE_3, 3, "parse"),
        (POLICY_UNKNOWN_ATTRIBUTE_LINE_2, 2, "colour"),
    ] {
        let error = b
            .put_policy(&origin(), &admin, PolicyText { text: text.into() })
            .await
            .expect_err("the policy is refused");
        let BrokerError::InvalidPolicy { message, problems } = &error else {
            panic!("a policy problem, got {error:?}");
        };
        assert!(!problems.is_empty(), "{error}");
        assert_eq!(problems[0].line, line, "{problems:?}");
        assert!(problems[0].column >= 1, "{problems:?}");
        assert_eq!(message, &error.to_string());
        let message = error.to_string();
        assert!(message.starts_with("field `text`: "), "{message}");
        assert!(message.contains(what), "{message}");
        assert!(message.contains(&format!("line {line}")), "{message}");
        // Over HTTP: 400, the same message.
        let body = broker
            .expect(
                400,
                "PUT",
                "/v1/policy",
                broker.admin_token.as_deref(),
                Some(serde_json::json!({ "text": text })),
            )
            .await;
        assert_eq!(body["error"]["message"], message.as_str(), "{body}");
    }
    // Nothing was stored.
    assert!(b.store().policies().await.unwrap().is_none());
    broker.stop().await;
}

async fn pg_target(broker: &TestBroker, admin: &Caller) {
    broker
        .broker
        .add_target(
            &origin(),
            admin,
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
}

async fn dry_run_logins() -> i64 {
    let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'mf_dry_run_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    n
}

#[tokio::test]
async fn a_role_is_dry_run_on_the_real_postgresql_without_being_saved() {
    let broker = TestBroker::ready().await;
    let admin = admin(&broker).await;
    let b = &broker.broker;
    pg_target(&broker, &admin).await;
    let before = dry_run_logins().await;

    b.dry_run_role(
        &origin(),
        &admin,
        "pg",
        "readonly",
        "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}}; GRANT pg_read_all_data TO {{name}};",
    )
    .await
    .expect("good statements run");

    let refused = b
        .dry_run_role(
            &origin(),
            &admin,
            "pg",
            "broken",
            "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}}; GRANT SELECT ON no_such_table_anywhere TO {{name}};",
        )
        .await;
    match refused {
        Err(BrokerError::BadRequest(message)) => {
            assert!(message.contains("no_such_table_anywhere"), "{message}");
            assert!(message.contains("`pg`"), "{message}");
        }
        other => panic!("bad statements are refused with the target's message, got {other:?}"),
    }

    // Nothing was created on the target, nothing stored but the audit events.
    assert_eq!(dry_run_logins().await, before);
    assert!(b.store().roles().await.unwrap().is_empty());
    let events = b
        .audit_search(
            &admin,
            AuditFilter {
                kind: Some("role.dry_run".into()),
                target: Some("pg".into()),
                ..filter(10)
            },
        )
        .await
        .unwrap()
        .events;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events[0].line.contains("\"result\":\"refused\""),
        "{}",
        events[0].line
    );

    // Admins only; an unknown target is not found.
    let alice = caller(&broker, &broker.login("alice").await).await;
    assert!(matches!(
        b.dry_run_role(&origin(), &alice, "pg", "x", "SELECT 1")
            .await,
        Err(BrokerError::Forbidden(_))
    ));
    assert!(matches!(
        b.dry_run_role(&origin(), &admin, "nope", "x", "CREATE ROLE {{name}}")
            .await,
        Err(BrokerError::NotFound(_))
    ));
    broker.stop().await;
}

const REQUESTABLE: &str = r#"
@id("dev-readonly")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/readonly");

@id("dev-owner")
@approvals("1")
@max_ttl("300")
@step_up
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/owner");

@id("glass")
permit (principal == User::"alice", action == Action::"break_glass", resource == Role::"pg/superuser");

@id("ops-only")
permit (principal in Group::"ops", action == Action::"request", resource == Role::"pg/superuser");
"#;

#[tokio::test]
async fn a_principal_sees_the_roles_the_policy_lets_it_request() {
    let broker = TestBroker::ready().await;
    let admin = admin(&broker).await;
    let b = &broker.broker;
    pg_target(&broker, &admin).await;
    for name in ["readonly", "owner", "superuser", "unlisted"] {
        b.add_role(
            &origin(),
            &admin,
            RoleRequest {
                target: "pg".into(),
                name: name.into(),
                max_ttl_seconds: 3600,
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
            text: REQUESTABLE.into(),
        },
    )
    .await
    .unwrap();
    let alice = caller(&broker, &broker.login("alice").await).await;
    let roles = b.requestable_roles(alice.principal()).await.unwrap();
    let names: Vec<&str> = roles.iter().map(|r| r.role.as_str()).collect();
    assert_eq!(names.len(), 3, "{roles:?}");
    let role = |name: &str| roles.iter().find(|r| r.role == name).unwrap();
    let readonly = role("readonly");
    assert_eq!(readonly.target, "pg");
    assert_eq!(readonly.max_ttl, Duration::from_secs(3600));
    assert_eq!((readonly.approvals, readonly.step_up), (0, false));
    assert!(!readonly.break_glass_only);
    let owner = role("owner");
    assert_eq!(owner.max_ttl, Duration::from_secs(300));
    assert_eq!((owner.approvals, owner.step_up), (1, true));
    let superuser = role("superuser");
    assert!(superuser.break_glass_only, "{superuser:?}");
    // Bob is in `dev` too, but only alice may break the glass.
    let bob = caller(&broker, &broker.login("bob").await).await;
    let roles = b.requestable_roles(bob.principal()).await.unwrap();
    let mut names: Vec<&str> = roles.iter().map(|r| r.role.as_str()).collect();
    names.sort();
    assert_eq!(names, ["owner", "readonly"]);
    // Nothing was written: no request exists.
    assert!(b.store().requests(false, 10).await.unwrap().is_empty());
    broker.stop().await;
}
