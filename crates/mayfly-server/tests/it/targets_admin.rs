//! `POST /v1/targets` checks the target's admin account before it saves anything (issue 17,
//! point 2): an admin that could not revoke (no `CREATEROLE` on PostgreSQL, no `CLIENT KILL` on
//! Redis) is refused with 400 naming what is missing, the least-privileged admin the docs
//! recommend is accepted, and an unreachable target is 503; a refused target is not saved.
//!
//! `POST /v1/roles` tries a PostgreSQL role's creation SQL on the target, rolled back (point 13):
//! Vault-style quoted placeholders are refused with what to write instead, SQL the server refuses
//! is refused with the server's error, and nothing is left on the target.

use mayfly_testkit::TestBroker;
use mayfly_testkit::pgcluster::PgCluster;
use serde_json::{Value, json};

fn target(kind: &str, name: &str, url: &str, user: &str, password: &str) -> Value {
    json!({"kind": kind, "name": name, "url": url, "admin_user": user, "admin_password": password})
}

async fn saved_targets(broker: &TestBroker, admin: &str) -> Vec<String> {
    let list = broker
        .expect(200, "GET", "/v1/targets", Some(admin), None)
        .await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn postgres_admin_without_createrole_is_refused_and_the_minimal_one_accepted() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let cluster = PgCluster::start();
    let url = format!("postgres://127.0.0.1:{}/postgres", cluster.port);

    let weak = cluster.create_login("weak_admin", "").await;
    let body = broker
        .expect(
            400,
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(target("postgres", "pg", &url, "weak_admin", &weak)),
        )
        .await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("field `admin_user`: the admin role `weak_admin` lacks CREATEROLE ("),
        "{message}"
    );
    assert!(
        message.contains("`ALTER ROLE \"weak_admin\" CREATEROLE`"),
        "{message}"
    );
    assert!(!message.contains(&weak), "the password is in the answer");
    assert!(saved_targets(&broker, &admin).await.is_empty());

    // A wrong password is refused as well, by the server, without the password.
    let body = broker
        .expect(
            400,
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(target(
                "postgres",
                "pg",
                &url,
                "weak_admin",
                "not-the-password",
            )),
        )
        .await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("password authentication failed") && !message.contains("not-the-password"),
        "{message}"
    );

    // The minimal admin: CREATEROLE, neither superuser nor pg_signal_backend.
    let minimal = cluster.create_login("mayfly_admin", "CREATEROLE").await;
    broker
        .expect(
            200,
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(target("postgres", "pg", &url, "mayfly_admin", &minimal)),
        )
        .await;
    assert_eq!(saved_targets(&broker, &admin).await, ["pg"]);
}

#[tokio::test]
async fn redis_admin_that_cannot_kill_clients_is_refused() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let user = format!(
        "mayfly_t_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let redis = |args: &[&str]| {
        let output = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", "6379"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    };
    let rules = [
        "+acl|setuser",
        "+acl|deluser",
        "+acl|users",
        "+acl|getuser",
        "+client|list",
    ];
    let secret = format!(">{password}");
    let mut setuser = vec![
        "ACL",
        "SETUSER",
        user.as_str(),
        "reset",
        "on",
        secret.as_str(),
    ];
    setuser.extend(rules);
    redis(&setuser);

    let (status, body) = broker
        .call(
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(target(
                "redis",
                "cache",
                "redis://127.0.0.1:6379",
                &user,
                &password,
            )),
        )
        .await;
    let refused = saved_targets(&broker, &admin).await.is_empty();
    // With the kill allowed, the same admin is accepted.
    redis(&["ACL", "SETUSER", &user, "+client|kill"]);
    let (accepted, answer) = broker
        .call(
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(target(
                "redis",
                "cache",
                "redis://127.0.0.1:6379",
                &user,
                &password,
            )),
        )
        .await;
    redis(&["ACL", "DELUSER", &user]);

    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        format!(
            "field `admin_user`: the admin user `{user}` may not run CLIENT KILL: allow with `ACL SETUSER {user} +client|kill`"
        )
    );
    assert!(refused, "a refused target was saved");
    assert_eq!(accepted, 200, "{answer}");
}

#[tokio::test]
async fn an_unreachable_target_is_503_and_not_saved() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let body = broker
        .expect(
            503,
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(target(
                "postgres",
                "down",
                &format!("postgres://127.0.0.1:{port}/postgres"),
                "postgres",
                "secret-password",
            )),
        )
        .await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("target `down` is unreachable (")
            && message.ends_with("nothing was saved"),
        "{message}"
    );
    assert!(!message.contains("secret-password"), "{message}");
    assert!(saved_targets(&broker, &admin).await.is_empty());
}

/// The roles `POST /v1/roles` saved, by name.
async fn saved_roles(broker: &TestBroker, admin: &str) -> Vec<String> {
    let list = broker
        .expect(200, "GET", "/v1/roles", Some(admin), None)
        .await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn role_creation_sql_is_tried_on_the_target_and_rolled_back() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin_token.clone().unwrap();
    let cluster = PgCluster::start();
    let url = format!("postgres://127.0.0.1:{}/postgres", cluster.port);
    // The least-privileged admin, with GRANT OPTION on one table only.
    let password = cluster.create_login("mayfly_admin", "CREATEROLE").await;
    let mut superuser = cluster.connect("postgres").await;
    sqlx::raw_sql(
        "CREATE TABLE app_data (x int); CREATE TABLE payroll (x int);
         GRANT SELECT ON app_data TO mayfly_admin WITH GRANT OPTION;",
    )
    .execute(&mut superuser)
    .await
    .unwrap();
    broker
        .expect(
            200,
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(target("postgres", "pg", &url, "mayfly_admin", &password)),
        )
        .await;
    let role = |name: &str, sql: &str| json!({"target": "pg", "name": name, "max_ttl_seconds": 3600, "creation_sql": sql});
    let refusal = |body: &Value| body["error"]["message"].as_str().unwrap().to_owned();

    // As Vault and OpenBao users write it: refused, with what to write instead.
    let vault = "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';\n\
                 GRANT SELECT ON app_data TO \"{{name}}\";";
    let body = broker
        .expect(
            400,
            "POST",
            "/v1/roles",
            Some(&admin),
            Some(role("vault", vault)),
        )
        .await;
    assert!(
        refusal(&body)
            .contains("write {{name}} and {{password}} without quotes: Mayfly quotes them"),
        "{body}"
    );
    assert!(
        refusal(&body).starts_with("field `creation_sql`: "),
        "{body}"
    );

    // The server's own refusals, found by the dry run: a table that does not exist, a privilege
    // the admin cannot grant.
    let missing = "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};\n\
                   GRANT SELECT ON no_such_table TO {{name}};";
    let body = broker
        .expect(
            400,
            "POST",
            "/v1/roles",
            Some(&admin),
            Some(role("missing", missing)),
        )
        .await;
    assert_eq!(
        refusal(&body),
        "field `creation_sql`: role `missing` cannot be expressed on this target: the creation SQL failed in a dry run on the target (rolled back): relation \"no_such_table\" does not exist"
    );
    let payroll = "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};\n\
                   GRANT SELECT ON payroll TO {{name}};";
    let body = broker
        .expect(
            400,
            "POST",
            "/v1/roles",
            Some(&admin),
            Some(role("payroll", payroll)),
        )
        .await;
    assert!(
        refusal(&body).ends_with("(rolled back): permission denied for table payroll"),
        "{body}"
    );

    // SQL that commits by itself would leave its role: refused, and the role is gone.
    let commits = "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};\n\
                   COMMIT;\nGRANT SELECT ON app_data TO {{name}};";
    let body = broker
        .expect(
            400,
            "POST",
            "/v1/roles",
            Some(&admin),
            Some(role("commits", commits)),
        )
        .await;
    assert!(
        refusal(&body).contains("the creation SQL ends its transaction (COMMIT"),
        "{body}"
    );

    // Written right: accepted.
    let right = "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};\n\
                 GRANT SELECT ON app_data TO {{name}};";
    broker
        .expect(
            200,
            "POST",
            "/v1/roles",
            Some(&admin),
            Some(role("reader", right)),
        )
        .await;
    assert_eq!(saved_roles(&broker, &admin).await, ["reader"]);

    // No dry run left a role (nor a grant to one) behind.
    let left: Vec<String> =
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'mf\\_%'")
            .fetch_all(&mut superuser)
            .await
            .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let grants: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee LIKE 'mf\\_%'",
    )
    .fetch_one(&mut superuser)
    .await
    .unwrap();
    assert_eq!(grants, 0);
}
