//! What only the SQLite store does: one broker per file, reads kept in memory that every change
//! makes stale at once, and batches committed as one script from the head it last wrote.

use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::grant::{GrantState, RequestState};
use mayfly_core::{Principal, Timestamp};
use mayfly_store::{
    Change, RoleRecord, SessionRecord, Store, StoreError, TargetRecord, UserRecord, Write,
    WriteOutcome,
};
use sqlx::Connection;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

async fn apply(store: &dyn Store, change: Change) {
    let outcomes = store
        .commit(vec![Write {
            change: Some(change),
            event: AuditDraft::new(at(1), "test", Outcome::Ok),
        }])
        .await
        .unwrap();
    assert!(
        matches!(outcomes[0], WriteOutcome::Applied { .. }),
        "{outcomes:?}"
    );
}

fn certificate(n: u32) -> Write {
    let mut grant = super::access::grant(&format!("g{n}"), &format!("r{n}"), 600_000);
    grant.state = GrantState::Active;
    Write {
        change: Some(Change::IssueCertificate {
            request: Box::new(super::access::request(
                &format!("r{n}"),
                RequestState::Activated,
                0,
            )),
            grant: Box::new(grant),
        }),
        event: AuditDraft::new(at(1), "access.certificate", Outcome::Ok),
    }
}

#[tokio::test]
async fn kept_reads_follow_every_change() {
    let (store, _dir) = super::sqlite_store().await;
    let alice = UserRecord {
        id: "id-alice".into(),
        username: "alice".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        groups: vec!["ops".into()],
        disabled: false,
        totp_last_step: None,
        created_at: at(1),
    };
    apply(
        &store,
        Change::CreateUser {
            user: alice,
            secrets: Vec::new(),
        },
    )
    .await;
    let principal = Principal::User {
        id: "id-alice".into(),
        name: "alice".into(),
        groups: vec!["ops".into()],
    };
    apply(
        &store,
        Change::CreateSession {
            session: SessionRecord {
                id: "s1".into(),
                token_hash: vec![7; 32],
                principal: principal.clone(),
                created_at: at(1),
                expires_at: at(1_000_000),
                revoked_at: None,
                factor_at: None,
            },
        },
    )
    .await;
    let session = || async { store.session_by_hash(&[7; 32]).await.unwrap() };
    // Read twice (the second from memory), then each change counts on the very next read.
    assert_eq!(session().await.unwrap().principal, principal);
    assert_eq!(session().await.unwrap().principal, principal);
    // A certificate batch (requests and grants only) leaves the kept session as it is.
    store.commit(vec![certificate(0)]).await.unwrap();
    assert_eq!(session().await.unwrap().revoked_at, None);
    let update = |groups: Option<Vec<String>>, disabled: Option<bool>| Change::UpdateUser {
        username: "alice".into(),
        groups,
        disabled,
    };
    apply(&store, update(Some(vec!["admins".into()]), None)).await;
    match session().await.unwrap().principal {
        Principal::User { groups, .. } => assert_eq!(groups, vec!["admins".to_owned()]),
        other => panic!("{other:?}"),
    }
    apply(
        &store,
        Change::RevokeSession {
            id: "s1".into(),
            at: at(5),
        },
    )
    .await;
    assert_eq!(session().await.unwrap().revoked_at, Some(at(5)));
    // Logout everywhere: the user's other session, kept in memory, is revoked at its next read;
    // the one already revoked keeps its time.
    apply(
        &store,
        Change::CreateSession {
            session: SessionRecord {
                id: "s2".into(),
                token_hash: vec![8; 32],
                principal: principal.clone(),
                created_at: at(1),
                expires_at: at(1_000_000),
                revoked_at: None,
                factor_at: None,
            },
        },
    )
    .await;
    let other = || async { store.session_by_hash(&[8; 32]).await.unwrap() };
    assert_eq!(other().await.unwrap().revoked_at, None);
    assert_eq!(other().await.unwrap().revoked_at, None);
    apply(
        &store,
        Change::RevokeUserSessions {
            user_id: "id-alice".into(),
            at: at(6),
        },
    )
    .await;
    assert_eq!(other().await.unwrap().revoked_at, Some(at(6)));
    assert_eq!(session().await.unwrap().revoked_at, Some(at(5)));
    apply(&store, update(None, Some(true))).await;
    assert!(session().await.is_none(), "a disabled user's session");
    // Disabling deleted the session: enabling the user again does not bring it back.
    apply(&store, update(None, Some(false))).await;
    assert!(session().await.is_none(), "a session came back");

    // A decision's inputs: the role's limits and the policy text.
    apply(
        &store,
        Change::PutTarget {
            target: TargetRecord {
                name: "hosts".into(),
                kind: "ssh".into(),
                url: "ssh://127.0.0.1:22".into(),
                created_at: at(1),
            },
            secret: ("targets/hosts/admin".into(), vec![1]),
            rotate_admin_every_ms: None,
        },
    )
    .await;
    let role = |max_ttl_ms| RoleRecord {
        target: "hosts".into(),
        name: "login".into(),
        creation_sql: r#"{"principals": ["deploy"]}"#.into(),
        revocation_sql: None,
        max_ttl_ms,
    };
    apply(
        &store,
        Change::PutRole {
            role: role(3_600_000),
        },
    )
    .await;
    let inputs = || async {
        store
            .decision_inputs("hosts", "login")
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(inputs().await.1.max_ttl_ms, 3_600_000);
    assert_eq!(inputs().await.2, None);
    apply(&store, Change::PutRole { role: role(60_000) }).await;
    assert_eq!(inputs().await.1.max_ttl_ms, 60_000);
    apply(
        &store,
        Change::PutPolicies {
            text: "forbid(principal, action, resource);".into(),
            at: at(9),
        },
    )
    .await;
    assert_eq!(
        inputs().await.2.as_deref(),
        Some("forbid(principal, action, resource);")
    );
    super::story::verify_chain(&store).await;
    store.close().await;
}

#[tokio::test]
async fn a_head_moved_behind_the_store_is_read_again() {
    let (store, dir) = super::sqlite_store().await;
    // Two batches: the second starts from the head the first one wrote, in one script.
    store
        .commit(vec![certificate(1), certificate(2)])
        .await
        .unwrap();
    store.commit(vec![certificate(3)]).await.unwrap();
    let (head, _) = store.audit_head().await.unwrap();

    // Someone with write access moves the head's hash. The next batch must chain from what the
    // database says (as a store reading the head would), not from what this store last wrote.
    let url = format!("sqlite://{}", dir.path().join("mayfly.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let moved = "ab".repeat(32);
    sqlx::query("UPDATE audit_head SET hash = $1")
        .bind(&moved)
        .execute(&mut db)
        .await
        .unwrap();
    drop(db);
    let outcomes = store
        .commit(vec![certificate(4), certificate(5)])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Applied { seq: head + 1 },
            WriteOutcome::Applied { seq: head + 2 }
        ]
    );
    let events = store.audit_events(head, 10).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
    assert_eq!(body["prev"], moved.as_str(), "{body}");
    assert_eq!(
        store.audit_head().await.unwrap(),
        (head + 2, events[1].hash.clone())
    );
    assert!(store.grant("g5").await.unwrap().is_some());
    store.close().await;
}

/// The events the store keeps for its sinks are the stored ones, for any window, through
/// one-script batches, the long way, plain events, and an event someone else appended.
#[tokio::test]
async fn the_events_kept_for_the_sinks_are_the_stored_ones() {
    let (store, dir) = super::sqlite_store().await;
    let url = format!("sqlite://{}", dir.path().join("mayfly.db").display());
    let fact = |kind: &str| Write {
        change: None,
        event: AuditDraft::new(at(2), kind, Outcome::Ok),
    };
    store
        .commit(vec![certificate(1), certificate(2)])
        .await
        .unwrap();
    store
        .commit(vec![fact("one"), certificate(3)])
        .await
        .unwrap();
    // Not insert-only: the long way.
    apply(
        &store,
        Change::PutPolicies {
            text: "// none".into(),
            at: at(3),
        },
    )
    .await;
    store.commit(vec![certificate(4)]).await.unwrap();

    // Someone appends an event behind the store's back; the store's next batch follows it.
    let (head, hash) = store.audit_head().await.unwrap();
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let foreign = "cd".repeat(32);
    sqlx::query(
        "INSERT INTO audit_events (seq, at_ms, kind, body, hash) VALUES ($1, 5, 'foreign', $2, $3)",
    )
    .bind(head + 1)
    .bind(format!(r#"{{"seq":{},"prev":"{hash}"}}"#, head + 1))
    .bind(&foreign)
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2")
        .bind(head + 1)
        .bind(&foreign)
        .execute(&mut db)
        .await
        .unwrap();
    store
        .commit(vec![certificate(5), fact("two")])
        .await
        .unwrap();
    store.commit(vec![certificate(6)]).await.unwrap();

    let (last, _) = store.audit_head().await.unwrap();
    assert_eq!(last, head + 4);
    for after in 0..=last + 1 {
        for limit in [1, 3, 1000] {
            let stored: Vec<(i64, String, String, String)> = sqlx::query_as(
                "SELECT seq, kind, body, hash FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(&mut db)
            .await
            .unwrap();
            let read: Vec<(i64, String, String, String)> = store
                .audit_events(after, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.seq, e.kind, e.body, e.hash))
                .collect();
            assert_eq!(read, stored, "after {after}, limit {limit}");
        }
    }
    let events = store.audit_events(head, 3).await.unwrap();
    assert_eq!(events[0].kind, "foreign");
    let body: serde_json::Value = serde_json::from_str(&events[1].body).unwrap();
    assert_eq!(body["prev"], foreign.as_str(), "{body}");
    drop(db);
    store.close().await;
}

#[tokio::test]
async fn one_broker_per_sqlite_file() {
    let (first, dir) = super::sqlite_store().await;
    // Another name for the same file (a symbolic link) is the same store.
    std::os::unix::fs::symlink(dir.path().join("mayfly.db"), dir.path().join("alias.db")).unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("alias.db").display()
    );
    // A second store on the same file waits for the first to go (a broker restarting) ...
    let second = tokio::spawn(async move { mayfly_store::open(&url).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "opened beside a running store");
    first.close().await;
    drop(first);
    let second = second.await.unwrap().unwrap();
    second.close().await;
    drop(second);
    // ... and a file that stays taken is refused, naming the lock.
    let holder = std::fs::File::options()
        .write(true)
        .open(dir.path().join("mayfly.db-mayfly.lock"))
        .unwrap();
    holder.try_lock().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("mayfly.db").display()
    );
    let started = std::time::Instant::now();
    let error = mayfly_store::open(&url).await.unwrap_err();
    assert!(matches!(error, StoreError::InUse(_)), "{error}");
    assert!(
        error.to_string().contains("mayfly.db-mayfly.lock"),
        "{error}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(9));
}

/// The database, its WAL, shared-memory and lock files are readable by their owner only, whatever
/// the umask (files are created 0644 under the usual 022), and a database left wider by an older
/// version is narrowed when it is opened.
#[tokio::test]
async fn the_sqlite_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let (store, dir) = super::sqlite_store().await;
    store.commit(vec![certificate(1)]).await.unwrap();
    let names = [
        "mayfly.db",
        "mayfly.db-wal",
        "mayfly.db-shm",
        "mayfly.db-mayfly.lock",
    ];
    for name in names {
        let path = dir.path().join(name);
        assert_eq!(mode(&path), 0o600, "{name} is {:o}", mode(&path));
    }
    store.close().await;
    drop(store);
    let database = dir.path().join("mayfly.db");
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();
    let url = format!("sqlite://{}?mode=rwc", database.display());
    let store = mayfly_store::open(&url).await.unwrap();
    store.commit(vec![certificate(2)]).await.unwrap();
    for name in names {
        let path = dir.path().join(name);
        assert_eq!(
            mode(&path),
            0o600,
            "{name} is {:o} after reopening",
            mode(&path)
        );
    }
    store.close().await;
}

/// Rows written before migration 0015 (no act chain) read as having none, and a request row of
/// an agent reads back as the agent.
#[tokio::test]
async fn rows_without_an_act_chain_read_as_empty() {
    let (store, dir) = super::sqlite_store().await;
    let url = format!("sqlite://{}", dir.path().join("mayfly.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for (id, kind) in [("old1", "user"), ("old2", "agent")] {
        sqlx::query(
            "INSERT INTO requests (id, principal_kind, principal_name, principal_role, user_id, target, \
             role, reason, ticket, ttl_ms, max_ttl_ms, approvals_needed, state, decision, break_glass, \
             created_at, expires_at) VALUES ($1, $2, 'claude', NULL, NULL, 't', 'r', 'why', '', 1, 1, 0, \
             'allowed', 'p', 0, 1, 2)",
        )
        .bind(id)
        .bind(kind)
        .execute(&mut db)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO grants (id, request_id, principal, target, role, login, state, created_at, expires_at) \
         VALUES ('g-old', 'old1', 'user:claude', 't', 'r', 'mf_old', 'active', 1, 2)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    let old = store.request("old1").await.unwrap().unwrap();
    assert!(old.actors.is_empty());
    let agent = store.request("old2").await.unwrap().unwrap();
    assert_eq!(
        agent.principal,
        Principal::Agent {
            name: "claude".into()
        }
    );
    let grant = store.grant("g-old").await.unwrap().unwrap();
    assert!(grant.actors.is_empty());
    store.close().await;
}
