//! `run_query`: the broker runs an agent's SQL as the agent's own grant, on the machine's real
//! PostgreSQL and MariaDB. A `SELECT` returns its rows as JSON values; `max_rows` and the byte cap
//! truncate; a write hidden in a `select` (a function with a side effect, `nextval`) is refused by
//! the read-only transaction; another principal's grant is not found; a revoked grant runs
//! nothing; SQL that does not classify (several statements, deep nesting, 64 KiB and more,
//! garbage) is a 400 before anything connects; no error carries the password.

use mayfly_server::access::QueryPlan;
use mayfly_server::auth::Caller;
use mayfly_server::error::BrokerError;
use mayfly_server::origin::Origin;
use mayfly_testkit::TestBroker;
use mayfly_testkit::access::{ask, grant_id};
use serde_json::{Value, json};
use sqlx::ConnectOptions;

fn origin() -> Origin {
    Origin::internal("run-query-test")
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

fn suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()[22..].to_owned()
}

/// The error's text, checked for what must never be in it.
fn text(error: &BrokerError, password: &str) -> String {
    let text = error.to_string();
    assert!(!text.contains(password), "the password is in {text:?}");
    assert!(!text.contains("://"), "a URL is in {text:?}");
    text
}

/// `sql` planned and run for `grant` by `who`.
async fn run(
    broker: &TestBroker,
    who: &Caller,
    grant: &str,
    sql: &str,
    max_rows: u32,
) -> Result<(QueryPlan, mayfly_server::access::QueryAnswer), BrokerError> {
    let b = &broker.broker;
    let plan = b.query_plan(who.principal(), grant, sql).await?;
    let answer = b
        .run_query(&origin(), who.principal(), &plan, sql, max_rows)
        .await?;
    Ok((plan, answer))
}

/// What must be refused with a 400 before anything connects, in either dialect.
async fn hostile_sql_is_refused(broker: &TestBroker, who: &Caller, grant: &str, password: &str) {
    let deep = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let long = format!("SELECT '{}'", "a".repeat(70 * 1024));
    for sql in [
        "SELECT 1; DROP TABLE t",
        "SELECT 1; SELECT 2",
        "",
        " ; ",
        "SELEKT 1",
        "SELECT 'unterminated",
        deep.as_str(),
        long.as_str(),
    ] {
        match broker.broker.query_plan(who.principal(), grant, sql).await {
            Err(error @ BrokerError::BadRequest(_)) => {
                let message = text(&error, password);
                assert!(message.contains("field `sql`"), "{message}");
            }
            other => panic!("{:?}: {other:?}", sql.get(..40)),
        }
    }
    // A plan made for a statement of one shape does not run one of another, and the row cap is
    // 1..=1000.
    let plan = broker
        .broker
        .query_plan(who.principal(), grant, "SELECT 1")
        .await
        .unwrap();
    for (sql, max_rows) in [
        ("DELETE FROM t WHERE id = 1", 10),
        ("SELECT * FROM t", 10),
        ("SELECT 1", 0),
        ("SELECT 1", 1001),
    ] {
        match broker
            .broker
            .run_query(&origin(), who.principal(), &plan, sql, max_rows)
            .await
        {
            Err(BrokerError::BadRequest(message)) => {
                assert!(message.contains("field `"), "{message}")
            }
            other => panic!("{sql} {max_rows}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn postgres_queries_run_as_the_grant_and_selects_cannot_write() {
    let id = suffix();
    let table = format!("rq_{id}");
    let mut admin_db = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(5432)
        .database("postgres")
        .username("postgres")
        .log_statements(tracing::log::LevelFilter::Off)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, name text, price numeric, meta jsonb);
         INSERT INTO {table} SELECT g, 'item ' || g, g * 1.5, '{{\"n\": 1}}' FROM generate_series(1, 50) g;
         CREATE SEQUENCE {table}_seq;
         CREATE FUNCTION {table}_bump() RETURNS int LANGUAGE sql AS 'INSERT INTO {table} (id) VALUES (1000) RETURNING id';"
    )))
    .execute(&mut admin_db)
    .await
    .unwrap();

    let broker = TestBroker::ready().await;
    broker
        .add_target(
            json!({"kind": "postgres", "name": "pg", "url": "postgres://127.0.0.1:5432/postgres",
            "admin_user": "postgres", "admin_password": "unused-with-trust"}),
        )
        .await;
    broker
        .add_role(
            "pg",
            "reader",
            3600,
            &format!(
                "CREATE ROLE {{{{name}}}} WITH LOGIN PASSWORD {{{{password}}}} VALID UNTIL {{{{expiration}}}};
                 GRANT SELECT, INSERT ON {table} TO {{{{name}}}};
                 GRANT USAGE ON SEQUENCE {table}_seq TO {{{{name}}}};
                 GRANT EXECUTE ON FUNCTION {table}_bump() TO {{{{name}}}};"
            ),
        )
        .await;
    broker
        .set_policy(
            "@id(\"dev\") permit (principal in Group::\"dev\", action == Action::\"request\", resource in Target::\"pg\");",
        )
        .await;
    let alice_token = broker.login("alice").await;
    let bob_token = broker.login("bob").await;
    let alice = caller(&broker, &alice_token).await;
    let bob = caller(&broker, &bob_token).await;
    let credential = broker
        .grant(&alice_token, ask("pg", "reader", 900, "INC-1"))
        .await;
    let grant = grant_id(&credential);
    let password = credential["password"].as_str().unwrap().to_owned();

    // A SELECT: its rows as JSON values, as the grant's own login.
    let (plan, answer) = run(
        &broker,
        &alice,
        &grant,
        &format!(
            "SELECT id, name, price, meta, id > 2 AS big, NULL AS nothing, current_user AS who, 0.25::float8 AS f FROM {table} WHERE id <= 3 ORDER BY id"
        ),
        100,
    )
    .await
    .unwrap();
    assert_eq!(plan.shape.kind.as_str(), "select");
    assert_eq!(plan.target, "pg");
    assert!(plan.shape.tables.contains(&table), "{plan:?}");
    assert!(plan.shape.has_where);
    assert_eq!(
        answer.columns,
        ["id", "name", "price", "meta", "big", "nothing", "who", "f"]
    );
    assert_eq!(answer.rows.len(), 3);
    assert!(!answer.truncated);
    let login = credential["username"].as_str().unwrap();
    assert_eq!(
        answer.rows[0],
        vec![
            json!(1),
            json!("item 1"),
            json!(1.5),
            json!({"n": 1}),
            json!(false),
            Value::Null,
            json!(login),
            json!(0.25)
        ]
    );
    // A statement with no rows still names its columns.
    let (_, empty) = run(
        &broker,
        &alice,
        &grant,
        &format!("SELECT id FROM {table} WHERE id < 0"),
        10,
    )
    .await
    .unwrap();
    assert_eq!(
        (empty.columns, empty.rows.len()),
        (vec!["id".to_owned()], 0)
    );

    // max_rows truncates; so does the 1 MiB cap on values.
    let (_, answer) = run(
        &broker,
        &alice,
        &grant,
        &format!("SELECT id FROM {table} ORDER BY id"),
        10,
    )
    .await
    .unwrap();
    assert_eq!((answer.rows.len(), answer.truncated), (10, true));
    assert_eq!(answer.rows[9], vec![json!(10)]);
    let (_, answer) = run(
        &broker,
        &alice,
        &grant,
        "SELECT repeat('x', 100000) AS big FROM generate_series(1, 50)",
        1000,
    )
    .await
    .unwrap();
    assert!(answer.truncated);
    assert!(
        (9..=10).contains(&answer.rows.len()),
        "{}",
        answer.rows.len()
    );

    // Writes hidden in a `select` are refused by the read-only transaction.
    for sql in [
        format!("SELECT nextval('{table}_seq')"),
        format!("SELECT {table}_bump()"),
        "SELECT set_config('transaction_read_only', 'off', false)".to_owned(),
    ] {
        let (plan, error) = match broker
            .broker
            .query_plan(alice.principal(), &grant, &sql)
            .await
        {
            Ok(plan) => {
                let error = broker
                    .broker
                    .run_query(&origin(), alice.principal(), &plan, &sql, 10)
                    .await
                    .expect_err(&sql);
                (plan, error)
            }
            Err(error) => panic!("{sql}: {error:?}"),
        };
        assert_eq!(plan.shape.kind.as_str(), "select", "{sql}");
        let message = text(&error, &password);
        assert!(
            matches!(error, BrokerError::BadRequest(_)),
            "{sql}: {error:?}"
        );
        assert!(
            message.contains("read-only") || message.contains("read-write mode"),
            "{sql}: {message}"
        );
    }
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE id = 1000"
    )))
    .fetch_one(&mut admin_db)
    .await
    .unwrap();
    assert_eq!(count, 0, "a select wrote");
    // An INSERT is no select: it runs (the policy is where such a call is refused), and commits.
    let (plan, answer) = run(
        &broker,
        &alice,
        &grant,
        &format!("INSERT INTO {table} (id) VALUES (2000) RETURNING id"),
        10,
    )
    .await
    .unwrap();
    assert_eq!(plan.shape.kind.as_str(), "insert");
    assert_eq!(answer.rows, vec![vec![json!(2000)]]);
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE id = 2000"
    )))
    .fetch_one(&mut admin_db)
    .await
    .unwrap();
    assert_eq!(count, 1);
    // The database's own refusals come back with its message: a privilege the grant lacks, a
    // table that does not exist.
    for (sql, expected) in [
        (
            format!("DELETE FROM {table} WHERE id = 1"),
            "permission denied",
        ),
        (
            "SELECT * FROM no_such_table_here".to_owned(),
            "does not exist",
        ),
    ] {
        let error = run(&broker, &alice, &grant, &sql, 10).await.unwrap_err();
        let message = text(&error, &password);
        assert!(matches!(error, BrokerError::BadRequest(_)), "{error:?}");
        assert!(message.contains(expected), "{message}");
    }
    // The statement timeout (10 s) ends a statement that would run longer.
    let error = run(&broker, &alice, &grant, "SELECT pg_sleep(60)", 10)
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::GatewayTimeout(_)), "{error:?}");

    hostile_sql_is_refused(&broker, &alice, &grant, &password).await;

    // Another principal's grant does not exist for them, planned or with alice's plan.
    match broker
        .broker
        .query_plan(bob.principal(), &grant, "SELECT 1")
        .await
    {
        Err(BrokerError::NotFound(_)) => {}
        other => panic!("bob planned on alice's grant: {other:?}"),
    }
    let plan = broker
        .broker
        .query_plan(alice.principal(), &grant, "SELECT 1")
        .await
        .unwrap();
    match broker
        .broker
        .run_query(&origin(), bob.principal(), &plan, "SELECT 1", 10)
        .await
    {
        Err(BrokerError::NotFound(_)) => {}
        other => panic!("bob ran alice's plan: {other:?}"),
    }
    match broker
        .broker
        .query_plan(alice.principal(), "no-such-grant", "SELECT 1")
        .await
    {
        Err(BrokerError::NotFound(_)) => {}
        other => panic!("{other:?}"),
    }

    // Revoked: the plan made before runs nothing, and no new plan is made.
    broker.revoke(&alice_token, &grant).await;
    match broker
        .broker
        .run_query(&origin(), alice.principal(), &plan, "SELECT 1", 10)
        .await
    {
        Err(BrokerError::Conflict(message)) => assert!(message.contains("not active"), "{message}"),
        other => panic!("a revoked grant ran: {other:?}"),
    }
    match broker
        .broker
        .query_plan(alice.principal(), &grant, "SELECT 1")
        .await
    {
        Err(BrokerError::Conflict(_)) => {}
        other => panic!("{other:?}"),
    }
    broker
        .wait_for_grant(&alice_token, &grant, "verified")
        .await;

    broker.stop().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP FUNCTION {table}_bump(); DROP SEQUENCE {table}_seq; DROP TABLE {table};"
    )))
    .execute(&mut admin_db)
    .await
    .unwrap();
}

#[tokio::test]
async fn mariadb_queries_run_as_the_grant_and_selects_cannot_write() {
    let db = format!("mayfly_rq_{}", suffix());
    let mut root = sqlx::mysql::MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(3306)
        .username("root")
        .log_statements(tracing::log::LevelFilter::Off)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {db};
         CREATE TABLE {db}.items (id INT PRIMARY KEY, name VARCHAR(40), price DECIMAL(10,2), raw VARBINARY(4), ok BOOLEAN);
         INSERT INTO {db}.items SELECT seq, CONCAT('item ', seq), seq * 1.5, X'FF00', seq % 2 FROM {db}.seq_1_to_50;
         CREATE FUNCTION {db}.bump() RETURNS INT MODIFIES SQL DATA BEGIN INSERT INTO {db}.items (id) VALUES (1000); RETURN 1; END;"
    )))
    .execute(&mut root)
    .await
    .unwrap();

    let broker = TestBroker::ready().await;
    broker
        .add_target(
            json!({"kind": "mysql", "name": "maria", "url": "mysql://127.0.0.1:3306",
            "admin_user": "root", "admin_password": ""}),
        )
        .await;
    broker
        .add_role(
            "maria",
            "reader",
            3600,
            &format!(
                "GRANT SELECT, INSERT ON {db}.* TO {{{{name}}}}; GRANT EXECUTE ON FUNCTION {db}.bump TO {{{{name}}}};"
            ),
        )
        .await;
    broker
        .set_policy(
            "@id(\"dev\") permit (principal in Group::\"dev\", action == Action::\"request\", resource in Target::\"maria\");",
        )
        .await;
    let alice_token = broker.login("alice").await;
    let bob_token = broker.login("bob").await;
    let alice = caller(&broker, &alice_token).await;
    let bob = caller(&broker, &bob_token).await;
    let credential = broker
        .grant(&alice_token, ask("maria", "reader", 900, "INC-2"))
        .await;
    let grant = grant_id(&credential);
    let password = credential["password"].as_str().unwrap().to_owned();

    let (plan, answer) = run(
        &broker,
        &alice,
        &grant,
        &format!("SELECT id, name, price, raw, ok, NULL AS nothing, 0.25e0 AS f FROM {db}.items WHERE id <= 3 ORDER BY id"),
        100,
    )
    .await
    .unwrap();
    assert_eq!(plan.shape.kind.as_str(), "select");
    assert_eq!(
        answer.columns,
        ["id", "name", "price", "raw", "ok", "nothing", "f"]
    );
    assert_eq!(
        answer.rows[0],
        vec![
            json!(1),
            json!("item 1"),
            json!(1.5),
            json!("0xff00"),
            json!(1),
            Value::Null,
            json!(0.25)
        ]
    );
    let (_, answer) = run(
        &broker,
        &alice,
        &grant,
        &format!("SELECT id FROM {db}.items ORDER BY id;"),
        7,
    )
    .await
    .unwrap();
    assert_eq!((answer.rows.len(), answer.truncated), (7, true));
    let (_, answer) = run(
        &broker,
        &alice,
        &grant,
        &format!("SELECT REPEAT('x', 100000) AS big FROM {db}.seq_1_to_50"),
        1000,
    )
    .await
    .unwrap();
    assert!(answer.truncated);
    assert!(
        (9..=10).contains(&answer.rows.len()),
        "{}",
        answer.rows.len()
    );

    // A function that writes, called from a select: refused by the read-only transaction.
    let sql = format!("SELECT {db}.bump()");
    let error = run(&broker, &alice, &grant, &sql, 10).await.unwrap_err();
    let message = text(&error, &password);
    assert!(matches!(error, BrokerError::BadRequest(_)), "{error:?}");
    assert!(message.contains("READ ONLY"), "{message}");
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {db}.items WHERE id = 1000"
    )))
    .fetch_one(&mut root)
    .await
    .unwrap();
    assert_eq!(count, 0, "a select wrote");
    // An INSERT runs, committed; a DELETE the grant may not do is the database's refusal.
    let (plan, _) = run(
        &broker,
        &alice,
        &grant,
        &format!("INSERT INTO {db}.items (id) VALUES (2000)"),
        10,
    )
    .await
    .unwrap();
    assert_eq!(plan.shape.kind.as_str(), "insert");
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {db}.items WHERE id = 2000"
    )))
    .fetch_one(&mut root)
    .await
    .unwrap();
    assert_eq!(count, 1);
    let error = run(
        &broker,
        &alice,
        &grant,
        &format!("DELETE FROM {db}.items WHERE id = 1"),
        10,
    )
    .await
    .unwrap_err();
    let message = text(&error, &password);
    assert!(message.contains("denied"), "{message}");

    hostile_sql_is_refused(&broker, &alice, &grant, &password).await;

    match broker
        .broker
        .query_plan(bob.principal(), &grant, "SELECT 1")
        .await
    {
        Err(BrokerError::NotFound(_)) => {}
        other => panic!("bob planned on alice's grant: {other:?}"),
    }
    let plan = broker
        .broker
        .query_plan(alice.principal(), &grant, "SELECT 1")
        .await
        .unwrap();
    broker.revoke(&alice_token, &grant).await;
    match broker
        .broker
        .run_query(&origin(), alice.principal(), &plan, "SELECT 1", 10)
        .await
    {
        Err(BrokerError::Conflict(message)) => assert!(message.contains("not active"), "{message}"),
        other => panic!("a revoked grant ran: {other:?}"),
    }
    broker
        .wait_for_grant(&alice_token, &grant, "verified")
        .await;
    broker.stop().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {db}")))
        .execute(&mut root)
        .await
        .unwrap();
}

/// A grant on a target that runs no SQL (Redis) is refused with a 400 naming the grant.
#[tokio::test]
async fn targets_without_sql_refuse_queries() {
    let broker = TestBroker::ready().await;
    broker
        .add_target(
            json!({"kind": "redis", "name": "cache", "url": "redis://127.0.0.1:6379",
            "admin_user": "default", "admin_password": ""}),
        )
        .await;
    broker
        .add_role("cache", "reader", 3600, "~rq:* +@read")
        .await;
    broker
        .set_policy(
            "@id(\"dev\") permit (principal in Group::\"dev\", action == Action::\"request\", resource in Target::\"cache\");",
        )
        .await;
    let token = broker.login("alice").await;
    let alice = caller(&broker, &token).await;
    let credential = broker.grant(&token, ask("cache", "reader", 900, "x")).await;
    let grant = grant_id(&credential);
    match broker
        .broker
        .query_plan(alice.principal(), &grant, "SELECT 1")
        .await
    {
        Err(BrokerError::BadRequest(message)) => {
            assert!(
                message.contains("grant_id") && message.contains("redis"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    broker.revoke(&token, &grant).await;
    broker.wait_for_grant(&token, &grant, "verified").await;
    broker.stop().await;
}
