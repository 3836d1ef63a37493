//! The PostgreSQL target against a real server that checks passwords (a throwaway SCRAM cluster).

use mayfly_core::LoginName;
use mayfly_targets::postgres::PostgresTarget;
use mayfly_targets::{IssuePlan, RoleSpec, Target, TargetError};
use mayfly_testkit::pgcluster::PgCluster;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{ConnectOptions, Connection, Row};

use crate::conformance::{self, BoxFuture, Probe};

fn role() -> RoleSpec {
    RoleSpec {
        name: "readonly".into(),
        creation_sql:
            "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};\n\
                       GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{name}};"
                .into(),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    }
}

/// Logs in to the cluster on `port` as the grant's role (also used by `least_privilege`).
pub(crate) struct PgProbe {
    pub port: u16,
}

impl Probe for PgProbe {
    type Session = sqlx::PgConnection;

    fn login<'a>(
        &'a self,
        login: &'a LoginName,
        secret: &'a SecretString,
    ) -> BoxFuture<'a, Result<sqlx::PgConnection, String>> {
        Box::pin(async move {
            let options = sqlx::postgres::PgConnectOptions::new()
                .host("127.0.0.1")
                .port(self.port)
                .database("postgres")
                .username(login.as_str())
                .password(secret.expose_secret())
                .log_statements(log_off());
            sqlx::PgConnection::connect_with(&options)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn alive<'a>(&'a self, session: &'a mut sqlx::PgConnection) -> BoxFuture<'a, bool> {
        Box::pin(async move { sqlx::query("SELECT 1").execute(&mut *session).await.is_ok() })
    }
}

fn log_off() -> tracing::log::LevelFilter {
    tracing::log::LevelFilter::Off
}

async fn connect_admin(cluster: &PgCluster, database: &str) -> sqlx::PgConnection {
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(cluster.port)
        .database(database)
        .username("postgres")
        .password(&cluster.admin_password)
        .log_statements(log_off());
    sqlx::PgConnection::connect_with(&options).await.unwrap()
}

fn admin_password(cluster: &PgCluster) -> SecretString {
    SecretString::from(cluster.admin_password.clone())
}

#[tokio::test]
async fn postgres_lifecycle() {
    let cluster = PgCluster::start();
    let target = PostgresTarget::new(
        "pg",
        &cluster.url("postgres"),
        Some(&admin_password(&cluster)),
    )
    .unwrap();
    conformance::lifecycle(&target, &role(), &PgProbe { port: cluster.port }).await;
    conformance::batch(&target, &role(), &PgProbe { port: cluster.port }).await;
}

/// A login the target cannot drop (it owns a table in another database) fails alone: the rest of
/// its batch is revoked, and it is left unable to log in.
#[tokio::test]
async fn one_refusal_does_not_fail_the_batch() {
    let cluster = PgCluster::start();
    let target = PostgresTarget::new(
        "pg",
        &cluster.url("postgres"),
        Some(&admin_password(&cluster)),
    )
    .unwrap();
    let probe = PgProbe { port: cluster.port };
    let role = role();
    let mut issued = Vec::new();
    for _ in 0..3 {
        let (login, secret) = conformance::issue_fresh(&target, &role).await;
        issued.push((login, secret));
    }
    let mut admin = connect_admin(&cluster, "postgres").await;
    sqlx::raw_sql("CREATE DATABASE elsewhere")
        .execute(&mut admin)
        .await
        .unwrap();
    let mut other = connect_admin(&cluster, "elsewhere").await;
    let stuck = &issued[1].0;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE t (x int); ALTER TABLE t OWNER TO \"{stuck}\""
    )))
    .execute(&mut other)
    .await
    .unwrap();

    let items: Vec<_> = issued
        .iter()
        .map(|(login, _)| (login.clone(), Some(role.clone())))
        .collect();
    let results = target.revoke_many(&items).await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(TargetError::Refused { .. })),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    for (login, secret) in &issued {
        assert!(
            probe.login(login, secret).await.is_err(),
            "{login} can still log in"
        );
    }
    assert!(target.managed_logins().await.unwrap().contains(stuck));
}

#[tokio::test]
async fn valid_until_is_the_second_fence() {
    let cluster = PgCluster::start();
    let target = PostgresTarget::new(
        "pg",
        &cluster.url("postgres"),
        Some(&admin_password(&cluster)),
    )
    .unwrap();
    let login = conformance::new_login();
    let secret = conformance::new_secret();
    let role = role();
    target
        .issue(&IssuePlan {
            login: &login,
            secret: &secret,
            role: &role,
            expires_at: conformance::in_minutes(15),
            public_key: None,
            issued_at: conformance::in_minutes(0),
        })
        .await
        .unwrap();
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(cluster.port)
        .database("postgres")
        .username("postgres")
        .password(&cluster.admin_password);
    let mut admin = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let row = sqlx::query("SELECT rolvaliduntil IS NOT NULL AND rolvaliduntil > now() + interval '14 minutes' AND rolvaliduntil < now() + interval '16 minutes' AS ok FROM pg_roles WHERE rolname = $1")
        .bind(login.as_str())
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(row.get::<bool, _>("ok"));

    // A credential whose VALID UNTIL has passed is refused by the server itself, even if the
    // broker never revoked it.
    let expired = conformance::new_login();
    target
        .issue(&IssuePlan {
            login: &expired,
            secret: &secret,
            role: &role,
            expires_at: mayfly_core::Timestamp::from_unix_ms(1_000),
            public_key: None,
            issued_at: conformance::in_minutes(0),
        })
        .await
        .unwrap();
    let probe = PgProbe { port: cluster.port };
    assert!(probe.login(&expired, &secret).await.is_err());
    target.revoke(&expired, None).await.unwrap();

    // A role whose SQL says neither LOGIN nor VALID UNTIL still gets both from the broker.
    let bare = RoleSpec {
        creation_sql: "CREATE ROLE {{name}} PASSWORD {{password}};".into(),
        ..role.clone()
    };
    target.check_role(&bare).unwrap();
    let plain = conformance::new_login();
    target
        .issue(&IssuePlan {
            login: &plain,
            secret: &secret,
            role: &bare,
            expires_at: conformance::in_minutes(15),
            public_key: None,
            issued_at: conformance::in_minutes(0),
        })
        .await
        .unwrap();
    probe.login(&plain, &secret).await.unwrap();
    let row =
        sqlx::query("SELECT rolvaliduntil IS NOT NULL AS fenced FROM pg_roles WHERE rolname = $1")
            .bind(plain.as_str())
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(row.get::<bool, _>("fenced"));
    target.revoke(&plain, Some(&bare)).await.unwrap();
}

#[tokio::test]
async fn hostile_inputs_are_refused_or_harmless() {
    let cluster = PgCluster::start();
    let target = PostgresTarget::new(
        "pg",
        &cluster.url("postgres"),
        Some(&admin_password(&cluster)),
    )
    .unwrap();
    // Login names are generated; anything shaped like SQL is refused before it reaches the target.
    for hostile in [
        "mf_x\"; DROP ROLE postgres; --",
        "mf_x' OR '1'='1",
        "mf_`x`",
        "mf_x y",
        "mf_*",
        "mf_x\nDROP",
        &format!("mf_{}", "a".repeat(100)),
    ] {
        assert!(LoginName::parse(hostile).is_err(), "{hostile:?}");
    }
    // A secret full of quotes is quoted, not executed.
    let login = conformance::new_login();
    let secret = SecretString::from("x'; DROP ROLE postgres; --\\'\"".to_owned());
    target
        .issue(&IssuePlan {
            login: &login,
            secret: &secret,
            role: &role(),
            expires_at: conformance::in_minutes(5),
            public_key: None,
            issued_at: conformance::in_minutes(0),
        })
        .await
        .unwrap();
    let probe = PgProbe { port: cluster.port };
    assert!(probe.login(&login, &secret).await.is_ok());
    target.revoke(&login, None).await.unwrap();
    // The admin role survived.
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(cluster.port)
        .database("postgres")
        .username("postgres")
        .password(&cluster.admin_password);
    assert!(sqlx::PgConnection::connect_with(&options).await.is_ok());
    // A role without a password placeholder is refused when it is added.
    let mut bad = role();
    bad.creation_sql = "CREATE ROLE {{name}} LOGIN".into();
    assert!(matches!(
        target.check_role(&bad),
        Err(TargetError::InvalidRole { .. })
    ));
}

#[tokio::test]
async fn an_unreachable_target_is_a_retryable_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = PostgresTarget::new(
        "down",
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        None,
    )
    .unwrap();
    let error = target
        .revoke(&conformance::new_login(), None)
        .await
        .unwrap_err();
    assert!(matches!(error, TargetError::Unavailable { .. }), "{error}");
    assert!(error.is_retryable());
    assert!(!error.to_string().contains("password"));
}

/// The target is sent the SCRAM verifier, never the password: with every statement logged, the
/// clear password is nowhere in the server's log, and the login with it works.
#[tokio::test]
async fn the_clear_password_never_reaches_the_target() {
    let cluster = PgCluster::start();
    let mut admin = connect_admin(&cluster, "postgres").await;
    for sql in [
        "ALTER SYSTEM SET log_statement = 'all'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(sql).execute(&mut admin).await.unwrap();
    }
    let target = PostgresTarget::new(
        "pg",
        &cluster.url("postgres"),
        Some(&admin_password(&cluster)),
    )
    .unwrap();
    let login = conformance::new_login();
    let secret = conformance::new_secret();
    let plan = IssuePlan {
        login: &login,
        secret: &secret,
        role: &role(),
        expires_at: conformance::in_minutes(15),
        public_key: None,
        issued_at: conformance::in_minutes(0),
    };
    target.issue(&plan).await.unwrap();
    // Again (the converging path).
    target.issue(&plan).await.unwrap();
    let probe = PgProbe { port: cluster.port };
    assert!(probe.login(&login, &secret).await.is_ok());
    let stored: String = sqlx::query("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(login.as_str())
        .fetch_one(&mut admin)
        .await
        .unwrap()
        .get("rolpassword");
    assert!(stored.starts_with("SCRAM-SHA-256$16:"), "{stored}");
    // The log is written asynchronously by the logging process: wait for the CREATE ROLE.
    let path = cluster.dir().join("log");
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.matches(login.as_str()).count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(log.contains("CREATE ROLE"), "statements were not logged");
    assert!(log.contains("SCRAM-SHA-256$16:"));
    assert!(
        !log.contains(secret.expose_secret()),
        "the clear password is in the target's log"
    );
}

/// Placeholders quoted the way Vault and OpenBao templates quote them are refused when the role
/// is added, with what to write instead (here `{{name}}` is already a quoted identifier, so
/// `"{{name}}"` would reach the server as `""mf_…""`).
#[tokio::test]
async fn quoted_placeholders_are_refused_with_advice() {
    // Its pool is made lazily: nothing connects.
    let target =
        PostgresTarget::new("pg", "postgres://postgres@127.0.0.1:1/postgres", None).unwrap();
    #[track_caller]
    fn check(
        target: &PostgresTarget,
        creation_sql: &str,
        revocation_sql: Option<&str>,
        advice: bool,
    ) {
        let role = RoleSpec {
            creation_sql: creation_sql.into(),
            revocation_sql: revocation_sql.map(str::to_owned),
            ..role()
        };
        match target.check_role(&role) {
            Err(TargetError::InvalidRole { reason, .. }) if advice => assert!(
                reason.starts_with(
                    "write {{name}} and {{password}} without quotes: Mayfly quotes them"
                ),
                "{reason}"
            ),
            Ok(()) if !advice => {}
            other => panic!("{creation_sql:?} {revocation_sql:?}: {other:?}"),
        }
    }
    let right = "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};";
    check(&target, right, None, false);
    check(
        &target,
        right,
        Some("REVOKE ALL ON app FROM {{name}}"),
        false,
    );
    for vault in [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD {{password}};",
        "CREATE ROLE {{name}} WITH LOGIN PASSWORD '{{password}}';",
        "CREATE ROLE {{name}} PASSWORD {{password}} VALID UNTIL '{{expiration}}';",
        "CREATE ROLE {{name}} PASSWORD {{password}}; GRANT SELECT ON app TO '{{name}}';",
    ] {
        check(&target, vault, None, true);
    }
    check(
        &target,
        right,
        Some("REVOKE ALL ON app FROM \"{{name}}\""),
        true,
    );
}
