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

/// The password never reaches the server in clear: the account holds its hash, and the statement
/// the server saw (its general log) carries the hash only.
#[tokio::test]
async fn the_clear_password_never_reaches_mariadb() {
    let mut admin = admin().await;
    let target = MysqlTarget::new("maria", URL, None).unwrap();
    let login = conformance::new_login();
    let secret = conformance::new_secret();
    let plan = mayfly_targets::IssuePlan {
        login: &login,
        secret: &secret,
        role: &role(),
        expires_at: conformance::in_minutes(15),
        public_key: None,
        issued_at: conformance::in_minutes(0),
    };
    target.issue(&plan).await.unwrap();
    let row = sqlx::query("SELECT authentication_string AS a FROM mysql.user WHERE User = ?")
        .bind(login.as_str())
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let stored: String = row.try_get("a").unwrap();
    assert_eq!(
        stored,
        mayfly_crypto::mysql::native_password_hash(&secret).expose_secret()
    );
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
