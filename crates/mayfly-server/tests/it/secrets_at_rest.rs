//! Secrets at rest, through the broker: a target's admin password, the TOTP seeds and passwords of
//! the users it creates, a grant's password, session tokens, its SSH and X.509 CA keys, the token
//! signing keys, the audit signing and HMAC keys and the root key go in through its API and its
//! bootstrap; then the raw database is searched for each of them in clear (as is, hex, base64): on
//! SQLite the database file and its WAL, on PostgreSQL every row of every table as text and every
//! `bytea` value as bytes.
//! Every secret the store holds must open under the broker's keyring (so each one the broker made
//! itself is searched for too), and its ciphertext must be found where its plaintext is not, so the
//! search is known to see the secrets.

use base64::Engine as _;
use mayfly_testkit::access::ask;
use mayfly_testkit::pgcluster::PgCluster;
use mayfly_testkit::postgres::ThrowawayDb;
use mayfly_testkit::{Options, TestBroker};
use serde_json::json;
use sqlx::{Connection, Row};

#[tokio::test]
async fn secrets_are_not_in_clear_sqlite() {
    let cluster = PgCluster::start();
    let broker = TestBroker::ready().await;
    let clear = put_secrets_through_the_broker(&broker, &cluster).await;
    // The raw files while the broker runs: the database and its write-ahead log, where the last
    // commits are until a checkpoint copies them into the database.
    let mut raw = Vec::new();
    let mut files = Vec::new();
    for name in ["mayfly.db", "mayfly.db-wal"] {
        let bytes = std::fs::read(broker.dir.path().join(name)).unwrap();
        files.push(format!("{name}: {} bytes", bytes.len()));
        raw.extend(bytes);
    }
    let url = format!(
        "sqlite://{}?mode=ro",
        broker.dir.path().join("mayfly.db").display()
    );
    let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let stored = sqlx::query("SELECT path, blob FROM secrets ORDER BY path")
        .fetch_all(&mut connection)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    connection.close().await.unwrap();
    check(&broker, &clear, stored, &raw, &files.join(", ")).await;
    broker.stop().await;
}

#[tokio::test]
async fn secrets_are_not_in_clear_postgres() {
    let cluster = PgCluster::start();
    let db = ThrowawayDb::create().await;
    let broker = TestBroker::start(Options {
        store_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    let clear = put_secrets_through_the_broker(&broker, &cluster).await;
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (raw, scanned) = every_row_and_bytea(&mut connection).await;
    let stored = sqlx::query("SELECT path, blob FROM secrets ORDER BY path")
        .fetch_all(&mut connection)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    connection.close().await.unwrap();
    check(&broker, &clear, stored, &raw, &scanned).await;
    broker.stop().await;
    db.drop_db().await;
}

/// A secret as its owner knows it, to search for.
struct Clear {
    what: String,
    value: Vec<u8>,
}

fn clear(what: impl Into<String>, value: impl AsRef<[u8]>) -> Clear {
    Clear {
        what: what.into(),
        value: value.as_ref().to_vec(),
    }
}

const POLICY: &str = r#"
@id("dev-readonly")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/readonly");
"#;

/// Puts in every kind of secret the broker keeps, through its API (the bootstrap made the demo
/// users, the admin session, the root key and the audit keys); returns them as the outside knows
/// them.
async fn put_secrets_through_the_broker(broker: &TestBroker, cluster: &PgCluster) -> Vec<Clear> {
    let admin = broker.admin_token.clone().unwrap();
    let mut secrets = vec![clear("the admin session token", &admin)];

    // A target's admin password.
    broker
        .postgres_access(cluster, &[("readonly", 3600)], POLICY)
        .await;
    secrets.push(clear(
        "the target's admin password",
        &cluster.admin_password,
    ));

    // A new user: the broker makes the TOTP seed and the password.
    let carol = broker
        .expect(
            200,
            "POST",
            "/v1/users",
            Some(&admin),
            Some(json!({"username": "carol", "groups": ["dev"]})),
        )
        .await;
    let password = carol["password"].as_str().unwrap().to_owned();
    let totp_base32 = carol["totp"]["secret_base32"].as_str().unwrap().to_owned();
    secrets.push(clear("carol's password", &password));
    secrets.push(clear("carol's TOTP seed (base32)", &totp_base32));
    secrets.push(clear("carol's TOTP seed", base32_decode(&totp_base32)));
    for user in &broker.users {
        let name = &user.name;
        secrets.push(clear(format!("{name}'s password"), &user.password));
        secrets.push(clear(
            format!("{name}'s TOTP seed (base32)"),
            &user.totp_base32,
        ));
        secrets.push(clear(
            format!("{name}'s TOTP seed"),
            base32_decode(&user.totp_base32),
        ));
    }
    let code = mayfly_testkit::totp_code(&totp_base32, broker.clock_secs());
    let login = broker
        .expect(
            200,
            "POST",
            "/v1/auth/password/login",
            None,
            Some(json!({"username": "carol", "password": password, "totp": code})),
        )
        .await;
    let carol_token = login["token"].as_str().unwrap().to_owned();
    secrets.push(clear("carol's session token", &carol_token));

    // A grant's password, made by the broker and set on the target.
    let credential = broker
        .grant(&carol_token, ask("pg", "readonly", 900, "secrets at rest"))
        .await;
    secrets.push(clear(
        "the grant's password",
        credential["password"].as_str().unwrap(),
    ));

    // The CA keys: each certificate target has its own, made when the target is added.
    for (kind, name, url) in [
        ("ssh", "web", "ssh://127.0.0.1:22"),
        ("x509", "api", "tls://127.0.0.1:8443"),
    ] {
        broker
            .add_target(json!({"kind": kind, "name": name, "url": url,
                "admin_user": "", "admin_password": ""}))
            .await;
    }
    broker
        .expect(200, "GET", "/v1/ssh/ca?target=web", None, None)
        .await;
    broker
        .expect(200, "GET", "/v1/x509/ca?target=api", None, None)
        .await;

    // The token signing keys, made at the first JWKS request.
    broker
        .expect(200, "GET", "/.well-known/jwks.json", None, None)
        .await;
    for alg in mayfly_crypto::token_key::TokenAlg::ALL {
        let key = broker.broker.current_token_key(alg).await.unwrap();
        secrets.push(clear(
            format!("the {} token signing key", alg.jws_name()),
            key.expose_pkcs8(),
        ));
    }

    // What only the broker holds: the root key (in `mayfly dev`'s key file) and the audit keys.
    let root = std::fs::read(broker.dir.path().join(mayfly_server::dev::KEY_FILE)).unwrap();
    secrets.push(clear("the root key", root));
    let keys = broker.broker.unsealed().await.unwrap();
    secrets.push(clear("the audit HMAC key", keys.audit_hmac_key.as_slice()));
    secrets.push(clear(
        "the audit signing key",
        keys.audit_signer.expose_seed(),
    ));
    secrets
}

/// `stored`: every (path, blob) of the store's secrets table; `raw`: the database's bytes.
async fn check(
    broker: &TestBroker,
    outside: &[Clear],
    stored: Vec<(String, Vec<u8>)>,
    raw: &[u8],
    scanned: &str,
) {
    let raw = as_chars(raw);
    // Each kind of secret is there, and the search sees its ciphertext.
    let mut expected = vec![
        mayfly_server::access::target_secret_path("pg"),
        mayfly_server::ssh::ssh_ca_path("web"),
        mayfly_server::ssh::x509_ca_path("api"),
        mayfly_server::state::AUDIT_SIGNING_KEY_PATH.to_owned(),
        mayfly_server::state::AUDIT_HMAC_KEY_PATH.to_owned(),
    ];
    for user in broker.broker.store().users().await.unwrap() {
        expected.push(mayfly_server::state::totp_secret_path(&user.id));
    }
    let paths: Vec<&str> = stored.iter().map(|(path, _)| path.as_str()).collect();
    for path in &expected {
        assert!(paths.contains(&path.as_str()), "no `{path}` in {paths:?}");
    }
    assert!(
        paths.iter().any(|p| p.starts_with("grants/")),
        "no grant secret in {paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.starts_with("sys/token-keys/")),
        "no token signing keys in {paths:?}"
    );
    for (path, blob) in &stored {
        assert!(
            raw.contains(&as_chars(blob)),
            "the search does not see the stored ciphertext of `{path}` ({scanned})"
        );
    }

    for secret in outside {
        not_in_clear(&raw, secret, scanned);
    }
    // Every secret the store holds opens under the broker's keyring, and is not there in clear
    // either: the CA keys and whatever else the broker makes and keeps for itself.
    let keys = broker.broker.unsealed().await.unwrap();
    for (path, blob) in &stored {
        let plaintext = keys.keyring.open(path, blob).unwrap_or_else(|e| {
            panic!("the stored secret `{path}` does not open under the broker's keyring: {e}")
        });
        // A certificate target has no admin account: its admin secret is empty.
        if plaintext.is_empty() && path.starts_with("targets/") {
            continue;
        }
        not_in_clear(
            &raw,
            &clear(format!("the stored secret `{path}`"), &plaintext[..]),
            scanned,
        );
    }
}

#[track_caller]
fn not_in_clear(raw: &str, secret: &Clear, scanned: &str) {
    let value = &secret.value;
    assert!(
        value.len() >= 16,
        "{} is too short to search for: {} bytes",
        secret.what,
        value.len()
    );
    let forms = [
        ("as is", value.clone()),
        ("hex", hex::encode(value).into_bytes()),
        ("upper-case hex", hex::encode_upper(value).into_bytes()),
        (
            "base64",
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(value)
                .into_bytes(),
        ),
        (
            "base64url",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(value)
                .into_bytes(),
        ),
    ];
    for (form, needle) in forms {
        assert!(
            !raw.contains(&as_chars(&needle)),
            "{} is in the database in clear ({form}; searched {scanned})",
            secret.what
        );
    }
}

/// Every row of every table of the broker's database as text (`bytea` in hex), then every `bytea`
/// value as its bytes; and what was searched.
async fn every_row_and_bytea(connection: &mut sqlx::PgConnection) -> (Vec<u8>, String) {
    let tables = sqlx::query(
        "SELECT table_schema, table_name FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') \
         ORDER BY 1, 2",
    )
    .fetch_all(&mut *connection)
    .await
    .unwrap();
    let mut raw = Vec::new();
    let mut n_rows = 0;
    for table in &tables {
        let (schema, name): (String, String) = (table.get(0), table.get(1));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM \"{schema}\".\"{name}\" t"
        )))
        .fetch_all(&mut *connection)
        .await
        .unwrap();
        for row in rows {
            let text: String = row.get(0);
            raw.extend(text.into_bytes());
            raw.push(b'\n');
            n_rows += 1;
        }
    }
    let columns = sqlx::query(
        "SELECT table_schema, table_name, column_name FROM information_schema.columns \
         WHERE data_type = 'bytea' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&mut *connection)
    .await
    .unwrap();
    for column in &columns {
        let (schema, name, column): (String, String, String) =
            (column.get(0), column.get(1), column.get(2));
        let values = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT \"{column}\" FROM \"{schema}\".\"{name}\" WHERE \"{column}\" IS NOT NULL"
        )))
        .fetch_all(&mut *connection)
        .await
        .unwrap();
        for value in values {
            let bytes: Vec<u8> = value.get(0);
            raw.extend(bytes);
            raw.push(b'\n');
        }
    }
    let scanned = format!(
        "{n_rows} rows of {} tables, {} bytea columns",
        tables.len(),
        columns.len()
    );
    (raw, scanned)
}

/// One char per byte, so that std's substring search (fast even in a test build) finds byte
/// strings: the mapping is one to one and UTF-8 matches only on whole chars.
fn as_chars(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    let mut n_bits = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').bytes() {
        let value = ALPHABET.iter().position(|a| *a == c).unwrap() as u64;
        bits = (bits << 5) | value;
        n_bits += 5;
        if n_bits >= 8 {
            n_bits -= 8;
            out.push((bits >> n_bits) as u8);
            bits &= (1 << n_bits) - 1;
        }
    }
    out
}
