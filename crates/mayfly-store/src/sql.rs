//! [`SqlStore`]: the one implementation of [`Store`] over sqlx's `Any` driver, for SQLite and
//! PostgreSQL. SQL text is shared; [`Dialect`] is the only switch between the two.

use std::str::FromStr;
use std::time::Duration;

use mayfly_core::audit::AuditDraft;
use mayfly_core::{Principal, Timestamp};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tokio::sync::Mutex;

use crate::access;
use crate::cache::{DecisionInputs, ReadCache, RecentEvents, StoreLock, keeps_reads, make_private};
use crate::records::{
    ApprovalRecord, Change, GrantRecord, JwtConfigRecord, RequestRecord, RoleRecord, SealRecord,
    SessionRecord, StoredEvent, TargetRecord, ThrottleRecord, UserRecord,
};
use crate::script::{HeadMove, ScriptConnection, ScriptRows};
use crate::{GrantFilter, Principals, Store, StoreError, Write, WriteOutcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// Serializes this node's writers. Across nodes (Postgres) the audit head row lock does it.
    write_lock: Mutex<()>,
    /// Reads kept in memory: SQLite on a file only, where this store holds `_lock`.
    cache: Option<ReadCache>,
    /// The audit head this store last wrote (SQLite only), for [`SqlStore::commit_script`].
    head: std::sync::Mutex<Option<Head>>,
    /// The database file and the connection [`SqlStore::commit_script`] keeps on it between
    /// batches (SQLite on a file only, like `cache`).
    script: Option<Script>,
    /// The events this store committed last (SQLite on a file only, like `cache`).
    recent: Option<RecentEvents>,
    /// Last, so that it is released after every connection above is closed.
    _lock: Option<StoreLock>,
}

/// The chain's last `seq` and hash.
type Head = (i64, [u8; 32]);

/// The one-script commit's connection, opened at first use and dropped after any error, and
/// not opened again once the store is closed.
#[derive(Debug)]
struct Script {
    path: std::path::PathBuf,
    connection: std::sync::Mutex<Option<ScriptConnection>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Script {
    /// The kept connection's slot. After a panic while it was held, whatever it held is dropped
    /// (it may be inside a transaction) and the next batch opens a fresh one.
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<ScriptConnection>> {
        self.connection.lock().unwrap_or_else(|poisoned| {
            let mut slot = poisoned.into_inner();
            *slot = None;
            self.connection.clear_poison();
            slot
        })
    }
}

/// One audit event row: `(seq, at_ms, kind, body, hash)`.
pub(crate) type EventRow = (i64, i64, String, String, String);

/// A committed batch: each write's outcome, the new head, and the events as stored (only when
/// the store keeps its recent events).
type Committed = (Vec<WriteOutcome>, Head, Vec<StoredEvent>);

/// The last checkpoint. The kind is written out, not bound: only then may the planner use the
/// partial index `audit_checkpoints` (migration 0003), whose condition names it.
const LAST_CHECKPOINT: &str = "SELECT seq, kind, body, hash FROM audit_events \
     WHERE kind = 'audit.checkpoint' ORDER BY seq DESC LIMIT 1";
const _: () = assert!(matches!(
    mayfly_core::audit::CHECKPOINT_KIND.as_bytes(),
    b"audit.checkpoint"
));

/// The pending requests. The first condition is the partial index `requests_open`'s (migration
/// 0003) word for word: SQLite uses a partial index only for a query that repeats its condition.
const PENDING_REQUESTS: &str = "WHERE state IN ('pending', 'allowed') AND state = 'pending'";

/// The newest requests, or the newest pending ones; `$1` is how many.
fn requests_sql(pending_only: bool) -> String {
    let filter = if pending_only { PENDING_REQUESTS } else { "" };
    format!(
        "SELECT {} FROM requests {filter} ORDER BY created_at DESC LIMIT $1",
        access::REQUEST_COLUMNS
    )
}

fn stored((seq, _, kind, body, hash): EventRow) -> StoredEvent {
    StoredEvent {
        seq,
        kind,
        body,
        hash,
    }
}

/// Chains `event` at `seq` after `prev`: its row and its hash.
fn chained(event: &AuditDraft, seq: i64, prev: &[u8; 32]) -> (EventRow, [u8; 32]) {
    let (text, hash) = event.chain(seq, prev);
    (
        (
            seq,
            event.at.unix_ms(),
            event.kind.clone(),
            text,
            hex::encode(hash),
        ),
        hash,
    )
}

/// Runs `f`, which blocks, on this thread: directly on a runtime of one thread (the committer's
/// own), or after handing this worker's other tasks to another on a shared runtime.
fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

#[derive(Clone, Copy)]
enum ConfigTable {
    Issuers,
    Roles,
}

use crate::access::Applied;

impl SqlStore {
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options = AnyConnectOptions::from_str(url).map_err(unavailable)?;
        // One broker per SQLite file: taken before anything is read or migrated.
        let (lock, script) = match dialect {
            Dialect::Sqlite if !(url.contains(":memory:") || url.contains("mode=memory")) => {
                let file =
                    sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(unavailable)?;
                let lock = StoreLock::take(file.get_filename(), Duration::from_secs(10)).await?;
                let script = Script {
                    path: file.get_filename().to_owned(),
                    connection: std::sync::Mutex::new(None),
                    closed: std::sync::atomic::AtomicBool::new(false),
                };
                (Some(lock), Some(script))
            }
            _ => (None, None),
        };
        let max_connections = match dialect {
            Dialect::Sqlite => 4,
            Dialect::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // A SQLite connection is a file handle in this process: pinging it before every use
            // (a round trip to its worker thread) finds nothing. A PostgreSQL one can have died.
            .test_before_acquire(dialect == Dialect::Postgres)
            .after_connect(move |connection, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")
                            .execute(&mut *connection)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        if let Some(script) = &script {
            make_private(&script.path)?;
        }
        let migrator = match dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(Box::new(e)))?;
        Ok(SqlStore {
            pool,
            dialect,
            write_lock: Mutex::new(()),
            cache: lock.is_some().then(ReadCache::default),
            recent: lock.is_some().then(RecentEvents::default),
            _lock: lock,
            head: std::sync::Mutex::new(None),
            script,
        })
    }

    pub async fn close(&self) {
        if let Some(script) = &self.script {
            script
                .closed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            // Waits for a batch being committed, then closes the connection.
            drop(in_place(|| script.slot().take()));
        }
        self.pool.close().await;
    }

    async fn apply(
        &self,
        connection: &mut AnyConnection,
        change: &Change,
    ) -> Result<Applied, sqlx::Error> {
        match change {
            Change::Initialize { seal, secrets } => {
                let exists = sqlx::query("SELECT 1 FROM seal WHERE id = 1")
                    .fetch_optional(&mut *connection)
                    .await?;
                if exists.is_some() {
                    return Ok(Applied::Conflict(
                        "the broker is already initialized".into(),
                    ));
                }
                sqlx::query(
                    "INSERT INTO seal (id, seal_id, n_shares, threshold, kcv, wrapped_keyring, setup_code_hash, created_at) \
                     VALUES (1, $1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(seal.seal_id.clone())
                .bind(seal.n_shares)
                .bind(seal.threshold)
                .bind(seal.kcv.clone())
                .bind(seal.wrapped_keyring.clone())
                .bind(seal.setup_code_hash.clone())
                .bind(seal.created_at.unix_ms())
                .execute(&mut *connection)
                .await?;
                put_secrets(connection, secrets, seal.created_at).await?;
                Ok(Applied::Done)
            }
            Change::PutSecret { path, blob, at } => {
                put_secrets(connection, &[(path.clone(), blob.clone())], *at).await?;
                Ok(Applied::Done)
            }
            Change::CreateSecret { path, blob, at } => {
                let created = sqlx::query(
                    "INSERT INTO secrets (path, blob, updated_at) VALUES ($1, $2, $3) ON CONFLICT (path) DO NOTHING",
                )
                .bind(path.clone())
                .bind(blob.clone())
                .bind(at.unix_ms())
                .execute(&mut *connection)
                .await?;
                if created.rows_affected() != 1 {
                    return Ok(Applied::Conflict(format!("`{path}` exists already")));
                }
                Ok(Applied::Done)
            }
            Change::SetupFirstAdmin {
                code_hash,
                user,
                secrets,
            } => {
                let used = sqlx::query(
                    "UPDATE seal SET setup_code_hash = NULL WHERE id = 1 AND setup_code_hash = $1",
                )
                .bind(code_hash.clone())
                .execute(&mut *connection)
                .await?;
                if used.rows_affected() != 1 {
                    return Ok(Applied::Conflict(
                        "the setup code is wrong or was already used".into(),
                    ));
                }
                self.apply_create_user(connection, user, secrets).await
            }
            Change::CreateUser { user, secrets } => {
                self.apply_create_user(connection, user, secrets).await
            }
            Change::LoginSucceeded {
                user_id,
                username,
                totp_step,
                session,
            } => {
                let stepped = sqlx::query(
                    "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1 AND disabled = 0",
                )
                .bind(*totp_step)
                .bind(user_id.clone())
                .execute(&mut *connection)
                .await?;
                if stepped.rows_affected() != 1 {
                    return Ok(Applied::Conflict("the TOTP code was already used".into()));
                }
                sqlx::query("DELETE FROM login_failures WHERE username = $1")
                    .bind(username.clone())
                    .execute(&mut *connection)
                    .await?;
                insert_session(connection, session).await?;
                Ok(Applied::Done)
            }
            Change::LoginFailed {
                username,
                throttled_until,
            } => {
                sqlx::query(
                    "INSERT INTO login_failures (username, n_failures, throttled_until) VALUES ($1, 1, $2) \
                     ON CONFLICT (username) DO UPDATE SET n_failures = login_failures.n_failures + 1, throttled_until = $2",
                )
                .bind(username.clone())
                .bind(throttled_until.unix_ms())
                .execute(&mut *connection)
                .await?;
                Ok(Applied::Done)
            }
            Change::ReserveLoginAttempt {
                username,
                at,
                n_free,
                first_delay,
                max_delay,
                forget_after,
            } => {
                let now = at.unix_ms();
                let forget_before = now.saturating_sub(duration_ms(*forget_after));
                // One statement counts the attempt and returns the count, or counts nothing if
                // the name is throttled: attempts at once count one by one (within a batch, one
                // statement after the other; across nodes, on PostgreSQL's row lock, the `WHERE`
                // seen again on the row as the other left it).
                let counted = sqlx::query(
                    "INSERT INTO login_failures (username, n_failures, throttled_until) VALUES ($1, 1, $2) \
                     ON CONFLICT (username) DO UPDATE SET \
                     n_failures = CASE WHEN login_failures.throttled_until < $3 THEN 1 ELSE login_failures.n_failures + 1 END, \
                     throttled_until = $2 \
                     WHERE login_failures.throttled_until <= $2 RETURNING n_failures",
                )
                .bind(username.clone())
                .bind(now)
                .bind(forget_before)
                .fetch_optional(&mut *connection)
                .await?;
                let Some(counted) = counted else {
                    return Ok(Applied::Conflict(
                        "the name is throttled after repeated failed logins".into(),
                    ));
                };
                let n_failures: i64 = counted.try_get("n_failures")?;
                let delay =
                    crate::records::throttle_delay(n_failures, *n_free, *first_delay, *max_delay);
                if !delay.is_zero() {
                    sqlx::query(
                        "UPDATE login_failures SET throttled_until = $1 WHERE username = $2",
                    )
                    .bind(now.saturating_add(duration_ms(delay)))
                    .bind(username.clone())
                    .execute(&mut *connection)
                    .await?;
                }
                sqlx::query(self.forget_login_failures_sql())
                    .bind(forget_before)
                    .execute(&mut *connection)
                    .await?;
                Ok(Applied::Done)
            }
            Change::CreateSession { session } => {
                insert_session(connection, session).await?;
                Ok(Applied::Done)
            }
            Change::RevokeSession { id, at } => {
                let revoked = sqlx::query(
                    "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(at.unix_ms())
                .bind(id.clone())
                .execute(&mut *connection)
                .await?;
                if revoked.rows_affected() != 1 {
                    return Ok(Applied::Conflict("the session is already revoked".into()));
                }
                Ok(Applied::Done)
            }
            Change::PutJwtIssuer { name, config } => {
                upsert_config(connection, ConfigTable::Issuers, name, config).await?;
                Ok(Applied::Done)
            }
            Change::PutJwtRole { name, config } => {
                upsert_config(connection, ConfigTable::Roles, name, config).await?;
                Ok(Applied::Done)
            }
            Change::DeleteJwtRole { name } => {
                let deleted = sqlx::query("DELETE FROM jwt_roles WHERE name = $1")
                    .bind(name.clone())
                    .execute(&mut *connection)
                    .await?;
                if deleted.rows_affected() == 0 {
                    return Ok(Applied::Conflict(format!("no JWT role `{name}`")));
                }
                // Its workloads' sessions end with it: a role made again under the same name
                // must not bring them back.
                sqlx::query(
                    "DELETE FROM sessions WHERE principal_kind = 'workload' AND principal_role = $1",
                )
                .bind(name.clone())
                .execute(&mut *connection)
                .await?;
                Ok(Applied::Done)
            }
            Change::UpdateUser {
                username,
                groups,
                disabled,
            } => {
                let groups = groups
                    .as_ref()
                    .map(|g| serde_json::to_string(g).unwrap_or_else(|_| "[]".into()));
                let updated = sqlx::query(
                    "UPDATE users SET groups = COALESCE($1, groups), disabled = COALESCE($2, disabled) \
                     WHERE username = $3",
                )
                .bind(groups)
                .bind(disabled.map(i64::from))
                .bind(username.clone())
                .execute(&mut *connection)
                .await?;
                if updated.rows_affected() == 0 {
                    return Ok(Applied::Conflict(format!("no user `{username}`")));
                }
                // A disabled user's sessions end now: enabling the user again later must not
                // bring them back.
                if *disabled == Some(true) {
                    sqlx::query(
                        "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE username = $1)",
                    )
                    .bind(username.clone())
                    .execute(&mut *connection)
                    .await?;
                }
                Ok(Applied::Done)
            }
            Change::PutTarget { target, secret } => {
                access::put_target(connection, target).await?;
                put_secrets(connection, std::slice::from_ref(secret), target.created_at).await?;
                Ok(Applied::Done)
            }
            Change::PutRole { role } => access::put_role(connection, role).await,
            Change::PutPolicies { text, at } => {
                access::put_policies(connection, text, *at).await?;
                Ok(Applied::Done)
            }
            Change::CreateRequest { request } => {
                access::create_request(connection, request).await?;
                Ok(Applied::Done)
            }
            Change::Approve { approval } => access::approve(connection, approval).await,
            Change::DenyRequest { request_id } => access::deny(connection, request_id).await,
            Change::WithdrawRequest { request_id } => {
                access::withdraw(connection, request_id).await
            }
            Change::ExpireRequests { before } => {
                access::expire_requests(connection, *before).await?;
                Ok(Applied::Done)
            }
            Change::RecordIntent { grant, secret } => {
                access::record_intent(connection, grant, secret).await
            }
            Change::IssueCertificate { request, grant } => {
                access::issue_certificate(connection, request, grant).await?;
                Ok(Applied::Done)
            }
            Change::UpdateGrant { update } => access::update_grant(connection, update).await,
            Change::ReviewGrant { id, reviewer } => {
                access::review_grant(connection, id, reviewer).await
            }
        }
    }

    async fn apply_create_user(
        &self,
        connection: &mut AnyConnection,
        user: &UserRecord,
        secrets: &[(String, Vec<u8>)],
    ) -> Result<Applied, sqlx::Error> {
        let taken = sqlx::query("SELECT 1 FROM users WHERE username = $1")
            .bind(user.username.clone())
            .fetch_optional(&mut *connection)
            .await?;
        if taken.is_some() {
            return Ok(Applied::Conflict(format!(
                "user `{}` already exists",
                user.username
            )));
        }
        let groups = serde_json::to_string(&user.groups).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, groups, disabled, totp_last_step, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(user.id.clone())
        .bind(user.username.clone())
        .bind(user.password_hash.clone())
        .bind(groups)
        .bind(i64::from(user.disabled))
        .bind(user.totp_last_step.unwrap_or(-1))
        .bind(user.created_at.unix_ms())
        .execute(&mut *connection)
        .await?;
        put_secrets(connection, secrets, user.created_at).await?;
        Ok(Applied::Done)
    }

    /// One transaction: each change (under a savepoint, unless `lean` and it only inserts), its
    /// event appended to the chain, the head moved. The caller holds the write lock. The batch is
    /// only borrowed, so that the caller can apply it again another way.
    async fn commit_batch(&self, writes: &[Write], lean: bool) -> Result<Committed, BatchError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        match self.write_batch(&mut tx, writes, lean).await {
            Ok(outcomes) => {
                tx.commit().await.map_err(unavailable)?;
                Ok(outcomes)
            }
            Err(error) => {
                // Rolled back now, not when the connection is next used: a retry of the batch on
                // another connection must not find this one still holding the write lock.
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }

    /// The body of [`SqlStore::commit_batch`], inside its transaction.
    async fn write_batch(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        writes: &[Write],
        lean: bool,
    ) -> Result<Committed, BatchError> {
        let head = sqlx::query(self.lock_head_sql())
            .fetch_one(&mut **tx)
            .await
            .map_err(unavailable)?;
        let mut seq: i64 = head.try_get("seq").map_err(unavailable)?;
        let prev_hex: String = head.try_get("hash").map_err(unavailable)?;
        let mut prev = decode_hash(&prev_hex)?;
        let mut outcomes = Vec::with_capacity(writes.len());
        // Insert-only changes are gathered and written many rows per statement, before any other
        // change (which might read them) and at the end; events are written together at the end.
        let mut pending = PendingInserts::default();
        let mut events = Vec::with_capacity(writes.len());
        for Write { change, event } in writes {
            let mut conflict = None;
            let change = match change {
                Some(change) if lean => pending.add(change),
                other => other.as_ref(),
            };
            if let Some(change) = change {
                pending.flush(tx).await?;
                let mut savepoint = tx.begin().await.map_err(unavailable)?;
                match self.apply(&mut savepoint, change).await {
                    Ok(Applied::Done) => savepoint.commit().await.map_err(unavailable)?,
                    Ok(Applied::Conflict(reason)) => {
                        savepoint.rollback().await.map_err(unavailable)?;
                        conflict = Some(reason);
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "a change failed inside an audit batch");
                        savepoint.rollback().await.map_err(unavailable)?;
                        conflict = Some("the store could not apply the change".into());
                    }
                }
            }
            seq += 1;
            let (row, hash) = match &conflict {
                Some(reason) => {
                    let mut refused = event.clone();
                    refused.refuse(reason);
                    chained(&refused, seq, &prev)
                }
                None => chained(event, seq, &prev),
            };
            events.push(row);
            prev = hash;
            outcomes.push(match conflict {
                Some(reason) => WriteOutcome::Conflict { seq, reason },
                None => WriteOutcome::Applied { seq },
            });
        }
        pending.flush(tx).await?;
        for chunk in events.chunks(EVENTS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO audit_events (seq, at_ms, kind, body, hash) VALUES {}",
                access::values_on(tx, chunk.len(), 5)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (seq, at_ms, kind, body, hash) in chunk {
                query = query
                    .bind(*seq)
                    .bind(*at_ms)
                    .bind(kind.clone())
                    .bind(body.clone())
                    .bind(hash.clone());
            }
            query.execute(&mut **tx).await.map_err(unavailable)?;
        }
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(hex::encode(prev))
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
        let events = match self.recent {
            Some(_) => events.into_iter().map(stored).collect(),
            None => Vec::new(),
        };
        Ok((outcomes, (seq, prev), events))
    }

    /// The head to chain a batch from in one script ([`SqlStore::commit_script`]): SQLite on a
    /// file, every change insert-only, and a head this store wrote.
    fn script_head(&self, writes: &[Write]) -> Option<Head> {
        if self.script.is_none()
            || !writes
                .iter()
                .all(|w| w.change.as_ref().is_none_or(Change::only_inserts))
        {
            return None;
        }
        *self.head.lock().ok()?
    }

    fn set_head(&self, head: Option<Head>) {
        if head.is_none()
            && let Some(recent) = &self.recent
        {
            recent.forget();
        }
        if self.dialect == Dialect::Sqlite
            && let Ok(mut known) = self.head.lock()
        {
            *known = head;
        }
    }

    /// Keeps a committed batch's events for the sinks (see [`RecentEvents`]).
    fn keep_events(&self, events: Vec<StoredEvent>) {
        if let Some(recent) = &self.recent {
            recent.extend(events);
        }
    }

    /// A batch of insert-only changes and plain events, on SQLite, in one script run on this
    /// thread (see [`crate::script`]): it opens the transaction, inserts the rows and the events,
    /// moves the head and commits. The head moves only from the one this store last wrote: if anything
    /// else moved it (another writer, someone editing the database), the script fails on the
    /// head's `NOT NULL` and the caller takes the long way, which reads the head.
    /// The batch is only borrowed: should the script fail, the caller still has it to commit the
    /// long way, without having copied it first.
    async fn commit_script(&self, writes: &[Write], head: Head) -> Result<Committed, StoreError> {
        let Some(script) = &self.script else {
            return Err(StoreError::Unavailable(
                "the one-script commit needs a SQLite file".into(),
            ));
        };
        let (first_seq, first_hash) = head;
        let (mut seq, mut prev) = head;
        let mut requests = Vec::with_capacity(writes.len());
        let mut grants = Vec::with_capacity(writes.len());
        let mut events = Vec::with_capacity(writes.len());
        let mut outcomes = Vec::with_capacity(writes.len());
        for Write { change, event } in writes {
            if let Some(change) = change {
                let Some((request, grant)) = change.inserted_rows() else {
                    return Err(StoreError::Unavailable(
                        "a change that is not insert-only reached the one-script commit".into(),
                    ));
                };
                requests.push(request);
                grants.extend(grant);
            }
            seq += 1;
            let (row, hash) = chained(event, seq, &prev);
            events.push(row);
            prev = hash;
            outcomes.push(WriteOutcome::Applied { seq });
        }
        let (from_hash, to_hash) = (hex::encode(first_hash), hex::encode(prev));
        let rows = ScriptRows {
            requests: &requests,
            grants: &grants,
            events: &events,
        };
        let head_move = HeadMove {
            from: (first_seq, &from_hash),
            to: (seq, &to_hash),
        };
        // On this thread (the committer's own on SQLite): a few hundred microseconds of SQLite
        // and one `fsync`. On a runtime shared with other tasks, its worker is handed over first.
        in_place(|| {
            let mut kept = script.slot();
            if script.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the store is closed".into()));
            }
            let mut connection = match kept.take() {
                Some(connection) => connection,
                None => ScriptConnection::open(&script.path)
                    .map_err(|e| StoreError::Unavailable(Box::new(e)))?,
            };
            connection
                .commit(&rows, &head_move)
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
            // Kept only after a success: after any error the next batch opens a fresh one.
            *kept = Some(connection);
            Ok::<(), StoreError>(())
        })?;
        let kept_events = match self.recent {
            Some(_) => events.into_iter().map(stored).collect(),
            None => Vec::new(),
        };
        Ok((outcomes, (seq, prev), kept_events))
    }

    /// The session and its principal, from the database.
    async fn read_session(&self, token_hash: &[u8]) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT s.id, s.token_hash, s.principal_kind, s.principal_name, s.principal_role, s.user_id, \
                    s.created_at, s.expires_at, s.revoked_at, u.groups, u.disabled, r.name AS bound_role \
             FROM sessions s LEFT JOIN users u ON u.id = s.user_id \
             LEFT JOIN jwt_roles r ON r.name = s.principal_role WHERE s.token_hash = $1",
        )
        .bind(token_hash.to_vec())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let kind: String = row.try_get("principal_kind").map_err(unavailable)?;
        let name: String = row.try_get("principal_name").map_err(unavailable)?;
        let principal = match kind.as_str() {
            "user" => {
                let user_id: Option<String> = row.try_get("user_id").map_err(unavailable)?;
                let groups: Option<String> = row.try_get("groups").map_err(unavailable)?;
                let disabled: Option<i64> = row.try_get("disabled").map_err(unavailable)?;
                let (Some(id), Some(groups), Some(0)) = (user_id, groups, disabled) else {
                    return Ok(None);
                };
                let groups = serde_json::from_str(&groups)
                    .map_err(|_| StoreError::Corrupt("user groups are not a JSON list".into()))?;
                Principal::User { id, name, groups }
            }
            "workload" => {
                // A workload's session lasts only as long as the binding (JWT role) it came
                // through.
                let role: Option<String> = row.try_get("bound_role").map_err(unavailable)?;
                let Some(role) = role else { return Ok(None) };
                Principal::Workload { role, name }
            }
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown principal kind `{other}`"
                )));
            }
        };
        let revoked_at: Option<i64> = row.try_get("revoked_at").map_err(unavailable)?;
        Ok(Some(SessionRecord {
            id: row.try_get("id").map_err(unavailable)?,
            token_hash: row.try_get("token_hash").map_err(unavailable)?,
            principal,
            created_at: Timestamp::from_unix_ms(row.try_get("created_at").map_err(unavailable)?),
            expires_at: Timestamp::from_unix_ms(row.try_get("expires_at").map_err(unavailable)?),
            revoked_at: revoked_at.map(Timestamp::from_unix_ms),
        }))
    }

    /// The target, role and policy text of a decision, from the database.
    async fn read_decision_inputs(
        &self,
        target: &str,
        role: &str,
    ) -> Result<Option<DecisionInputs>, StoreError> {
        let row = sqlx::query(
            "SELECT r.target AS target, r.name AS name, r.creation_sql AS creation_sql, \
             r.revocation_sql AS revocation_sql, r.max_ttl_ms AS max_ttl_ms, t.kind AS kind, \
             t.url AS url, t.created_at AS created_at, \
             (SELECT text FROM policies WHERE id = 1) AS policy_text \
             FROM roles r JOIN targets t ON t.name = r.target WHERE r.target = $1 AND r.name = $2",
        )
        .bind(target.to_owned())
        .bind(role.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let role = access::role_from_row(&row)?;
        let target = TargetRecord {
            name: role.target.clone(),
            kind: row.try_get("kind").map_err(unavailable)?,
            url: row.try_get("url").map_err(unavailable)?,
            created_at: Timestamp::from_unix_ms(row.try_get("created_at").map_err(unavailable)?),
        };
        let text: Option<String> = row.try_get("policy_text").map_err(unavailable)?;
        Ok(Some((target, role, text)))
    }

    /// [`Store::commit`] under the write lock.
    async fn commit_locked(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, StoreError> {
        let writes = match self.script_head(&writes) {
            Some(head) => match self.commit_script(&writes, head).await {
                Ok((outcomes, head, events)) => {
                    self.set_head(Some(head));
                    self.keep_events(events);
                    return Ok(outcomes);
                }
                Err(error) => {
                    tracing::warn!(error = ?error, "a one-script commit failed (the head moved elsewhere, or an insert failed); committing the batch the long way");
                    self.set_head(None);
                    writes
                }
            },
            None => writes,
        };
        // Changes that only insert rows under fresh ids cannot conflict and need no savepoint of
        // their own (two statements fewer each). Should one fail after all, the whole batch is
        // rolled back and applied again with a savepoint per change, so no write is lost.
        let lean = writes
            .iter()
            .any(|w| w.change.as_ref().is_some_and(Change::only_inserts));
        let committed = match self.commit_batch(&writes, lean).await {
            Err(BatchError::InsertFailed(error)) => {
                tracing::warn!(error = %error, "an insert failed inside an audit batch; applying the batch again, change by change");
                self.commit_batch(&writes, false)
                    .await
                    .map_err(BatchError::into_store)
            }
            other => other.map_err(BatchError::into_store),
        };
        match committed {
            Ok((outcomes, head, events)) => {
                self.set_head(Some(head));
                self.keep_events(events);
                Ok(outcomes)
            }
            Err(error) => {
                self.set_head(None);
                Err(error)
            }
        }
    }

    /// Deletes a few rows of names whose count is forgotten (`throttled_until < $1`): a bounded
    /// amount of work per reservation, which keeps the table to the names tried lately. On
    /// PostgreSQL it skips rows another node's batch holds, so two batches never wait on each
    /// other's rows (a deadlock) for the sake of a clean-up.
    fn forget_login_failures_sql(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => {
                "DELETE FROM login_failures WHERE username IN (SELECT username FROM login_failures \
                 WHERE throttled_until < $1 LIMIT 16 FOR UPDATE SKIP LOCKED)"
            }
            Dialect::Sqlite => {
                "DELETE FROM login_failures WHERE username IN (SELECT username FROM login_failures \
                 WHERE throttled_until < $1 LIMIT 16)"
            }
        }
    }

    fn lock_head_sql(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
            Dialect::Sqlite => "SELECT seq, hash FROM audit_head WHERE id = 1",
        }
    }
}

/// Audit events per `INSERT` statement.
const EVENTS_PER_INSERT: usize = 200;

/// Insert-only changes of a batch, waiting to be written many rows per statement.
#[derive(Default)]
struct PendingInserts<'a> {
    requests: Vec<&'a RequestRecord>,
    grants: Vec<&'a GrantRecord>,
}

impl<'a> PendingInserts<'a> {
    /// Takes an insert-only change (`None`); gives any other back.
    fn add(&mut self, change: &'a Change) -> Option<&'a Change> {
        let Some((request, grant)) = change.inserted_rows() else {
            return Some(change);
        };
        self.requests.push(request);
        self.grants.extend(grant);
        None
    }

    /// Writes what is pending; a failure sends the batch back to be applied change by change.
    async fn flush(&mut self, connection: &mut AnyConnection) -> Result<(), BatchError> {
        // Requests first: a grant refers to its request.
        if !self.requests.is_empty() {
            access::insert_requests(connection, &self.requests)
                .await
                .map_err(|e| BatchError::InsertFailed(e.to_string()))?;
            self.requests.clear();
        }
        if !self.grants.is_empty() {
            access::insert_grants(connection, &self.grants)
                .await
                .map_err(|e| BatchError::InsertFailed(e.to_string()))?;
            self.grants.clear();
        }
        Ok(())
    }
}

/// Why a batch was not committed.
enum BatchError {
    /// The store failed: the whole batch fails.
    Store(StoreError),
    /// A change applied without its own savepoint failed: apply the batch again with savepoints.
    InsertFailed(String),
}

impl From<StoreError> for BatchError {
    fn from(error: StoreError) -> Self {
        BatchError::Store(error)
    }
}

impl BatchError {
    fn into_store(self) -> StoreError {
        match self {
            BatchError::Store(error) => error,
            BatchError::InsertFailed(reason) => StoreError::Unavailable(reason.into()),
        }
    }
}

pub(crate) async fn put_secrets(
    connection: &mut AnyConnection,
    secrets: &[(String, Vec<u8>)],
    at: Timestamp,
) -> Result<(), sqlx::Error> {
    for (path, blob) in secrets {
        sqlx::query(
            "INSERT INTO secrets (path, blob, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (path) DO UPDATE SET blob = $2, updated_at = $3",
        )
        .bind(path.clone())
        .bind(blob.clone())
        .bind(at.unix_ms())
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

async fn insert_session(
    connection: &mut AnyConnection,
    session: &SessionRecord,
) -> Result<(), sqlx::Error> {
    let (kind, name, role, user_id) = access::principal_columns(&session.principal);
    sqlx::query(
        "INSERT INTO sessions (id, token_hash, principal_kind, principal_name, principal_role, user_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(session.id.clone())
    .bind(session.token_hash.clone())
    .bind(kind)
    .bind(name.to_owned())
    .bind(role.map(str::to_owned))
    .bind(user_id.map(str::to_owned))
    .bind(session.created_at.unix_ms())
    .bind(session.expires_at.unix_ms())
    .execute(&mut *connection)
    .await?;
    Ok(())
}

async fn upsert_config(
    connection: &mut AnyConnection,
    table: ConfigTable,
    name: &str,
    config: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    let sql = match table {
        ConfigTable::Issuers => {
            "INSERT INTO jwt_issuers (name, config) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET config = $2"
        }
        ConfigTable::Roles => {
            "INSERT INTO jwt_roles (name, config) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET config = $2"
        }
    };
    sqlx::query(sql)
        .bind(name.to_owned())
        .bind(config.to_string())
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// The `WHERE` condition of a grant filter (constant SQL).
fn grant_condition(filter: GrantFilter) -> &'static str {
    match filter {
        GrantFilter::All => "1 = 1",
        GrantFilter::Live => "state IN ('issuing', 'active', 'revoking', 'failed')",
        GrantFilter::Active => "state = 'active'",
        GrantFilter::Failing => "state = 'failed' OR (state = 'revoking' AND n_attempts > 0)",
        GrantFilter::Unreviewed => "break_glass = 1 AND reviewed_by IS NULL",
    }
}

/// A duration in milliseconds, for a column of unix milliseconds.
fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn redact_url(url: &str) -> String {
    url.split_once("://")
        .map_or_else(|| "…".to_owned(), |(scheme, _)| format!("{scheme}://…"))
}

fn user_from_row(row: &AnyRow) -> Result<UserRecord, StoreError> {
    let groups: String = row.try_get("groups").map_err(unavailable)?;
    let groups: Vec<String> = serde_json::from_str(&groups)
        .map_err(|_| StoreError::Corrupt("user groups are not a JSON list".into()))?;
    let last_step: i64 = row.try_get("totp_last_step").map_err(unavailable)?;
    let disabled: i64 = row.try_get("disabled").map_err(unavailable)?;
    Ok(UserRecord {
        id: row.try_get("id").map_err(unavailable)?,
        username: row.try_get("username").map_err(unavailable)?,
        password_hash: row.try_get("password_hash").map_err(unavailable)?,
        groups,
        disabled: disabled != 0,
        totp_last_step: (last_step >= 0).then_some(last_step),
        created_at: Timestamp::from_unix_ms(row.try_get("created_at").map_err(unavailable)?),
    })
}

fn event_from_row(row: &AnyRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        seq: row.try_get("seq").map_err(unavailable)?,
        kind: row.try_get("kind").map_err(unavailable)?,
        body: row.try_get("body").map_err(unavailable)?,
        hash: row.try_get("hash").map_err(unavailable)?,
    })
}

fn config_from_row(row: &AnyRow) -> Result<JwtConfigRecord, StoreError> {
    let config: String = row.try_get("config").map_err(unavailable)?;
    Ok(JwtConfigRecord {
        name: row.try_get("name").map_err(unavailable)?,
        config: serde_json::from_str(&config)
            .map_err(|_| StoreError::Corrupt("JWT config is not JSON".into()))?,
    })
}

#[async_trait::async_trait]
impl Store for SqlStore {
    fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, StoreError> {
        let _writer = self.write_lock.lock().await;
        let cache = self.cache.as_ref().filter(|_| {
            writes
                .iter()
                .any(|w| w.change.as_ref().is_some_and(|c| !keeps_reads(c)))
        });
        let _changing = cache.map(ReadCache::changing);
        self.commit_locked(writes).await
    }

    async fn seal(&self) -> Result<Option<SealRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT seal_id, n_shares, threshold, kcv, wrapped_keyring, setup_code_hash, created_at FROM seal WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SealRecord {
            seal_id: row.try_get("seal_id").map_err(unavailable)?,
            n_shares: row.try_get("n_shares").map_err(unavailable)?,
            threshold: row.try_get("threshold").map_err(unavailable)?,
            kcv: row.try_get("kcv").map_err(unavailable)?,
            wrapped_keyring: row.try_get("wrapped_keyring").map_err(unavailable)?,
            setup_code_hash: row.try_get("setup_code_hash").map_err(unavailable)?,
            created_at: Timestamp::from_unix_ms(row.try_get("created_at").map_err(unavailable)?),
        }))
    }

    async fn secret(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT blob FROM secrets WHERE path = $1")
            .bind(path.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|row| row.try_get("blob").map_err(unavailable))
            .transpose()
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, username, password_hash, groups, disabled, totp_last_step, created_at FROM users WHERE username = $1",
        )
        .bind(username.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, username, password_hash, groups, disabled, totp_last_step, created_at FROM users ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn throttle(&self, username: &str) -> Result<Option<ThrottleRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT username, n_failures, throttled_until FROM login_failures WHERE username = $1",
        )
        .bind(username.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(ThrottleRecord {
            username: row.try_get("username").map_err(unavailable)?,
            n_failures: row.try_get("n_failures").map_err(unavailable)?,
            throttled_until: Timestamp::from_unix_ms(
                row.try_get("throttled_until").map_err(unavailable)?,
            ),
        }))
    }

    async fn session_by_hash(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<SessionRecord>, StoreError> {
        let Some(cache) = &self.cache else {
            return self.read_session(token_hash).await;
        };
        if let Some(session) = cache.session(token_hash) {
            return Ok(Some(session));
        }
        let read_at = cache.generation();
        let session = self.read_session(token_hash).await?;
        if let Some(session) = &session {
            cache.keep_session(token_hash, read_at, session);
        }
        Ok(session)
    }

    async fn jwt_issuer(&self, name: &str) -> Result<Option<JwtConfigRecord>, StoreError> {
        let row = sqlx::query("SELECT name, config FROM jwt_issuers WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(config_from_row).transpose()
    }

    async fn jwt_role(&self, name: &str) -> Result<Option<JwtConfigRecord>, StoreError> {
        let row = sqlx::query("SELECT name, config FROM jwt_roles WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(config_from_row).transpose()
    }

    async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok((
            row.try_get("seq").map_err(unavailable)?,
            row.try_get("hash").map_err(unavailable)?,
        ))
    }

    async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
        if let Some(events) = self.recent.as_ref().and_then(|r| r.after(after, limit)) {
            return Ok(events);
        }
        self.stored_audit_events(after, limit).await
    }

    async fn stored_audit_events(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, kind, body, hash FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn last_checkpoint(&self) -> Result<Option<StoredEvent>, StoreError> {
        let row = sqlx::query(LAST_CHECKPOINT)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn sink_cursor(&self, sink: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT seq FROM audit_cursors WHERE sink = $1")
            .bind(sink.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        match row {
            Some(row) => row.try_get("seq").map_err(unavailable),
            None => Ok(0),
        }
    }

    async fn set_sink_cursor(&self, sink: &str, seq: i64) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        sqlx::query(
            "INSERT INTO audit_cursors (sink, seq) VALUES ($1, $2) ON CONFLICT (sink) DO UPDATE SET seq = $2",
        )
        .bind(sink.to_owned())
        .bind(seq)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn purge_sessions(&self, before: Timestamp) -> Result<u64, StoreError> {
        let _writer = self.write_lock.lock().await;
        let _changing = self.cache.as_ref().map(ReadCache::changing);
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(before.unix_ms())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    async fn target(&self, name: &str) -> Result<Option<TargetRecord>, StoreError> {
        let row = sqlx::query("SELECT name, kind, url, created_at FROM targets WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(access::target_from_row).transpose()
    }

    async fn targets(&self) -> Result<Vec<TargetRecord>, StoreError> {
        let rows = sqlx::query("SELECT name, kind, url, created_at FROM targets ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(access::target_from_row).collect()
    }

    async fn role(&self, target: &str, name: &str) -> Result<Option<RoleRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT target, name, creation_sql, revocation_sql, max_ttl_ms FROM roles WHERE target = $1 AND name = $2",
        )
        .bind(target.to_owned())
        .bind(name.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(access::role_from_row).transpose()
    }

    async fn roles(&self) -> Result<Vec<RoleRecord>, StoreError> {
        let rows = sqlx::query("SELECT target, name, creation_sql, revocation_sql, max_ttl_ms FROM roles ORDER BY target, name")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(access::role_from_row).collect()
    }

    async fn policies(&self) -> Result<Option<(String, i64)>, StoreError> {
        let row = sqlx::query("SELECT text, version FROM policies WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some((
            row.try_get("text").map_err(unavailable)?,
            row.try_get("version").map_err(unavailable)?,
        )))
    }

    async fn decision_inputs(
        &self,
        target: &str,
        role: &str,
    ) -> Result<Option<DecisionInputs>, StoreError> {
        let Some(cache) = &self.cache else {
            return self.read_decision_inputs(target, role).await;
        };
        if let Some(inputs) = cache.decision_inputs(target, role) {
            return Ok(Some(inputs));
        }
        let read_at = cache.generation();
        let inputs = self.read_decision_inputs(target, role).await?;
        if let Some(inputs) = &inputs {
            cache.keep_decision_inputs(target, role, read_at, inputs);
        }
        Ok(inputs)
    }

    async fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM requests WHERE id = $1",
            access::REQUEST_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(access::request_from_row).transpose()
    }

    async fn requests(
        &self,
        pending_only: bool,
        limit: i64,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(requests_sql(pending_only)))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(access::request_from_row).collect()
    }

    async fn open_requests_after(
        &self,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        // The state condition is the partial index `requests_open`'s (migration 0003).
        let sql = format!(
            "SELECT {} FROM requests WHERE state IN ('pending', 'allowed') AND id > $1 ORDER BY id LIMIT $2",
            access::REQUEST_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after_id.to_owned())
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(access::request_from_row).collect()
    }

    async fn approvals(&self, request_id: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        let rows = sqlx::query("SELECT request_id, approver, comment, at FROM approvals WHERE request_id = $1 ORDER BY at")
            .bind(request_id.to_owned())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(access::approval_from_row).collect()
    }

    async fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StoreError> {
        let sql = format!("SELECT {} FROM grants WHERE id = $1", access::GRANT_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(access::grant_from_row).transpose()
    }

    async fn grants(
        &self,
        filter: GrantFilter,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM grants WHERE {} ORDER BY created_at DESC LIMIT $1",
            access::GRANT_COLUMNS,
            grant_condition(filter)
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(access::grant_from_row).collect()
    }

    async fn grants_after(
        &self,
        filter: GrantFilter,
        principals: Principals<'_>,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        let (scope, key) = match principals {
            Principals::All => ("", ""),
            Principals::Exactly(key) => (" AND principal = $3", key),
            Principals::StartingWith(prefix) => {
                (" AND substr(principal, 1, length($3)) = $3", prefix)
            }
        };
        let sql = format!(
            "SELECT {} FROM grants WHERE id > $1 AND ({}){scope} ORDER BY id LIMIT $2",
            access::GRANT_COLUMNS,
            grant_condition(filter)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after_id.to_owned())
            .bind(limit);
        if !scope.is_empty() {
            query = query.bind(key.to_owned());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(access::grant_from_row).collect()
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        claim_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        let _writer = self.write_lock.lock().await;
        let sql = access::claim_sql(self.dialect);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(claim_until.unix_ms())
            .bind(now.unix_ms())
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(access::grant_from_row).collect()
    }

    async fn clock_ms(&self) -> Result<i64, StoreError> {
        let sql = match self.dialect {
            Dialect::Postgres => {
                "SELECT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT) AS ms"
            }
            Dialect::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS ms"
            }
        };
        let row = sqlx::query(sql)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        row.try_get("ms").map_err(unavailable)
    }

    async fn live_logins(
        &self,
        logins: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut live = std::collections::HashSet::new();
        for chunk in logins.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT login FROM grants WHERE state IN ('issuing', 'active', 'revoking', 'failed') AND login IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for login in chunk {
                query = query.bind(login.clone());
            }
            for row in query.fetch_all(&self.pool).await.map_err(unavailable)? {
                live.insert(row.try_get("login").map_err(unavailable)?);
            }
        }
        Ok(live)
    }

    async fn revoked_certificate_logins(
        &self,
        target: &str,
        now: Timestamp,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT login FROM grants \
             WHERE target = $2 AND state IN ('revoking', 'failed', 'revoked', 'verified') \
             AND expires_at > $1 ORDER BY login",
        )
        .bind(now.unix_ms())
        .bind(target.to_owned())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| row.try_get("login").map_err(unavailable))
            .collect()
    }

    async fn grant_by_login(&self, login: &str) -> Result<Option<GrantRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM grants WHERE login = $1",
            access::GRANT_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(login.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(access::grant_from_row).transpose()
    }

    async fn make_issuing_due(&self, now: Timestamp) -> Result<u64, StoreError> {
        let _writer = self.write_lock.lock().await;
        let done = sqlx::query(
            "UPDATE grants SET next_attempt_at = $1, claimed_until = 0 WHERE state = 'issuing'",
        )
        .bind(now.unix_ms())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let row = sqlx::query(
            "SELECT min(next_attempt_at) AS at FROM grants WHERE next_attempt_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        let at: Option<i64> = row.try_get("at").map_err(unavailable)?;
        Ok(at.map(Timestamp::from_unix_ms))
    }
}

fn decode_hash(hex_hash: &str) -> Result<[u8; 32], StoreError> {
    let bytes = hex::decode(hex_hash)
        .map_err(|_| StoreError::Corrupt("audit head hash is not hex".into()))?;
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("audit head hash is not 32 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queries that migration 0003's partial indexes are for do use them (a query that does
    /// not repeat an index's condition would scan the table, which grows by a row per grant).
    #[tokio::test]
    async fn open_requests_and_checkpoints_are_found_by_their_partial_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let pending = requests_sql(true);
        for (sql, index) in [
            (LAST_CHECKPOINT, "audit_checkpoints"),
            (pending.as_str(), "requests_open"),
            (access::EXPIRE_REQUESTS, "requests_open"),
        ] {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .fetch_all(&store.pool)
                .await
                .unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.try_get("detail").unwrap()).collect();
            assert!(
                plan.iter()
                    .any(|step| step.contains(&format!("INDEX {index}"))),
                "{sql}: {plan:?}"
            );
        }
        store.close().await;
    }

    /// A certificate's request and grant, every column a value of its own (a column bound in
    /// another's place shows).
    fn records(n: u32) -> (RequestRecord, GrantRecord) {
        use mayfly_core::grant::{GrantState, RequestState};
        let ms = Timestamp::from_unix_ms;
        let request = RequestRecord {
            id: format!("r{n}"),
            principal: Principal::Workload {
                role: "ci".into(),
                name: "job 'quoted'".into(),
            },
            target: "hosts".into(),
            role: "login".into(),
            reason: "a reason; DROP TABLE grants; --".into(),
            ticket: "T-1".into(),
            ttl_ms: 60_000,
            max_ttl_ms: 120_000,
            approvals_needed: 2,
            state: RequestState::Activated,
            decision: "allowed by p".into(),
            break_glass: true,
            created_at: ms(1_000),
            expires_at: ms(2_000),
        };
        let grant = GrantRecord {
            id: format!("g{n}"),
            request_id: format!("r{n}"),
            principal: "workload:ci:job".into(),
            target: "hosts-2".into(),
            role: "login-2".into(),
            login: format!("mf_g{n}"),
            state: GrantState::Active,
            created_at: ms(3_000),
            expires_at: ms(61_000),
            next_attempt_at: Some(ms(62_000)),
            epoch: 3,
            n_attempts: 4,
            last_error: Some("last error".into()),
            revoke_reason: Some("revoke reason".into()),
            revoked_at: Some(ms(70_000)),
            verified_at: Some(ms(71_000)),
            break_glass: true,
            reviewed_by: Some("reviewer".into()),
        };
        (request, grant)
    }

    fn certificate(n: u32) -> Write {
        let (request, grant) = records(n);
        Write {
            change: Some(Change::IssueCertificate {
                request: Box::new(request),
                grant: Box::new(grant),
            }),
            event: AuditDraft::new(
                Timestamp::from_unix_ms(1_000),
                "access.certificate",
                mayfly_core::audit::Outcome::Ok,
            ),
        }
    }

    /// The one-script commit itself (the store would hide its failure behind the long way):
    /// every row of a batch lands as it was, a batch from a head that is not the stored one
    /// leaves nothing, the next batch goes through on a fresh connection, and a closed store
    /// opens none.
    #[tokio::test]
    async fn a_batch_goes_in_one_script_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let plain = || Write {
            change: None,
            event: AuditDraft::new(
                Timestamp::from_unix_ms(1),
                "fact",
                mayfly_core::audit::Outcome::Ok,
            ),
        };
        // The first batch reads the head (the long way); the store knows it from then on.
        store.commit(vec![plain()]).await.unwrap();
        let head = store.script_head(&[certificate(1)]).unwrap();

        let batch = [certificate(1), plain(), certificate(2)];
        let (outcomes, new_head, kept) = store.commit_script(&batch, head).await.unwrap();
        assert_eq!(
            outcomes,
            (1..=3)
                .map(|i| WriteOutcome::Applied { seq: head.0 + i })
                .collect::<Vec<_>>()
        );
        assert_eq!(new_head.0, head.0 + 3);
        let (seq, hash) = store.audit_head().await.unwrap();
        assert_eq!((seq, hash.clone()), (new_head.0, hex::encode(new_head.1)));
        assert_eq!(kept.last().map(|e| e.hash.clone()), Some(hash));
        for n in [1, 2] {
            let (request, grant) = records(n);
            assert_eq!(store.request(&request.id).await.unwrap(), Some(request));
            assert_eq!(store.grant(&grant.id).await.unwrap(), Some(grant));
        }

        // From a head whose hash is not the stored one: refused by the head's `NOT NULL`, and
        // nothing of the batch is kept.
        let stale = store
            .commit_script(&[certificate(3)], (new_head.0, [0xab; 32]))
            .await
            .unwrap_err();
        let reason = std::error::Error::source(&stale)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(reason.contains("audit_head.seq"), "{reason}");
        assert!(store.grant("g3").await.unwrap().is_none());
        assert!(store.request("r3").await.unwrap().is_none());
        assert_eq!(store.audit_head().await.unwrap().0, new_head.0);

        // The next batch opens a new connection and goes through.
        let (_, after, _) = store
            .commit_script(&[certificate(3)], new_head)
            .await
            .unwrap();
        assert_eq!(after.0, new_head.0 + 1);
        assert!(store.grant("g3").await.unwrap().is_some());

        store.close().await;
        let closed = store.commit_script(&[certificate(4)], after).await;
        assert!(closed.is_err(), "committed after close");
    }
}
