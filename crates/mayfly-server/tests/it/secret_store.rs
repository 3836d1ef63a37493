//! The secret store against a real broker, on SQLite and PostgreSQL: versions and reads of
//! version N; check-and-set (0 on a new secret, a mismatch is 409 naming the current version);
//! soft delete hides from reads and listings, undelete restores, destroy removes the ciphertext
//! from the row; Cedar decides reads per environment (`read_secret` in `Environment::"shop/dev"`)
//! and writes (`write_secret`; admins always may write, never read without a policy); refused
//! reads are audited; hostile paths and values get a 400 naming the part; neither the audit file
//! nor the database holds a value; `read-all` gives only the permitted secrets.

use mayfly_core::SecretPath;
use mayfly_testkit::{Options, TestBroker};
use serde_json::{Value, json};

const POLICY: &str = r#"
@id("dev-reads-dev")
permit (principal in Group::"dev", action == Action::"read_secret", resource in Environment::"shop/dev");

@id("alice-reads-stripe")
permit (principal == User::"alice", action == Action::"read_secret", resource == Secret::"shop/prod/STRIPE_KEY");

@id("alice-writes-dev")
permit (principal == User::"alice", action == Action::"write_secret", resource in Environment::"shop/dev");
"#;

const DEV_VALUE_1: &str = "dev-value-one-7f3a9c";
const DEV_VALUE_2: &str = "dev-value-two-b81e22";
const PROD_VALUE: &str = "sk_live_prod-4e1d0b99c2";

async fn audit_kinds(broker: &TestBroker) -> Vec<(String, String)> {
    broker
        .broker
        .store()
        .stored_audit_events(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.body))
        .collect()
}

#[tokio::test]
async fn secret_store_on_sqlite() {
    let broker = TestBroker::start(Options {
        audit_file: true,
        ..Options::default()
    })
    .await;
    story(&broker).await;
    no_value_at_rest_sqlite(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn secret_store_on_postgres() {
    let db = mayfly_testkit::postgres::ThrowawayDb::create().await;
    let broker = TestBroker::start(Options {
        store_url: Some(db.url.clone()),
        audit_file: true,
        ..Options::default()
    })
    .await;
    story(&broker).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let rows: Vec<(String, i64, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT name, version, blob FROM kv_secrets WHERE project = 'shop' ORDER BY name, version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    check_rows(&rows);
    // No table holds a value in clear, as bytes or as text.
    let dump: Vec<(String,)> =
        sqlx::query_as("SELECT string_agg(t::text, ',') FROM (SELECT * FROM kv_secrets) t")
            .fetch_all(&pool)
            .await
            .unwrap();
    for value in [DEV_VALUE_1, DEV_VALUE_2, PROD_VALUE] {
        assert!(!dump[0].0.contains(value));
        let hex = hex::encode(value);
        assert!(
            !dump[0].0.contains(&hex),
            "the value is in the table as hex"
        );
    }
    let events: Vec<(String,)> = sqlx::query_as("SELECT string_agg(body, ',') FROM audit_events")
        .fetch_all(&pool)
        .await
        .unwrap_or_else(|_| vec![(String::new(),)]);
    for value in [DEV_VALUE_1, DEV_VALUE_2, PROD_VALUE] {
        assert!(!events[0].0.contains(value));
    }
    pool.close().await;
    no_value_in_audit_file(&broker);
    broker.stop().await;
    db.drop_db().await;
}

/// The destroyed version has no ciphertext left; the others have one, never the value.
fn check_rows(rows: &[(String, i64, Option<Vec<u8>>)]) {
    let dev: Vec<&(String, i64, Option<Vec<u8>>)> =
        rows.iter().filter(|r| r.0 == "DB_URL").collect();
    assert_eq!(dev.len(), 3, "{rows:?}");
    assert!(dev[0].2.is_none(), "version 1 was destroyed");
    assert!(dev[1].2.is_some());
    for (_, _, blob) in rows {
        if let Some(blob) = blob {
            for value in [DEV_VALUE_1, DEV_VALUE_2, PROD_VALUE] {
                assert!(
                    !blob.windows(value.len()).any(|w| w == value.as_bytes()),
                    "a value is stored in clear"
                );
            }
        }
    }
}

async fn no_value_at_rest_sqlite(broker: &TestBroker) {
    let path = broker.dir.path().join("mayfly.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let rows: Vec<(String, i64, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT name, version, blob FROM kv_secrets WHERE project = 'shop' ORDER BY name, version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    check_rows(&rows);
    pool.close().await;
    // Every file of the store (database, WAL), byte by byte.
    for entry in std::fs::read_dir(broker.dir.path()).unwrap() {
        let file = entry.unwrap().path();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("mayfly.db") {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap();
        for value in [DEV_VALUE_1, DEV_VALUE_2, PROD_VALUE] {
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "`{name}` holds a value in clear"
            );
        }
    }
    no_value_in_audit_file(broker);
}

fn no_value_in_audit_file(broker: &TestBroker) {
    let audit = std::fs::read(broker.audit_file()).unwrap_or_default();
    for value in [DEV_VALUE_1, DEV_VALUE_2, PROD_VALUE] {
        assert!(
            !audit.windows(value.len()).any(|w| w == value.as_bytes()),
            "the audit file holds a value"
        );
    }
}

async fn story(broker: &TestBroker) {
    broker.set_policy(POLICY).await;
    let admin = broker.admin_token.clone().unwrap();
    let alice = broker.login("alice").await;
    let bob = broker.login("bob").await;
    let dev = "/v1/secrets/shop/dev/DB_URL";
    let prod = "/v1/secrets/shop/prod/STRIPE_KEY";

    // cas 0 on a new secret; a second cas 0 conflicts, naming the current version.
    let put = broker
        .expect(
            200,
            "PUT",
            dev,
            Some(&alice),
            Some(json!({"value": DEV_VALUE_1, "cas": 0})),
        )
        .await;
    assert_eq!(put["version"], 1);
    let (status, body) = broker
        .call(
            "PUT",
            dev,
            Some(&alice),
            Some(json!({"value": "x", "cas": 0})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("is 1"),
        "{body}"
    );
    let put = broker
        .expect(
            200,
            "PUT",
            dev,
            Some(&alice),
            Some(json!({"value": DEV_VALUE_2, "cas": 1})),
        )
        .await;
    assert_eq!(put["version"], 2);
    let (status, body) = broker
        .call(
            "PUT",
            dev,
            Some(&alice),
            Some(json!({"value": "x", "cas": 1})),
        )
        .await;
    assert_eq!(status, 409);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("is 2"),
        "{body}"
    );
    // Without cas: the next version.
    let put = broker
        .expect(
            200,
            "PUT",
            dev,
            Some(&alice),
            Some(json!({"value": DEV_VALUE_2})),
        )
        .await;
    assert_eq!(put["version"], 3);

    // Writes: bob may not (no write policy), admins may always, alice not in prod.
    broker
        .expect(403, "PUT", dev, Some(&bob), Some(json!({"value": "x"})))
        .await;
    broker
        .expect(403, "PUT", prod, Some(&alice), Some(json!({"value": "x"})))
        .await;
    broker
        .expect(
            200,
            "PUT",
            prod,
            Some(&admin),
            Some(json!({"value": PROD_VALUE})),
        )
        .await;

    // Reads: the current version, version N, with no-store.
    let response = broker
        .raw()
        .await
        .get(format!("{}{dev}", broker.addr))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("cache-control").unwrap(), "no-store");
    let got: Value = response.json().await.unwrap();
    assert_eq!(got["value"], DEV_VALUE_2);
    assert_eq!(got["version"], 3);
    assert_eq!(got["path"], "shop/dev/DB_URL");
    let v1 = broker
        .expect(200, "GET", &format!("{dev}?version=1"), Some(&bob), None)
        .await;
    assert_eq!(v1["value"], DEV_VALUE_1);
    broker
        .expect(404, "GET", &format!("{dev}?version=9"), Some(&bob), None)
        .await;

    // Cedar: dev reads dev, not prod; alice reads the one prod secret; admins have no read policy.
    broker.expect(403, "GET", prod, Some(&bob), None).await;
    let stripe = broker.expect(200, "GET", prod, Some(&alice), None).await;
    assert_eq!(stripe["value"], PROD_VALUE);
    broker.expect(403, "GET", dev, Some(&admin), None).await;
    broker.expect(401, "GET", dev, None, None).await;
    broker
        .expect(401, "GET", dev, Some("not-a-token"), None)
        .await;
    let kinds = audit_kinds(broker).await;
    let refused: Vec<&String> = kinds
        .iter()
        .filter(|(k, _)| k == "secret.read.refused")
        .map(|(_, e)| e)
        .collect();
    assert!(
        refused
            .iter()
            .any(|e| e.contains("shop/prod/STRIPE_KEY") && e.contains("user:bob")),
        "{refused:?}"
    );
    let written: Vec<&String> = kinds
        .iter()
        .filter(|(k, _)| k == "secret.written")
        .map(|(_, e)| e)
        .collect();
    assert!(written.len() >= 4, "{written:?}");
    assert!(written[0].contains("shop/dev/DB_URL") && written[0].contains("\"version\":1"));
    let reads = kinds.iter().filter(|(k, _)| k == "secret.read").count();
    assert_eq!(reads, 3, "each value read is audited once");

    // The proxy's read: no policy, the current live value.
    let path: SecretPath = "shop/dev/DB_URL".parse().unwrap();
    let injected = broker.broker.secret_for_injection(&path).await.unwrap();
    assert_eq!(
        mayfly_crypto::ExposeSecret::expose_secret(&injected),
        DEV_VALUE_2
    );
    let missing: SecretPath = "shop/dev/NOPE".parse().unwrap();
    assert!(matches!(
        broker.broker.secret_for_injection(&missing).await,
        Err(mayfly_server::error::BrokerError::NotFound(_))
    ));

    // Listing: names and versions, never values; bob sees dev, not prod.
    let list = broker
        .expect(200, "GET", "/v1/secrets/shop/dev", Some(&bob), None)
        .await;
    assert_eq!(list["secrets"][0]["name"], "DB_URL");
    assert_eq!(list["secrets"][0]["version"], 3);
    assert!(!list.to_string().contains(DEV_VALUE_2));
    let prod_list = broker
        .expect(200, "GET", "/v1/secrets/shop/prod", Some(&bob), None)
        .await;
    assert_eq!(prod_list["secrets"].as_array().unwrap().len(), 0);
    let prod_list = broker
        .expect(200, "GET", "/v1/secrets/shop/prod", Some(&admin), None)
        .await;
    assert_eq!(prod_list["secrets"].as_array().unwrap().len(), 1);

    // Soft delete of the current version hides it from reads and listings; undelete restores.
    broker.expect(403, "DELETE", dev, Some(&bob), None).await;
    let deleted = broker.expect(200, "DELETE", dev, Some(&alice), None).await;
    assert_eq!(deleted["versions"], json!([3]));
    broker.expect(404, "GET", dev, Some(&bob), None).await;
    assert!(broker.broker.secret_for_injection(&path).await.is_err());
    let list = broker
        .expect(200, "GET", "/v1/secrets/shop/dev", Some(&bob), None)
        .await;
    assert_eq!(list["secrets"].as_array().unwrap().len(), 0);
    broker.expect(409, "DELETE", dev, Some(&alice), None).await;
    broker
        .expect(200, "POST", &format!("{dev}/undelete"), Some(&alice), None)
        .await;
    let got = broker.expect(200, "GET", dev, Some(&bob), None).await;
    assert_eq!(got["version"], 3);
    broker
        .expect(409, "POST", &format!("{dev}/undelete"), Some(&alice), None)
        .await;

    // Destroy version 1: gone for good, in history as destroyed.
    broker
        .expect(
            403,
            "POST",
            &format!("{dev}/destroy"),
            Some(&bob),
            Some(json!({"versions": [1]})),
        )
        .await;
    broker
        .expect(
            409,
            "POST",
            &format!("{dev}/destroy"),
            Some(&alice),
            Some(json!({"versions": [1, 42]})),
        )
        .await;
    broker
        .expect(
            200,
            "POST",
            &format!("{dev}/destroy"),
            Some(&alice),
            Some(json!({"versions": [1]})),
        )
        .await;
    broker
        .expect(404, "GET", &format!("{dev}?version=1"), Some(&bob), None)
        .await;
    broker
        .expect(
            409,
            "POST",
            &format!("{dev}/undelete?version=1"),
            Some(&alice),
            None,
        )
        .await;
    let history = broker
        .expect(200, "GET", &format!("{dev}/history"), Some(&bob), None)
        .await;
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    assert!(versions[0]["destroyed_at_ms"].is_i64());
    assert!(versions[1]["destroyed_at_ms"].is_null());
    assert_eq!(versions[2]["created_by"], "user:alice");
    assert!(!history.to_string().contains(DEV_VALUE_2));
    let (status, _) = broker
        .call("GET", &format!("{prod}/history"), Some(&bob), None)
        .await;
    assert_eq!(status, 403);

    // read-all: only what the caller may read, each audited.
    broker
        .expect(
            200,
            "PUT",
            "/v1/secrets/shop/dev/API_KEY",
            Some(&alice),
            Some(json!({"value": "api-1"})),
        )
        .await;
    let all = broker
        .expect(
            200,
            "POST",
            "/v1/secrets/shop/dev/read-all",
            Some(&bob),
            None,
        )
        .await;
    let names: Vec<&str> = all["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shop/dev/API_KEY", "shop/dev/DB_URL"]);
    assert_eq!(all["n_refused"], 0);
    let all = broker
        .expect(
            200,
            "POST",
            "/v1/secrets/shop/prod/read-all",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(all["secrets"].as_array().unwrap().len(), 0);
    assert_eq!(all["n_refused"], 1);
    let all = broker
        .expect(
            200,
            "POST",
            "/v1/secrets/shop/prod/read-all",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(all["secrets"][0]["value"], PROD_VALUE);

    hostile(broker, &alice).await;
}

/// An HTTP/1.1 call written by hand, so the path reaches the broker exactly as given (an HTTP
/// client would resolve `%2e%2e` segments before sending).
async fn raw_call(
    broker: &TestBroker,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = broker.addr.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

async fn hostile(broker: &TestBroker, token: &str) {
    let field_of = |body: &Value| body["error"]["message"].as_str().unwrap_or("").to_owned();
    let long = "A".repeat(200);
    for (path, field) in [
        ("/v1/secrets/shop/dev/%2e%2e", "name"),
        ("/v1/secrets/%2e%2e/dev/X", "project"),
        ("/v1/secrets/shop/%2E%2E/X", "environment"),
        ("/v1/secrets/shop/dev/..%2f..%2fX", "name"),
        ("/v1/secrets/shop/dev/A%00B", "name"),
        ("/v1/secrets/shop/dev/A%0AB", "name"),
        ("/v1/secrets/Shop/dev/X", "project"),
        ("/v1/secrets/shop/dev/X-Y", "name"),
        ("/v1/secrets/shop/dev/%C3%A9", "name"),
        (&format!("/v1/secrets/shop/dev/{long}") as &str, "name"),
        ("/v1/secrets/a/b/c/d", "path"),
        ("/v1/secrets/a/b/c/d/e", "path"),
    ] {
        for method in ["GET", "PUT"] {
            let body = (method == "PUT").then(|| json!({"value": "v"}));
            let (status, answer) = raw_call(broker, method, path, token, body).await;
            assert_eq!(status, 400, "{method} {path}: {answer}");
            assert!(
                field_of(&answer).contains(&format!("`{field}`")),
                "{method} {path}: {answer}"
            );
        }
    }
    let (status, answer) = broker
        .call(
            "GET",
            "/v1/secrets/shop/dev/X?version=abc",
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert!(field_of(&answer).contains("`version`"), "{answer}");
    let (status, answer) = broker
        .call("GET", "/v1/secrets/shop/dev/X?version=0", Some(token), None)
        .await;
    assert_eq!(status, 400);
    assert!(field_of(&answer).contains("`version`"), "{answer}");
    let big = "x".repeat(64 * 1024 + 1);
    let (status, answer) = broker
        .call(
            "PUT",
            "/v1/secrets/shop/dev/BIG",
            Some(token),
            Some(json!({"value": big})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(field_of(&answer).contains("`value`"), "{answer}");
    let exact = "x".repeat(64 * 1024);
    broker
        .expect(
            200,
            "PUT",
            "/v1/secrets/shop/dev/BIG",
            Some(token),
            Some(json!({"value": exact})),
        )
        .await;
    let (status, answer) = broker
        .call(
            "PUT",
            "/v1/secrets/shop/dev/X",
            Some(token),
            Some(json!({"value": "v", "cas": -1})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(field_of(&answer).contains("`cas`"), "{answer}");
    let (status, answer) = broker
        .call(
            "PUT",
            "/v1/secrets/shop/dev/X",
            Some(token),
            Some(json!({"value": "v", "extra": 1})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = broker
        .call(
            "POST",
            "/v1/secrets/shop/dev/X/destroy",
            Some(token),
            Some(json!({"versions": []})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(field_of(&answer).contains("`versions`"), "{answer}");
}
