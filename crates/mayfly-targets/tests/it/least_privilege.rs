//! Each database target administered by the least-privileged account its docs recommend ("Minimal
//! admin" in docs/targets/postgres.md, mysql.md, redis.md), not a superuser: the conformance suite
//! passes with it, what a grant owns is taken over by it, and `check_admin` accepts it and refuses
//! an account that lacks a part of it, naming that part.
//!
//! PostgreSQL runs on a throwaway SCRAM cluster; MariaDB and Redis on the machine's servers, where
//! each test makes its admin under a name of its own and drops it after, also when it fails.

use std::future::Future;

use mayfly_core::LoginName;
use mayfly_targets::mysql::MysqlTarget;
use mayfly_targets::postgres::PostgresTarget;
use mayfly_targets::redis::RedisTarget;
use mayfly_targets::resp::{Reply, Resp};
use mayfly_targets::{RoleSpec, Target, TargetError};
use mayfly_testkit::gate::Gate;
use mayfly_testkit::pgcluster::PgCluster;
use secrecy::{ExposeSecret, SecretString};
use sqlx::ConnectOptions;

use crate::conformance::{self, BoxFuture, Probe};
use crate::postgres::PgProbe;

/// A name no other run uses: `prefix` + 12 hex digits.
fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}{}", &id[id.len() - 12..])
}

/// Runs `body`, then `cleanup` whatever happened, then fails as `body` did.
async fn cleaned_up(
    body: impl Future<Output = ()> + Send + 'static,
    cleanup: impl Future<Output = ()>,
) {
    let outcome = tokio::spawn(body).await;
    cleanup.await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

#[track_caller]
fn refused(result: Result<(), TargetError>) -> String {
    match result {
        Err(TargetError::Refused { reason, .. } | TargetError::AdminLogin { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: LOGIN CREATEROLE (INHERIT, the default), plus GRANT OPTION on what roles grant.
// ---------------------------------------------------------------------------------------------

/// What the roles below grant, given to the admin with GRANT OPTION by the superuser.
async fn pg_setup(cluster: &PgCluster, admin: &str) {
    let mut superuser = cluster.connect("postgres").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE app_data (x int); INSERT INTO app_data VALUES (1);
         GRANT SELECT ON app_data TO {admin} WITH GRANT OPTION;
         GRANT CREATE ON SCHEMA public TO {admin} WITH GRANT OPTION;"
    )))
    .execute(&mut superuser)
    .await
    .unwrap();
}

fn pg_role() -> RoleSpec {
    RoleSpec {
        name: "writer".into(),
        creation_sql:
            "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};\n\
                       GRANT SELECT ON app_data TO {{name}};\n\
                       GRANT CREATE ON SCHEMA public TO {{name}};"
                .into(),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    }
}

/// The minimal admin: `CREATEROLE`, no superuser, no pg_signal_backend.
async fn pg_minimal_admin(cluster: &PgCluster) -> (String, SecretString) {
    let password = cluster.create_login("mayfly_admin", "CREATEROLE").await;
    pg_setup(cluster, "mayfly_admin").await;
    ("mayfly_admin".into(), SecretString::from(password))
}

#[tokio::test]
async fn postgres_conformance_with_a_createrole_admin() {
    let cluster = PgCluster::start();
    let (admin, password) = pg_minimal_admin(&cluster).await;
    let target =
        PostgresTarget::new("pg", &cluster.url_as(&admin, "postgres"), Some(&password)).unwrap();
    target.check_admin().await.unwrap();
    let probe = PgProbe { port: cluster.port };
    conformance::lifecycle(&target, &pg_role(), &probe).await;
    conformance::batch(&target, &pg_role(), &probe).await;

    let gate = Gate::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).await;
    let gated = PostgresTarget::new(
        "pg",
        &format!("postgres://{admin}@127.0.0.1:{}/postgres", gate.port),
        Some(&password),
    )
    .unwrap();
    conformance::unreachable_then_back(&gated, &pg_role(), &probe, &gate).await;
}

/// What a grant made (a table, with a session still open) is the admin's after the revocation,
/// and the role is gone: `REASSIGN OWNED` / `DROP OWNED` / `DROP ROLE` by a CREATEROLE admin.
#[tokio::test]
async fn what_a_grant_owns_goes_to_the_createrole_admin() {
    let cluster = PgCluster::start();
    let (admin, password) = pg_minimal_admin(&cluster).await;
    let target =
        PostgresTarget::new("pg", &cluster.url_as(&admin, "postgres"), Some(&password)).unwrap();
    let role = pg_role();
    let (login, secret) = conformance::issue_fresh(&target, &role).await;
    let probe = PgProbe { port: cluster.port };
    let mut session = probe.login(&login, &secret).await.unwrap();
    sqlx::raw_sql("CREATE TABLE made_by_grant (x int); SELECT x FROM app_data")
        .execute(&mut session)
        .await
        .unwrap();

    target.revoke(&login, Some(&role)).await.unwrap();
    assert!(!probe.alive(&mut session).await, "the session survived");
    let mut superuser = cluster.connect("postgres").await;
    let owner: String = sqlx::query_scalar(
        "SELECT tableowner::text FROM pg_tables WHERE tablename = 'made_by_grant'",
    )
    .fetch_one(&mut superuser)
    .await
    .unwrap();
    assert_eq!(owner, admin);
    target.verify_revoked(&login, &secret).await.unwrap();
    // The admin kept no membership in a role that no longer exists, and holds nothing more.
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid WHERE r.rolname LIKE 'mf\\_%'",
    )
    .fetch_one(&mut superuser)
    .await
    .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn postgres_check_admin_names_what_is_missing() {
    let cluster = PgCluster::start();
    let target_of = |user: &str, password: &str| {
        PostgresTarget::new(
            "pg",
            &cluster.url_as(user, "postgres"),
            Some(&SecretString::from(password.to_owned())),
        )
        .unwrap()
    };
    let password = cluster.create_login("plain", "").await;
    let reason = refused(target_of("plain", &password).check_admin().await);
    assert!(
        reason.contains("`plain` lacks CREATEROLE (") && !reason.contains("INHERIT"),
        "{reason}"
    );
    assert!(
        reason.contains("ALTER ROLE \"plain\" CREATEROLE`"),
        "{reason}"
    );

    let password = cluster
        .create_login("noinherit", "CREATEROLE NOINHERIT")
        .await;
    let reason = refused(target_of("noinherit", &password).check_admin().await);
    assert!(
        reason.contains("lacks INHERIT (") && !reason.contains("CREATEROLE"),
        "{reason}"
    );

    let password = cluster.create_login("neither", "NOINHERIT").await;
    let reason = refused(target_of("neither", &password).check_admin().await);
    assert!(
        reason.contains("lacks CREATEROLE (") && reason.contains(" and INHERIT ("),
        "{reason}"
    );
    assert!(
        reason.contains("`ALTER ROLE \"neither\" CREATEROLE INHERIT`"),
        "{reason}"
    );

    // A wrong password is the server's own refusal; it is not repeated in the message.
    let reason = refused(target_of("plain", "wrong-password").check_admin().await);
    assert!(
        reason.contains("password authentication failed"),
        "{reason}"
    );
    assert!(!reason.contains("wrong-password"), "{reason}");

    // The minimal admin (no pg_signal_backend) and the superuser pass.
    let password = cluster.create_login("minimal", "CREATEROLE").await;
    target_of("minimal", &password).check_admin().await.unwrap();
    target_of("postgres", &cluster.admin_password)
        .check_admin()
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// MariaDB: CREATE USER, PROCESS, CONNECTION ADMIN ON *.*, SELECT ON mysql.user, and GRANT OPTION
// on what the roles grant.
// ---------------------------------------------------------------------------------------------

const MARIADB: (&str, u16) = ("127.0.0.1", 3306);

async fn mariadb_root() -> sqlx::MySqlConnection {
    let options = sqlx::mysql::MySqlConnectOptions::new()
        .host(MARIADB.0)
        .port(MARIADB.1)
        .username("root")
        .disable_statement_logging();
    let mut root = options.connect().await.unwrap();
    sqlx::raw_sql("CREATE DATABASE IF NOT EXISTS mayfly_it")
        .execute(&mut root)
        .await
        .unwrap();
    root
}

async fn mariadb_run(sql: String) {
    let mut root = mariadb_root().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut root)
        .await
        .unwrap();
}

/// Creates the account `name`@'%' with a fresh password (returned) and the given grants (each
/// `… ON … ` ending in ` TO {{admin}}`).
async fn mariadb_admin(name: &str, grants: &[&str]) -> SecretString {
    let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let mut sql = format!("CREATE USER '{name}'@'%' IDENTIFIED BY '{password}';");
    for grant in grants {
        sql.push_str(&grant.replace("{{admin}}", &format!("'{name}'@'%'")));
        sql.push(';');
    }
    mariadb_run(sql).await;
    SecretString::from(password)
}

async fn mariadb_drop(name: &str) {
    mariadb_run(format!("DROP USER IF EXISTS '{name}'@'%'")).await;
}

const MARIADB_MINIMAL: [&str; 3] = [
    "GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO {{admin}}",
    "GRANT SELECT ON mysql.user TO {{admin}}",
    "GRANT SELECT ON mayfly_it.* TO {{admin}} WITH GRANT OPTION",
];

fn mariadb_target(admin: &str, password: &SecretString, port: u16) -> MysqlTarget {
    MysqlTarget::new(
        "maria",
        &format!("mysql://{admin}@127.0.0.1:{port}"),
        Some(password),
    )
    .unwrap()
}

fn mariadb_role() -> RoleSpec {
    RoleSpec {
        name: "reader".into(),
        creation_sql: "GRANT SELECT ON mayfly_it.* TO {{name}};".into(),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    }
}

struct MariadbProbe;

impl Probe for MariadbProbe {
    type Session = sqlx::MySqlConnection;

    fn login<'a>(
        &'a self,
        login: &'a LoginName,
        secret: &'a SecretString,
    ) -> BoxFuture<'a, Result<sqlx::MySqlConnection, String>> {
        Box::pin(async move {
            sqlx::mysql::MySqlConnectOptions::new()
                .host(MARIADB.0)
                .port(MARIADB.1)
                .username(login.as_str())
                .password(secret.expose_secret())
                .disable_statement_logging()
                .connect()
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn alive<'a>(&'a self, session: &'a mut sqlx::MySqlConnection) -> BoxFuture<'a, bool> {
        Box::pin(async move { sqlx::query("SELECT 1").execute(&mut *session).await.is_ok() })
    }
}

#[tokio::test]
async fn mariadb_conformance_with_the_minimal_admin() {
    mariadb_root().await;
    let admin = unique("mayfly_lp_");
    let password = mariadb_admin(&admin, &MARIADB_MINIMAL).await;
    let body = {
        let admin = admin.clone();
        async move {
            let target = mariadb_target(&admin, &password, MARIADB.1);
            target.check_admin().await.unwrap();
            conformance::lifecycle(&target, &mariadb_role(), &MariadbProbe).await;
            conformance::batch(&target, &mariadb_role(), &MariadbProbe).await;
            let gate = Gate::start(format!("{}:{}", MARIADB.0, MARIADB.1).parse().unwrap()).await;
            let gated = mariadb_target(&admin, &password, gate.port);
            conformance::unreachable_then_back(&gated, &mariadb_role(), &MariadbProbe, &gate).await;
        }
    };
    cleaned_up(body, mariadb_drop(&admin)).await;
}

#[tokio::test]
async fn mariadb_check_admin_names_what_is_missing() {
    mariadb_root().await;
    let names: Vec<String> = (0..4).map(|_| unique("mayfly_lp_")).collect();
    let body = {
        let names = names.clone();
        async move {
            // Nothing but the right to log in: every part is named.
            let password = mariadb_admin(&names[0], &[]).await;
            let reason = refused(
                mariadb_target(&names[0], &password, 3306)
                    .check_admin()
                    .await,
            );
            for part in [
                "CREATE USER (",
                "PROCESS (",
                "CONNECTION ADMIN or SUPER (",
                "SELECT on mysql.user (",
                "GRANT OPTION (",
            ] {
                assert!(reason.contains(part), "{part} is not named: {reason}");
            }
            assert!(reason.contains(&format!("`{}@%`", names[0])), "{reason}");

            // All but the right to kill other accounts' connections: that alone is named.
            let password = mariadb_admin(
                &names[1],
                &[
                    "GRANT CREATE USER, PROCESS ON *.* TO {{admin}}",
                    MARIADB_MINIMAL[1],
                    MARIADB_MINIMAL[2],
                ],
            )
            .await;
            let reason = refused(
                mariadb_target(&names[1], &password, 3306)
                    .check_admin()
                    .await,
            );
            assert!(
                reason.contains("lacks CONNECTION ADMIN or SUPER (to kill")
                    && !reason.contains("PROCESS (")
                    && !reason.contains("GRANT OPTION"),
                "{reason}"
            );

            // All but GRANT OPTION: a role could grant nothing.
            let password = mariadb_admin(
                &names[2],
                &[
                    MARIADB_MINIMAL[0],
                    MARIADB_MINIMAL[1],
                    "GRANT SELECT ON mayfly_it.* TO {{admin}}",
                ],
            )
            .await;
            let reason = refused(
                mariadb_target(&names[2], &password, 3306)
                    .check_admin()
                    .await,
            );
            assert!(
                reason.contains("lacks GRANT OPTION (") && !reason.contains("CREATE USER ("),
                "{reason}"
            );

            // SUPER instead of CONNECTION ADMIN, through a role the account has by default.
            let role = format!("{}_role", names[3]);
            mariadb_run(format!("CREATE ROLE {role}; GRANT SUPER ON *.* TO {role}")).await;
            let grant_role = format!("GRANT {role} TO {{{{admin}}}}");
            let default_role = format!("SET DEFAULT ROLE {role} FOR {{{{admin}}}}");
            let password = mariadb_admin(
                &names[3],
                &[
                    "GRANT CREATE USER, PROCESS ON *.* TO {{admin}}",
                    MARIADB_MINIMAL[1],
                    MARIADB_MINIMAL[2],
                    &grant_role,
                    &default_role,
                ],
            )
            .await;
            mariadb_target(&names[3], &password, 3306)
                .check_admin()
                .await
                .unwrap();
        }
    };
    let cleanup = async {
        for name in &names {
            mariadb_drop(name).await;
        }
        mariadb_run(format!("DROP ROLE IF EXISTS {}_role", names[3])).await;
    };
    cleaned_up(body, cleanup).await;
}

// ---------------------------------------------------------------------------------------------
// Redis: +acl|setuser +acl|deluser +acl|users +acl|getuser +client|kill +client|list, nothing else.
// ---------------------------------------------------------------------------------------------

const REDIS: (&str, u16) = ("127.0.0.1", 6379);
const REDIS_MINIMAL: [&str; 6] = [
    "+acl|setuser",
    "+acl|deluser",
    "+acl|users",
    "+acl|getuser",
    "+client|kill",
    "+client|list",
];

async fn redis_default(command: &[&[u8]]) -> Reply {
    let mut connection = Resp::connect(REDIS.0, REDIS.1).await.unwrap();
    connection
        .call(command)
        .await
        .unwrap()
        .into_result()
        .unwrap()
}

/// Makes the ACL user `name` with a fresh password (returned) and exactly `rules`.
async fn redis_admin(name: &str, rules: &[&str]) -> SecretString {
    let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let secret = format!(">{password}");
    let mut command: Vec<&[u8]> = vec![b"ACL", b"SETUSER", name.as_bytes(), b"reset", b"on"];
    command.push(secret.as_bytes());
    command.extend(rules.iter().map(|r| r.as_bytes()));
    redis_default(&command).await;
    SecretString::from(password)
}

async fn redis_drop(names: &[String]) {
    for name in names {
        redis_default(&[b"ACL", b"DELUSER", name.as_bytes()]).await;
    }
}

fn redis_target(admin: &str, password: &SecretString, port: u16) -> RedisTarget {
    RedisTarget::new(
        "cache",
        &format!("redis://{admin}@127.0.0.1:{port}"),
        Some(password),
    )
    .unwrap()
}

fn redis_role() -> RoleSpec {
    RoleSpec {
        name: "reader".into(),
        creation_sql: "~mayfly-it:* +@read +ping".into(),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    }
}

#[tokio::test]
async fn redis_conformance_with_the_minimal_admin() {
    let admin = unique("mayfly_lp_");
    let password = redis_admin(&admin, &REDIS_MINIMAL).await;
    let body = {
        let admin = admin.clone();
        async move {
            let target = redis_target(&admin, &password, REDIS.1);
            target.check_admin().await.unwrap();
            conformance::lifecycle(&target, &redis_role(), &crate::redis::RedisProbe).await;
            conformance::batch(&target, &redis_role(), &crate::redis::RedisProbe).await;
            let gate = Gate::start(format!("{}:{}", REDIS.0, REDIS.1).parse().unwrap()).await;
            let gated = redis_target(&admin, &password, gate.port);
            conformance::unreachable_then_back(
                &gated,
                &redis_role(),
                &crate::redis::RedisProbe,
                &gate,
            )
            .await;
        }
    };
    cleaned_up(body, redis_drop(&[admin])).await;
}

#[tokio::test]
async fn redis_check_admin_names_what_is_missing() {
    let names = vec![unique("mayfly_lp_"), unique("mayfly_lp_")];
    let body = {
        let names = names.clone();
        async move {
            // Only what the proof reads: the changes and the kill are named, with the rules to add.
            let password =
                redis_admin(&names[0], &["+acl|users", "+acl|getuser", "+client|list"]).await;
            let reason = refused(
                redis_target(&names[0], &password, REDIS.1)
                    .check_admin()
                    .await,
            );
            assert!(
                reason.contains(&format!(
                    "`{}` may not run ACL SETUSER, ACL DELUSER, CLIENT KILL:",
                    names[0]
                )),
                "{reason}"
            );
            assert!(
                reason.ends_with(&format!(
                    "`ACL SETUSER {} +acl|setuser +acl|deluser +client|kill`",
                    names[0]
                )),
                "{reason}"
            );
            // Nothing was created by the check.
            let users = redis_default(&[b"ACL", b"USERS"]).await.strings();
            assert!(
                !users.iter().any(|u| u.contains("mayfly check")),
                "{users:?}"
            );

            // `+@all` minus the kill: the kill alone is named.
            let password = redis_admin(&names[1], &["+@all", "-client|kill"]).await;
            let reason = refused(
                redis_target(&names[1], &password, REDIS.1)
                    .check_admin()
                    .await,
            );
            assert!(reason.contains("may not run CLIENT KILL:"), "{reason}");

            // A wrong password is the server's refusal.
            let wrong = SecretString::from("wrong-password".to_owned());
            let reason = refused(redis_target(&names[1], &wrong, REDIS.1).check_admin().await);
            assert!(reason.starts_with("WRONGPASS"), "{reason}");
            assert!(!reason.contains("wrong-password"), "{reason}");
        }
    };
    cleaned_up(body, redis_drop(&names)).await;
}
