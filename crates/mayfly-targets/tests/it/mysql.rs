//! The MariaDB target against the machine's MariaDB (127.0.0.1:3306, root without a password).

use mayfly_core::LoginName;
use mayfly_targets::mysql::MysqlTarget;
use mayfly_targets::{RoleSpec, Target, TargetError};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{ConnectOptions, Connection, Row};

use crate::conformance::{self, BoxFuture, Probe};

const URL: &str = "mysql://root@127.0.0.1:3306";

fn role() -> RoleSpec {
    RoleSpec {
        name: "reader".into(),
        creation_sql: "GRANT SELECT ON mayfly_it.* TO {{name}};".into(),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    }
}

struct MysqlProbe;

impl Probe for MysqlProbe {
    type Session = sqlx::MySqlConnection;

    fn login<'a>(
        &'a self,
        login: &'a LoginName,
        secret: &'a SecretString,
    ) -> BoxFuture<'a, Result<sqlx::MySqlConnection, String>> {
        Box::pin(async move {
            let options = sqlx::mysql::MySqlConnectOptions::new()
                .host("127.0.0.1")
                .port(3306)
                .username(login.as_str())
                .password(secret.expose_secret())
                .log_statements(tracing::log::LevelFilter::Off);
            sqlx::MySqlConnection::connect_with(&options)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn alive<'a>(&'a self, session: &'a mut sqlx::MySqlConnection) -> BoxFuture<'a, bool> {
        Box::pin(async move { sqlx::query("SELECT 1").execute(&mut *session).await.is_ok() })
    }
}

async fn admin() -> sqlx::MySqlConnection {
    let options = sqlx::mysql::MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(3306)
        .username("root")
        .log_statements(tracing::log::LevelFilter::Off);
    let mut connection = sqlx::MySqlConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql("CREATE DATABASE IF NOT EXISTS mayfly_it")
        .execute(&mut connection)
        .await
        .unwrap();
    connection
}

#[tokio::test]
async fn mysql_lifecycle() {
    admin().await;
    let target = MysqlTarget::new("maria", URL, None).unwrap();
    conformance::lifecycle(&target, &role(), &MysqlProbe).await;
    conformance::batch(&target, &role(), &MysqlProbe).await;
}

#[tokio::test]
async fn mysql_unreachable_then_back() {
    admin().await;
    let gate = mayfly_testkit::gate::Gate::start("127.0.0.1:3306".parse().unwrap()).await;
    let target = MysqlTarget::new(
        "maria",
        &format!("mysql://root@127.0.0.1:{}", gate.port),
        None,
    )
    .unwrap();
    conformance::unreachable_then_back(&target, &role(), &MysqlProbe, &gate).await;
}

/// The password never reaches the server in clear: the account holds its hash, and the statements
/// the server received (its general log, switched on for the issue) carry the hash only.
#[tokio::test]
async fn the_clear_password_never_reaches_mariadb() {
    let mut admin = admin().await;
    let target = MysqlTarget::new("maria", URL, None).unwrap();
    let login = conformance::new_login();
    let secret = conformance::new_secret();
    let hash = mayfly_crypto::mysql::native_password_hash(&secret);
    let hash = hash.expose_secret();
    let plan = mayfly_targets::IssuePlan {
        login: &login,
        secret: &secret,
        role: &role(),
        expires_at: conformance::in_minutes(15),
        public_key: None,
        issued_at: conformance::in_minutes(0),
    };

    // The general log is the server's: one copy of this test at a time (another run of the suite
    // may be on the same server) switches it on and puts it back. The lock is the connection's,
    // so a panic that drops the connection releases it.
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('mayfly-it-general-log', 300)")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(locked, Some(1), "waited 300 s for the general log");
    let (was_on, was_output): (i64, String) =
        sqlx::query_as("SELECT @@GLOBAL.general_log + 0, @@GLOBAL.log_output")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    sqlx::raw_sql("SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = 1")
        .execute(&mut admin)
        .await
        .unwrap();
    let issued = target.issue(&plan).await;
    // Off again before anything else is asked, the searches below included (they name the
    // secret, and a logged search would find itself); then the previous setting. Before the
    // asserts, so that a failure leaves the server as it was.
    sqlx::query("SET GLOBAL general_log = ?")
        .bind(was_on)
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("SET GLOBAL log_output = ?")
        .bind(&was_output)
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("SELECT RELEASE_LOCK('mayfly-it-general-log')")
        .execute(&mut admin)
        .await
        .unwrap();
    issued.unwrap();

    // Other tests run against the same server meanwhile: this test's statements are the ones
    // naming its login, which is fresh.
    let statements: Vec<String> = sqlx::query_scalar(
        "SELECT argument FROM mysql.general_log WHERE command_type = 'Query' AND argument LIKE ?",
    )
    .bind(format!("%{}%", login.as_str()))
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let with_hash = format!("IDENTIFIED BY PASSWORD '{hash}'");
    assert!(
        statements
            .iter()
            .any(|s| s.contains("CREATE USER") && s.contains(&with_hash)),
        "no CREATE USER … {with_hash} in the general log: {statements:#?}"
    );
    for statement in statements.iter().filter(|s| s.contains("IDENTIFIED")) {
        assert!(
            statement.contains(&with_hash),
            "a password that is not the hash was sent: {statement}"
        );
    }
    // The secret is fresh: anywhere in the log, in any statement, is too many.
    let clear: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM mysql.general_log WHERE INSTR(argument, ?) > 0")
            .bind(secret.expose_secret())
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(clear, 0, "the clear password is in MariaDB's general log");

    let row = sqlx::query("SELECT authentication_string AS a FROM mysql.user WHERE User = ?")
        .bind(login.as_str())
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let stored: String = row.try_get("a").unwrap();
    assert_eq!(stored, hash);
    assert!(MysqlProbe.login(&login, &secret).await.is_ok());
    target.revoke(&login, None).await.unwrap();
}

#[tokio::test]
async fn hostile_roles_are_refused() {
    let target = MysqlTarget::new("maria", URL, None).unwrap();
    for sql in [
        "GRANT ALL ON *.* TO 'root'@'%'",
        "CREATE USER {{name}} IDENTIFIED BY 'x'; GRANT SELECT ON a.* TO {{name}}",
        "GRANT SELECT ON a.* TO {{name}} IDENTIFIED BY 'known'",
        "GRANT SELECT ON a.* TO {{name}}; SET PASSWORD FOR {{name}} = {{password}}",
        "GRANT SELECT ON a.* TO {{name}} -- {{expiration}}",
    ] {
        let role = RoleSpec {
            creation_sql: sql.into(),
            ..role()
        };
        assert!(
            matches!(
                target.check_role(&role),
                Err(TargetError::InvalidRole { .. })
            ),
            "{sql}"
        );
    }
    target.check_role(&role()).unwrap();
}
