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

/// A role's SQL is exactly `GRANT <privileges> ON <object> TO {{name}}` statements (issue 17,
/// point 10): everything else is refused when the role is added, whatever its spelling — a
/// statement hidden behind a comment, another grantee, an option that hands on privileges, a
/// placeholder other than `{{name}}`.
#[tokio::test]
async fn hostile_roles_are_refused() {
    let target = MysqlTarget::new("maria", URL, None).unwrap();
    for sql in [
        "GRANT ALL ON *.* TO 'root'@'%'",
        "CREATE USER {{name}} IDENTIFIED BY 'x'; GRANT SELECT ON a.* TO {{name}}",
        "GRANT SELECT ON a.* TO {{name}} IDENTIFIED BY 'known'",
        "GRANT SELECT ON a.* TO {{name}}; SET PASSWORD FOR {{name}} = {{password}}",
        "GRANT SELECT ON a.* TO {{name}} -- {{expiration}}",
        // Statements the old substring check let through.
        "CREATE/**/USER {{name}}",
        "GRANT SELECT ON a.* TO {{name}}; CREATE/**/USER 'evil'@'%'",
        "GRANT SELECT ON a.* TO {{name}}; CREATE\tUSER 'evil'@'%'",
        "GRANT SELECT ON a.* TO {{name}}; CREATE\nUSER 'evil'@'%'",
        "GRANT SELECT ON a.* TO {{name}}; DROP USER 'root'@'localhost'",
        "GRANT SELECT ON a.* TO {{name}}; GRANT ALL ON *.* TO 'root'@'%'",
        "GRANT SELECT ON a.* TO {{name}}; SET PASSWORD FOR 'root'@'%' = PASSWORD('x')",
        "GRANT SELECT ON a.* TO {{name}}; INSTALL SONAME 'auth_ed25519'",
        // Another grantee, or the grantee not as the broker names it.
        "GRANT SELECT ON a.* TO {{name}}, other",
        "GRANT SELECT ON a.* TO {{name}}, 'other'@'%'",
        "GRANT SELECT ON a.* TO other, {{name}}",
        "GRANT SELECT ON a.* TO {{name}}, {{name}}",
        "GRANT SELECT ON a.* TO CURRENT_USER",
        "GRANT SELECT ON a.* TO `{{name}}`",
        "GRANT SELECT ON a.* TO PUBLIC",
        // Comments, of every kind MariaDB reads (executable ones included).
        "GRANT SELECT ON a.* TO {{name}} /* x */",
        "/*!GRANT ALL ON *.* TO 'root'@'%' */ GRANT SELECT ON a.* TO {{name}}",
        "/*M!100000 CREATE USER evil */ GRANT SELECT ON a.* TO {{name}}",
        "GRANT SELECT ON a.* TO {{name}} # x",
        "GRANT SELECT ON a.* TO {{name}} -- x",
        "GRANT SELECT ON a.* TO {{name}}--x",
        // Options that hand privileges on, set credentials or change the account.
        "GRANT SELECT ON a.* TO {{name}} WITH GRANT OPTION",
        "GRANT GRANT OPTION ON a.* TO {{name}}",
        "GRANT SELECT, GRANT OPTION ON a.* TO {{name}}",
        "GRANT reader TO {{name}} WITH ADMIN OPTION",
        "GRANT reader TO {{name}}",
        "GRANT PROXY ON root TO {{name}}",
        "GRANT SELECT ON a.* TO {{name}} IDENTIFIED VIA unix_socket",
        "GRANT SELECT ON a.* TO {{name}} REQUIRE NONE",
        "GRANT SELECT ON a.* TO {{name}} WITH MAX_USER_CONNECTIONS 0",
        // Other placeholders, strings, odd characters.
        "GRANT SELECT ON a.* TO {{name}} {{password}}",
        "GRANT SELECT ON `{{expiration}}`.* TO {{name}}",
        "GRANT SELECT ON a.* TO {{ name }}",
        "GRANT SELECT ON a.* TO {{NAME}}",
        "GRANT SELECT ON 'a'.* TO {{name}}",
        "GRANT SELECT ON \"a\".* TO {{name}}",
        "GRANT SELECT ON a.* TO {{name}}\\; CREATE USER evil",
        "GRANT SELECT ON a.* TO {{name}}\u{a0}",
        "GRANT SELECT ON a.* TO {{name}}\u{0}",
        "GRANT SELECT ON a.* TO {{name}}; GRANT SELECT ON `unterminated.* TO {{name}}",
        // Not a whole GRANT.
        "",
        " ; ",
        "GRANT SELECT ON a.* TO",
        "GRANT SELECT TO {{name}}",
        "GRANT ON a.* TO {{name}}",
        "GRANT SELECT ON TO {{name}}",
        "GRANT SELECT ON a.*.* TO {{name}}",
        "GRANT FROBNICATE ON a.* TO {{name}}",
        "REVOKE SELECT ON a.* FROM {{name}}",
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
            "accepted: {sql:?}"
        );
    }
    // The revocation SQL is held to the same shape: `REVOKE … ON … FROM {{name}}` only.
    for sql in [
        "REVOKE SELECT ON a.* FROM {{name}}; CREATE/**/USER 'evil'@'%'",
        "REVOKE SELECT ON a.* FROM {{name}}, other",
        "GRANT SELECT ON a.* TO {{name}}",
        "DROP USER 'root'@'localhost'",
    ] {
        let role = RoleSpec {
            revocation_sql: Some(sql.into()),
            ..role()
        };
        assert!(
            matches!(
                target.check_role(&role),
                Err(TargetError::InvalidRole { .. })
            ),
            "accepted as revocation SQL: {sql:?}"
        );
    }
    for sql in [
        "GRANT SELECT ON mayfly_it.* TO {{name}};",
        "grant select, insert, update (a, b) on `app`.`orders` to {{name}}",
        "GRANT SELECT ON *.* TO {{name}}",
        "GRANT SELECT ON * TO {{name}}",
        "GRANT ALL PRIVILEGES ON app.* TO {{name}}",
        "GRANT EXECUTE ON PROCEDURE app.refresh TO {{name}};\r\nGRANT SELECT ON TABLE app.t TO {{name}};",
        "GRANT CREATE TEMPORARY TABLES, LOCK TABLES, SHOW VIEW ON app.* TO {{name}}",
        "GRANT SELECT ON `we;ird``name`.* TO {{name}};;",
        "\tGRANT\nSELECT\nON app.*\nTO\n{{name}}\n",
    ] {
        let role = RoleSpec {
            creation_sql: sql.into(),
            revocation_sql: Some("REVOKE SELECT ON app.* FROM {{name}};".into()),
            ..role()
        };
        if let Err(error) = target.check_role(&role) {
            panic!("refused {sql:?}: {error}");
        }
    }
}

/// Roles that slip a statement past a substring check (issue 17, point 10), issued on the real
/// server. With the old check `CREATE/**/USER` passed, and issuing made a passwordless account
/// outside the broker's names that no revocation or sweep would ever drop; `TO {{name}}, other`
/// gave another account privileges that outlive the grant. Now such a role is refused when it is
/// added, and again at issue and revocation (a role stored before the fix may still be in the
/// store), and none of it reaches MariaDB.
#[tokio::test]
async fn smuggled_statements_never_reach_mariadb() {
    let mut admin = admin().await;
    let target = MysqlTarget::new("maria", URL, None).unwrap();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let smuggled = format!("mayfly_smuggled_{tag}");
    let victim = format!("mayfly_victim_{tag}");
    let smuggled_at_revoke = format!("mayfly_smuggled_r_{tag}");
    // An account that exists already, without privileges (and locked: nobody logs in as it).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE USER '{victim}'@'%' ACCOUNT LOCK"
    )))
    .execute(&mut admin)
    .await
    .unwrap();

    let create = RoleSpec {
        creation_sql: format!(
            "GRANT SELECT ON mayfly_it.* TO {{{{name}}}}; CREATE/**/USER '{smuggled}'@'%'"
        ),
        ..role()
    };
    let other = RoleSpec {
        creation_sql: format!("GRANT SELECT ON mayfly_it.* TO {{{{name}}}}, '{victim}'@'%'"),
        ..role()
    };
    let mut outcomes = Vec::new();
    for role in [&create, &other] {
        let login = conformance::new_login();
        let secret = conformance::new_secret();
        let checked = target.check_role(role);
        let issued = target
            .issue(&mayfly_targets::IssuePlan {
                login: &login,
                secret: &secret,
                role,
                expires_at: conformance::in_minutes(15),
                public_key: None,
                issued_at: conformance::in_minutes(0),
            })
            .await;
        target.revoke(&login, None).await.unwrap();
        outcomes.push((role.creation_sql.clone(), checked, issued));
    }
    // A revocation SQL smuggling the same, from a role stored before the check: the grant is
    // revoked all the same, and the script is not run.
    let at_revoke = RoleSpec {
        revocation_sql: Some(format!(
            "REVOKE SELECT ON mayfly_it.* FROM {{{{name}}}}; CREATE/**/USER '{smuggled_at_revoke}'@'%'"
        )),
        ..role()
    };
    let (login, secret) = conformance::issue_fresh(&target, &role()).await;
    let revoked = target.revoke(&login, Some(&at_revoke)).await;
    let proof = target.verify_revoked(&login, &secret).await;

    // What reached the server, looked at after revocation: the smuggled account, and whether it
    // lets anyone in without a password; the other account's grants.
    let smuggled_exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mysql.user WHERE User = ?")
        .bind(&smuggled)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let smuggled_at_revoke_exists: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM mysql.user WHERE User = ?")
            .bind(&smuggled_at_revoke)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    let passwordless = sqlx::MySqlConnection::connect_with(
        &sqlx::mysql::MySqlConnectOptions::new()
            .host("127.0.0.1")
            .port(3306)
            .username(&smuggled)
            .log_statements(tracing::log::LevelFilter::Off),
    )
    .await
    .is_ok();
    let victim_grants: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SHOW GRANTS FOR '{victim}'@'%'"
    )))
    .fetch_all(&mut admin)
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP USER IF EXISTS '{smuggled}'@'%', '{smuggled_at_revoke}'@'%', '{victim}'@'%'"
    )))
    .execute(&mut admin)
    .await
    .unwrap();

    revoked.unwrap();
    proof.unwrap();
    assert_eq!(
        smuggled_at_revoke_exists, 0,
        "the revocation SQL's smuggled CREATE USER ran: `{smuggled_at_revoke}`@`%` exists"
    );
    assert_eq!(
        smuggled_exists, 0,
        "the smuggled CREATE USER ran: `{smuggled}`@`%` survived revocation \
         (passwordless login works: {passwordless})"
    );
    assert!(
        !victim_grants
            .iter()
            .any(|grant| grant.contains("mayfly_it")),
        "another account was granted privileges: {victim_grants:?}"
    );
    for (sql, checked, issued) in outcomes {
        assert!(
            matches!(checked, Err(TargetError::InvalidRole { .. })),
            "check_role accepted {sql:?}"
        );
        assert!(
            matches!(issued, Err(TargetError::InvalidRole { .. })),
            "issue ran {sql:?}: {issued:?}"
        );
    }
}

/// The shapes the check accepts are SQL MariaDB runs: several statements, a column list, quoted
/// names, an object kind, a `;` inside a quoted name, and the revocation SQL.
#[tokio::test]
async fn accepted_roles_run_on_mariadb() {
    let mut admin = admin().await;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS mayfly_it.`shapes;1` (a INT, b INT);\n\
         CREATE TABLE IF NOT EXISTS mayfly_it.shapes (a INT, b INT)",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let target = MysqlTarget::new("maria", URL, None).unwrap();
    let role = RoleSpec {
        creation_sql: "grant select, insert (a) on `mayfly_it`.`shapes;1` to {{name}};\r\n\
                       GRANT SELECT ON TABLE mayfly_it.shapes TO {{name}};\n\
                       GRANT SHOW VIEW ON mayfly_it.* TO {{name}};"
            .into(),
        revocation_sql: Some("REVOKE SELECT ON TABLE mayfly_it.shapes FROM {{name}}".into()),
        ..role()
    };
    target.check_role(&role).unwrap();
    let (login, secret) = conformance::issue_fresh(&target, &role).await;
    let mut session = MysqlProbe.login(&login, &secret).await.unwrap();
    sqlx::query("SELECT a, b FROM mayfly_it.shapes")
        .execute(&mut session)
        .await
        .unwrap();
    sqlx::query("INSERT INTO mayfly_it.`shapes;1` (a) VALUES (1)")
        .execute(&mut session)
        .await
        .unwrap();
    // Only the column it was given.
    assert!(
        sqlx::query("INSERT INTO mayfly_it.`shapes;1` (b) VALUES (1)")
            .execute(&mut session)
            .await
            .is_err()
    );
    target.revoke(&login, Some(&role)).await.unwrap();
    target.verify_revoked(&login, &secret).await.unwrap();
}
