//! `run_query` calls per second and the latency the broker adds over the query itself: the same
//! one-row `SELECT … WHERE id = N` (a different N each call) run against the machine's
//! PostgreSQL (or MariaDB) four ways, each for `seconds` with `clients` concurrent clients:
//!
//! - `direct`: sqlx on a connection each client keeps open (the query's own cost);
//! - `direct-login`: sqlx, a fresh login as the grant's role for every call, then the query, then
//!   closing it (what the broker does for each call, without the broker);
//! - `broker`: `Broker::query_plan` + `Broker::run_query` in the broker's process (the grant read
//!   and checked twice, the SQL classified twice, the password opened from the barrier, a login of
//!   the grant's own role, `BEGIN READ ONLY`, the statement prepared and run, `ROLLBACK`);
//! - `decide`: as `broker`, with the Cedar decision of the MCP tool (`decide_tool` with the
//!   policies given to the broker) between the plan and the run, as the MCP front end does it.
//!
//! ```sh
//! cargo build --release -p mayfly-bench --example query_bench
//! ./target/release/examples/query_bench [clients] [seconds] [postgres|mysql]
//! ```
//!
//! Not through HTTP `/mcp`: that front end (and its audit of every call) is measured on its own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_core::policy::{Policies, ToolArgs, ToolInput};
use mayfly_server::auth::Caller;
use mayfly_server::origin::Origin;
use mayfly_testkit::TestBroker;
use mayfly_testkit::access::{ask, grant_id};
use serde_json::json;
use sqlx::{ConnectOptions, Connection};

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

const ROWS: u32 = 10_000;

/// The tool policies the `decide` mode decides on: the shape of a realistic set (an agent may
/// read with a WHERE; nothing but selects when an agent acts).
const TOOL_POLICIES: &str = r#"
@id("agents-read")
permit (principal in Group::"dev", action == Action::"run_query", resource == Tool::"run_query")
when { context.query.kind == "select" && context.query.has_where && context.max_rows <= 1000 };
@id("agents-no-writes")
forbid (principal, action == Action::"run_query", resource)
when { context has actor && context.query.kind != "select" };
"#;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(8);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let kind = args.get(3).cloned().unwrap_or_else(|| "postgres".into());
    let mysql = kind == "mysql";
    let table = if mysql {
        "mayfly_query_bench.items"
    } else {
        "mayfly_query_bench"
    };

    // The table, as the database's admin.
    if mysql {
        let mut root = mysql_admin().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE IF NOT EXISTS mayfly_query_bench;
             DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(40), price DECIMAL(10,2));
             INSERT INTO {table} SELECT seq, CONCAT('item ', seq), seq * 1.5 FROM mayfly_query_bench.seq_1_to_{ROWS};"
        )))
        .execute(&mut root)
        .await
        .unwrap();
    } else {
        let mut admin = pg_admin().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (id int PRIMARY KEY, name text, price numeric);
             INSERT INTO {table} SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, {ROWS}) g;
             ANALYZE {table};"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }

    // The broker, its target, a role that may read the table, and one grant of alice's.
    let broker = TestBroker::ready().await;
    let (target, creation) = if mysql {
        (
            json!({"kind": "mysql", "name": "db", "url": "mysql://127.0.0.1:3306",
                "admin_user": "root", "admin_password": ""}),
            format!("GRANT SELECT ON {table} TO {{{{name}}}};"),
        )
    } else {
        (
            json!({"kind": "postgres", "name": "db", "url": "postgres://127.0.0.1:5432/postgres",
                "admin_user": "postgres", "admin_password": std::env::var("PGPASSWORD").unwrap_or_default()}),
            format!(
                "CREATE ROLE {{{{name}}}} WITH LOGIN PASSWORD {{{{password}}}} VALID UNTIL {{{{expiration}}}}; GRANT SELECT ON {table} TO {{{{name}}}};"
            ),
        )
    };
    broker.add_target(target).await;
    broker.add_role("db", "reader", 3600, &creation).await;
    broker
        .set_policy(
            "@id(\"dev\") permit (principal in Group::\"dev\", action == Action::\"request\", resource in Target::\"db\");",
        )
        .await;
    let token = broker.login("alice").await;
    let credential = broker
        .grant(&token, ask("db", "reader", 3600, "bench"))
        .await;
    let grant = grant_id(&credential);
    let login = credential["username"].as_str().unwrap().to_owned();
    let password = credential["password"].as_str().unwrap().to_owned();
    let hash = mayfly_crypto::token::hash_token(&token);
    let session = broker
        .broker
        .store()
        .session_by_hash(&hash)
        .await
        .unwrap()
        .unwrap();
    let alice = Arc::new(Caller { session });
    let policies = Arc::new(Policies::parse(TOOL_POLICIES).unwrap());

    println!(
        "{clients} clients, {seconds} s per mode, {kind}, one-row SELECT by primary key ({ROWS} rows), each call another id"
    );
    let sql = move |n: u64| {
        format!(
            "SELECT id, name, price FROM {table} WHERE id = {}",
            n % u64::from(ROWS) + 1
        )
    };

    for mode in ["direct", "direct-login", "broker", "decide"] {
        let started = Instant::now();
        let duration = Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for client in 0..clients {
            let broker = broker.broker.clone();
            let alice = alice.clone();
            let policies = policies.clone();
            let grant = grant.clone();
            let login = login.clone();
            let password = password.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = client as u64 * 1_000_003;
                let mut kept = match (mode, mysql) {
                    ("direct", false) => Some(Kept::Pg(pg_as(&login, &password).await)),
                    ("direct", true) => Some(Kept::My(mysql_as(&login, &password).await)),
                    _ => None,
                };
                let origin = Origin::internal("query-bench");
                while started.elapsed() < duration {
                    n += 1;
                    let text = sql(n);
                    let t = Instant::now();
                    match (mode, &mut kept) {
                        ("direct", Some(Kept::Pg(connection))) => {
                            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(text))
                                .fetch_all(&mut *connection)
                                .await
                                .unwrap();
                            assert_eq!(rows.len(), 1);
                        }
                        ("direct", Some(Kept::My(connection))) => {
                            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(text))
                                .fetch_all(&mut *connection)
                                .await
                                .unwrap();
                            assert_eq!(rows.len(), 1);
                        }
                        ("direct-login", _) if mysql => {
                            let mut connection = mysql_as(&login, &password).await;
                            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(text))
                                .fetch_all(&mut connection)
                                .await
                                .unwrap();
                            assert_eq!(rows.len(), 1);
                            connection.close().await.unwrap();
                        }
                        ("direct-login", _) => {
                            let mut connection = pg_as(&login, &password).await;
                            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(text))
                                .fetch_all(&mut connection)
                                .await
                                .unwrap();
                            assert_eq!(rows.len(), 1);
                            connection.close().await.unwrap();
                        }
                        (mode, _) => {
                            let plan = broker
                                .query_plan(alice.principal(), &grant, &text)
                                .await
                                .unwrap();
                            if mode == "decide" {
                                let digest = format!("{n:064x}");
                                let decision = policies
                                    .decide_tool(&ToolInput {
                                        principal: alice.principal(),
                                        actors: &[],
                                        args_sha256: &digest,
                                        hour: 12,
                                        args: ToolArgs::RunQuery {
                                            grant_id: &plan.grant_id,
                                            target: &plan.target,
                                            role: &plan.role,
                                            query: &plan.shape,
                                            max_rows: 100,
                                        },
                                    })
                                    .unwrap();
                                assert!(decision.allows(), "{decision:?}");
                            }
                            let answer = broker
                                .run_query(&origin, alice.principal(), &plan, &text, 100)
                                .await
                                .unwrap();
                            assert_eq!(answer.rows.len(), 1);
                        }
                    }
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let run = mayfly_bench::gather(tasks, started).await;
        println!(
            "{mode:<13} {:>8.0} calls/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} calls)",
            run.per_second, run.p50_ms, run.p99_ms, run.n
        );
        // Let the target settle (closed backends, the broker's idle connections) between modes.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    broker.revoke(&token, &grant).await;
    broker.wait_for_grant(&token, &grant, "verified").await;
    broker.stop().await;
}

enum Kept {
    Pg(sqlx::PgConnection),
    My(sqlx::MySqlConnection),
}

async fn pg_admin() -> sqlx::PgConnection {
    sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(5432)
        .database("postgres")
        .username("postgres")
        .log_statements(tracing::log::LevelFilter::Off)
        .connect()
        .await
        .unwrap()
}

async fn pg_as(login: &str, password: &str) -> sqlx::PgConnection {
    sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(5432)
        .database("postgres")
        .username(login)
        .password(password)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable)
        .application_name("mayfly")
        .log_statements(tracing::log::LevelFilter::Off)
        .connect()
        .await
        .unwrap()
}

async fn mysql_admin() -> sqlx::MySqlConnection {
    sqlx::mysql::MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(3306)
        .username("root")
        .log_statements(tracing::log::LevelFilter::Off)
        .connect()
        .await
        .unwrap()
}

async fn mysql_as(login: &str, password: &str) -> sqlx::MySqlConnection {
    sqlx::mysql::MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(3306)
        .username(login)
        .password(password)
        .ssl_mode(sqlx::mysql::MySqlSslMode::Disabled)
        .log_statements(tracing::log::LevelFilter::Off)
        .connect()
        .await
        .unwrap()
}
