//! [`SqlStore`]: the one implementation of [`Store`], over sqlx's `Any` driver for SQLite and
//! PostgreSQL. Opening (the URL, the lock on a SQLite file, the pool, the migrations), the reads
//! kept in memory on SQLite, the write lock, and the [`Store`] methods, each handed to the
//! module that owns its tables.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::{Principal, SecretPath, Timestamp};
use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use tokio::sync::Mutex;

use crate::cache::{DecisionInputs, ReadCache, StoreLock, keeps_reads, make_private};
use crate::dialect::Dialect;
use crate::error::{StoreError, unavailable};
use crate::failover::{self, Servers, redact_url};
use crate::identity::JwtTable;
use crate::records::{
    AdminRotationRecord, AgentRecord, ApprovalRecord, AuditQuery, AuditRecord, CallApprovalRecord,
    ExchangedTokenRecord, GrantFilter, GrantRecord, JwtConfigRecord, KvSecretRecord,
    KvVersionRecord, NotificationRecord, OutboxStats, Principals, ProxyRouteRecord, RequestRecord,
    RoleRecord, SealRecord, SealWrapRecord, SessionRecord, SsoPendingRecord, StoredEvent,
    TargetRecord, ThrottleRecord, UserRecord, Write, WriteOutcome,
};
use crate::write::{Script, Writer};
use crate::{
    Capabilities, Claimant, Claimed, ClusterRows, DueHints, NodeRecord, NodeRegistration,
    PictureQuery, PictureRows, Store, agents, audit, catalog, cluster, exchanged, grants, identity,
    kv, outbox, picture, proxy_routes, requests, rotations, seal_wraps, secrets,
};

#[derive(Debug)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// Serializes this node's writers. Across nodes (Postgres) the audit head row lock does it.
    write_lock: Mutex<()>,
    /// Reads kept in memory: SQLite on a file only, where this store holds `_lock`.
    cache: Option<ReadCache>,
    /// The write path, with what it keeps between batches on a SQLite file.
    writer: Writer,
    /// Where the due hints are listened for (PostgreSQL only: `cluster::listen_due`).
    listen_url: Option<cluster::ListenUrl>,
    /// The servers of a store given as several PostgreSQL URLs, and the task that follows the
    /// one accepting writes (`failover.rs`); stopped when the store is dropped.
    servers: Option<Arc<Servers>>,
    _watcher: Option<AbortOnDrop>,
    /// Last, so that it is released after every connection above is closed.
    _lock: Option<StoreLock>,
}

/// Stops a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a PostgreSQL session of the store may sit idle inside a transaction. The broker's
/// own transactions never wait on anything but the server between their statements.
const IDLE_IN_TRANSACTION_LIMIT: &str = "SET idle_in_transaction_session_timeout = '10s'";

impl SqlStore {
    /// Opens the store at `url`: one URL, or several PostgreSQL URLs separated by commas
    /// ([`crate::split_urls`]; see [`SqlStore::open_any`]).
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        SqlStore::open_any(&crate::split_urls(url)).await
    }

    /// Opens the store whose servers are `urls`: one URL (SQLite or PostgreSQL), or the
    /// PostgreSQL servers of one replicated cluster, the primary first, of which only the one
    /// that accepts writes is connected to (`failover.rs`).
    pub async fn open_any(urls: &[String]) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let (options, dialect, servers, watcher_connection) = match urls {
            [] => return Err(StoreError::UrlList("the list is empty".into())),
            [url] => {
                let dialect = Dialect::of_url(url)
                    .ok_or_else(|| StoreError::UnsupportedUrl(redact_url(url)))?;
                let options = AnyConnectOptions::from_str(url).map_err(unavailable)?;
                (options, dialect, None, None)
            }
            several => {
                let servers = Servers::new(several)?;
                let (options, connection) = servers.find_at_open().await?;
                (
                    options,
                    Dialect::Postgres,
                    Some(Arc::new(servers)),
                    Some(connection),
                )
            }
        };
        // One broker per SQLite file: taken before anything is read or migrated.
        let (lock, script) = match (dialect, urls) {
            (Dialect::Sqlite, [url])
                if !(url.contains(":memory:") || url.contains("mode=memory")) =>
            {
                let file =
                    sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(unavailable)?;
                let lock = StoreLock::take(file.get_filename(), Duration::from_secs(10)).await?;
                let script = Script::new(file.get_filename().to_owned());
                (Some(lock), Some(script))
            }
            _ => (None, None),
        };
        let max_connections = match dialect {
            Dialect::Sqlite => 4,
            Dialect::Postgres => 16,
        };
        let connecting = servers.clone();
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // A SQLite connection is a file handle in this process: pinging it before every use
            // (a round trip to its worker thread) finds nothing. A PostgreSQL one can have died.
            .test_before_acquire(dialect == Dialect::Postgres)
            .after_connect(move |connection, _meta| {
                let servers = connecting.clone();
                Box::pin(async move {
                    match dialect {
                        Dialect::Sqlite => {
                            sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")
                                .execute(&mut *connection)
                                .await?;
                        }
                        // Only the server that accepts writes: a standby's connection is refused
                        // (the pool connects again, to the server the watcher finds).
                        Dialect::Postgres => {
                            // A broker frozen (SIGSTOP, a VM pause) inside a transaction would
                            // hold its row locks, the audit head's among them, and stall every
                            // other node's commits until it runs again: the server ends such a
                            // session (and rolls its transaction back) after this.
                            sqlx::raw_sql(IDLE_IN_TRANSACTION_LIMIT)
                                .execute(&mut *connection)
                                .await?;
                            if !failover::accepts_writes(connection).await? {
                                if let Some(servers) = &servers {
                                    servers.wake();
                                }
                                return Err(failover::standby_refused());
                            }
                        }
                    }
                    Ok(())
                })
            });
        if let Some(servers) = &servers {
            // A connection made before the pool moved to another server is closed, not used.
            let servers = servers.clone();
            pool_options = pool_options.before_acquire(move |_connection, meta| {
                let stale = servers.predates_switch(meta.age);
                Box::pin(async move { Ok(!stale) })
            });
        }
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        if let Some(script) = &script {
            make_private(script.path())?;
        }
        let migrator = match dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(Box::new(e)))?;
        let watcher = match (&servers, watcher_connection) {
            (Some(servers), Some(connection)) => {
                let task = tokio::spawn(failover::watch(servers.clone(), pool.clone(), connection));
                Some(AbortOnDrop(task.abort_handle()))
            }
            _ => None,
        };
        Ok(SqlStore {
            writer: Writer::new(pool.clone(), dialect, script),
            pool,
            dialect,
            write_lock: Mutex::new(()),
            listen_url: (dialect == Dialect::Postgres).then(|| cluster::ListenUrl(urls.to_vec())),
            cache: lock.is_some().then(ReadCache::default),
            servers,
            _watcher: watcher,
            _lock: lock,
        })
    }

    /// This node's write lock on SQLite (one writer per file), for the cluster's own small
    /// writes. None on PostgreSQL: a heartbeat must not wait behind a batch being committed.
    async fn sqlite_writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.dialect {
            Dialect::Sqlite => Some(self.write_lock.lock().await),
            Dialect::Postgres => None,
        }
    }

    /// The server the store writes to, as `host:port`, when it was given as a list of servers.
    pub fn writable_server(&self) -> Option<String> {
        self.servers.as_ref().map(|servers| servers.current_name())
    }

    /// How many times the store moved to another server since it was opened (0 for a store of
    /// one URL).
    pub fn n_failovers(&self) -> u64 {
        self.servers
            .as_ref()
            .map_or(0, |servers| servers.n_switches())
    }

    pub async fn close(&self) {
        // Waits for a batch being committed, then closes the one-script connection.
        self.writer.close();
        self.pool.close().await;
    }
}

#[async_trait::async_trait]
impl Store for SqlStore {
    fn capabilities(&self) -> Capabilities {
        match self.dialect {
            // One broker per SQLite database (the lock file), written by this process.
            Dialect::Sqlite => Capabilities {
                sole_writer: true,
                commits_in_process: true,
            },
            Dialect::Postgres => Capabilities {
                sole_writer: false,
                commits_in_process: false,
            },
        }
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, StoreError> {
        let _writer = self.write_lock.lock().await;
        let cache = self.cache.as_ref().filter(|_| {
            writes
                .iter()
                .any(|w| w.change.as_ref().is_some_and(|c| !keeps_reads(c)))
        });
        let _changing = cache.map(ReadCache::changing);
        let committed = self.writer.commit(writes).await;
        // The server may have gone away: have the watcher look now, not at its next round.
        if let (Err(StoreError::Unavailable(_)), Some(servers)) = (&committed, &self.servers) {
            servers.wake();
        }
        committed
    }

    async fn seal(&self) -> Result<Option<SealRecord>, StoreError> {
        secrets::seal(&self.pool).await
    }

    async fn seal_wrap(&self, key_id: &str) -> Result<Option<SealWrapRecord>, StoreError> {
        seal_wraps::seal_wrap(&self.pool, key_id).await
    }

    async fn past_due_grants(&self, now: Timestamp) -> Result<u64, StoreError> {
        seal_wraps::past_due_grants(&self.pool, now).await
    }

    async fn secret(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
        secrets::secret(&self.pool, path).await
    }

    async fn secret_paths(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut paths = secrets::secret_paths(&self.pool, prefix).await?;
        // The database's collation may not order by bytes (PostgreSQL's usually does not).
        paths.sort();
        Ok(paths)
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        identity::user_by_name(&self.pool, username).await
    }

    async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        identity::users(&self.pool).await
    }

    async fn throttle(&self, username: &str) -> Result<Option<ThrottleRecord>, StoreError> {
        identity::throttle(&self.pool, username).await
    }

    async fn user_by_slack_id(
        &self,
        slack_user_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        identity::user_by_slack_id(&self.pool, slack_user_id).await
    }

    async fn latest_factor_at(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        identity::latest_factor_at(&self.pool, user_id, now).await
    }

    async fn session_by_hash(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<SessionRecord>, StoreError> {
        let Some(cache) = &self.cache else {
            return identity::session(&self.pool, token_hash).await;
        };
        if let Some(session) = cache.session(token_hash) {
            return Ok(Some(session));
        }
        let read_at = cache.generation();
        let session = identity::session(&self.pool, token_hash).await?;
        if let Some(session) = &session {
            cache.keep_session(token_hash, read_at, session);
        }
        Ok(session)
    }

    async fn jwt_issuer(&self, name: &str) -> Result<Option<JwtConfigRecord>, StoreError> {
        identity::jwt_config(&self.pool, JwtTable::Issuers, name).await
    }

    async fn jwt_role(&self, name: &str) -> Result<Option<JwtConfigRecord>, StoreError> {
        identity::jwt_config(&self.pool, JwtTable::Roles, name).await
    }

    async fn jwt_roles(&self) -> Result<Vec<JwtConfigRecord>, StoreError> {
        identity::jwt_roles(&self.pool).await
    }

    async fn sso_provider(&self, name: &str) -> Result<Option<JwtConfigRecord>, StoreError> {
        crate::sso::provider(&self.pool, name).await
    }

    async fn sso_providers(&self) -> Result<Vec<JwtConfigRecord>, StoreError> {
        crate::sso::providers(&self.pool).await
    }

    async fn sso_pending(
        &self,
        key_hash: &[u8],
        kind: &str,
    ) -> Result<Option<SsoPendingRecord>, StoreError> {
        crate::sso::pending(&self.pool, key_hash, kind).await
    }

    async fn sso_identity_user(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        crate::sso::identity_user(&self.pool, issuer, subject).await
    }

    async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        audit::head(&self.pool).await
    }

    async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
        if let Some(events) = self.writer.recent_events(after, limit) {
            return Ok(events);
        }
        self.stored_audit_events(after, limit).await
    }

    async fn stored_audit_events(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        audit::events(&self.pool, after, limit).await
    }

    async fn last_checkpoint(&self) -> Result<Option<StoredEvent>, StoreError> {
        audit::last_checkpoint(&self.pool).await
    }

    async fn audit_search(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        audit::search(&self.pool, query).await
    }

    async fn sink_cursor(&self, sink: &str) -> Result<i64, StoreError> {
        audit::sink_cursor(&self.pool, sink).await
    }

    async fn set_sink_cursor(&self, sink: &str, seq: i64) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        audit::set_sink_cursor(&self.pool, sink, seq).await
    }

    async fn purge_sessions(&self, before: Timestamp) -> Result<u64, StoreError> {
        let _writer = self.write_lock.lock().await;
        let _changing = self.cache.as_ref().map(ReadCache::changing);
        exchanged::purge(&self.pool, before).await?;
        identity::purge_sessions(&self.pool, before).await
    }

    async fn kv_secret(
        &self,
        path: &SecretPath,
        version: Option<i64>,
    ) -> Result<Option<KvSecretRecord>, StoreError> {
        let Some(cache) = &self.cache else {
            return kv::version(&self.pool, path, version).await;
        };
        let key = path.to_string();
        if let Some(secret) = cache.kv_secret(&key, version) {
            return Ok(Some(secret));
        }
        let read_at = cache.generation();
        let secret = kv::version(&self.pool, path, version).await?;
        if let Some(secret) = &secret {
            cache.keep_kv_secret(&key, version, read_at, secret);
        }
        Ok(secret)
    }

    async fn kv_history(&self, path: &SecretPath) -> Result<Vec<KvVersionRecord>, StoreError> {
        kv::history(&self.pool, path).await
    }

    async fn kv_latest(
        &self,
        project: &str,
        environment: &str,
        with_blobs: bool,
    ) -> Result<Vec<KvSecretRecord>, StoreError> {
        kv::latest(&self.pool, project, environment, with_blobs).await
    }

    async fn exchanged_token(
        &self,
        jti: &str,
    ) -> Result<Option<(ExchangedTokenRecord, Option<SessionRecord>)>, StoreError> {
        exchanged::exchanged_token(&self.pool, jti).await
    }

    async fn proxy_route(&self, name: &str) -> Result<Option<ProxyRouteRecord>, StoreError> {
        let Some(cache) = &self.cache else {
            return proxy_routes::route(&self.pool, name).await;
        };
        if let Some(route) = cache.proxy_route(name) {
            return Ok(Some(route));
        }
        let read_at = cache.generation();
        let route = proxy_routes::route(&self.pool, name).await?;
        if let Some(route) = &route {
            cache.keep_proxy_route(name, read_at, route);
        }
        Ok(route)
    }

    async fn proxy_routes(&self) -> Result<Vec<ProxyRouteRecord>, StoreError> {
        proxy_routes::routes(&self.pool).await
    }

    async fn target(&self, name: &str) -> Result<Option<TargetRecord>, StoreError> {
        catalog::target(&self.pool, name).await
    }

    async fn targets(&self) -> Result<Vec<TargetRecord>, StoreError> {
        catalog::targets(&self.pool).await
    }

    async fn role(&self, target: &str, name: &str) -> Result<Option<RoleRecord>, StoreError> {
        catalog::role(&self.pool, target, name).await
    }

    async fn roles(&self) -> Result<Vec<RoleRecord>, StoreError> {
        catalog::roles(&self.pool).await
    }

    async fn policies(&self) -> Result<Option<(String, i64)>, StoreError> {
        catalog::policies(&self.pool).await
    }

    async fn decision_inputs(
        &self,
        target: &str,
        role: &str,
    ) -> Result<Option<DecisionInputs>, StoreError> {
        let Some(cache) = &self.cache else {
            return catalog::decision_inputs(&self.pool, target, role).await;
        };
        if let Some(inputs) = cache.decision_inputs(target, role) {
            return Ok(Some(inputs));
        }
        let read_at = cache.generation();
        let inputs = catalog::decision_inputs(&self.pool, target, role).await?;
        if let Some(inputs) = &inputs {
            cache.keep_decision_inputs(target, role, read_at, inputs);
        }
        Ok(inputs)
    }

    async fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        requests::request(&self.pool, id).await
    }

    async fn requests(
        &self,
        pending_only: bool,
        limit: i64,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        requests::requests(&self.pool, pending_only, limit).await
    }

    async fn requests_of(
        &self,
        principal: &Principal,
        limit: i64,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        requests::requests_of(&self.pool, principal, limit).await
    }

    async fn grants_of(
        &self,
        key: &str,
        filter: GrantFilter,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        grants::grants_of(&self.pool, key, filter, limit).await
    }

    async fn open_requests_after(
        &self,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        requests::open_requests_after(&self.pool, after_id, limit).await
    }

    async fn approvals(&self, request_id: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        requests::approvals(&self.pool, request_id).await
    }

    async fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StoreError> {
        grants::grant(&self.pool, id).await
    }

    async fn grants(
        &self,
        filter: GrantFilter,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        grants::grants(&self.pool, filter, limit).await
    }

    async fn grants_after(
        &self,
        filter: GrantFilter,
        principals: Principals<'_>,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        grants::grants_after(&self.pool, filter, principals, after_id, limit).await
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        claim_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        let _writer = self.write_lock.lock().await;
        grants::claim_due(&self.pool, self.dialect, now, claim_until, limit).await
    }

    async fn claim_due_as(
        &self,
        claimant: &Claimant,
        now: Timestamp,
        claim_until: Timestamp,
        limit: i64,
    ) -> Result<Claimed, StoreError> {
        let _writer = self.write_lock.lock().await;
        cluster::claim_due_as(&self.pool, self.dialect, claimant, now, claim_until, limit).await
    }

    async fn next_claimable(&self, now: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        cluster::next_claimable(&self.pool, now).await
    }

    async fn register_node(
        &self,
        node: &NodeRegistration,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let _writer = self.sqlite_writer().await;
        cluster::register(&self.pool, node, now, lease_until).await
    }

    async fn heartbeat_node(
        &self,
        node: &Claimant,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<bool, StoreError> {
        let _writer = self.sqlite_writer().await;
        cluster::heartbeat(&self.pool, node, now, lease_until).await
    }

    async fn leave_node(&self, node: &Claimant, now: Timestamp) -> Result<(), StoreError> {
        let _writer = self.sqlite_writer().await;
        cluster::leave(&self.pool, node, now).await
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        cluster::nodes(&self.pool).await
    }

    async fn acquire_leases(
        &self,
        names: &[&str],
        holder: &Claimant,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let _writer = self.sqlite_writer().await;
        cluster::acquire(&self.pool, names, holder, now, until).await
    }

    async fn cluster(&self, now: Timestamp) -> Result<ClusterRows, StoreError> {
        cluster::cluster(&self.pool, now).await
    }

    fn due_hints(&self) -> Option<DueHints> {
        self.listen_url.as_ref().map(cluster::listen_due)
    }

    async fn make_issuing_due(&self, now: Timestamp) -> Result<u64, StoreError> {
        let _writer = self.write_lock.lock().await;
        grants::make_issuing_due(&self.pool, now).await
    }

    async fn clock_ms(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(self.dialect.clock_sql())
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn live_logins(&self, logins: &[String]) -> Result<HashSet<String>, StoreError> {
        grants::live_logins(&self.pool, logins).await
    }

    async fn revoked_certificate_logins(
        &self,
        target: &str,
        now: Timestamp,
    ) -> Result<Vec<String>, StoreError> {
        grants::revoked_certificate_logins(&self.pool, target, now).await
    }

    async fn grant_by_login(&self, login: &str) -> Result<Option<GrantRecord>, StoreError> {
        grants::grant_by_login(&self.pool, login).await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        grants::next_due(&self.pool).await
    }

    async fn admin_rotation(
        &self,
        target: &str,
    ) -> Result<Option<AdminRotationRecord>, StoreError> {
        rotations::rotation(&self.pool, target).await
    }

    async fn admin_rotations(&self) -> Result<Vec<AdminRotationRecord>, StoreError> {
        rotations::rotations(&self.pool).await
    }

    async fn due_admin_rotations(
        &self,
        now: Timestamp,
    ) -> Result<Vec<AdminRotationRecord>, StoreError> {
        rotations::due(&self.pool, now).await
    }

    async fn claim_notifications(
        &self,
        now: Timestamp,
        claim_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        let _writer = self.write_lock.lock().await;
        outbox::claim(&self.pool, self.dialect, now, claim_until, limit).await
    }

    async fn notification_delivered(&self, id: &str, at: Timestamp) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        outbox::delivered(&self.pool, id, at).await
    }

    async fn notification_failed(
        &self,
        id: &str,
        epoch: i64,
        error: &str,
        retry_at: Timestamp,
    ) -> Result<(), StoreError> {
        let _writer = self.write_lock.lock().await;
        outbox::failed(&self.pool, id, epoch, error, retry_at).await
    }

    async fn undelivered_notifications(
        &self,
        min_attempts: i64,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        outbox::undelivered(&self.pool, min_attempts, limit).await
    }

    async fn notification(&self, id: &str) -> Result<Option<NotificationRecord>, StoreError> {
        outbox::notification(&self.pool, id).await
    }

    async fn notifications_of_kind(
        &self,
        kind: &str,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        outbox::of_kind(&self.pool, kind, limit).await
    }

    async fn outbox_stats(&self, failing_after: i64) -> Result<Vec<OutboxStats>, StoreError> {
        outbox::stats(&self.pool, failing_after).await
    }

    async fn next_notification_due(&self) -> Result<Option<Timestamp>, StoreError> {
        outbox::next_due(&self.pool).await
    }

    async fn grants_to_warn(
        &self,
        dedup_prefix: &str,
        now: Timestamp,
        before: Timestamp,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        outbox::grants_to_warn(&self.pool, dedup_prefix, now, before, limit).await
    }

    async fn purge_delivered_notifications(&self, before: Timestamp) -> Result<u64, StoreError> {
        let _writer = self.write_lock.lock().await;
        outbox::purge_delivered(&self.pool, before).await
    }

    async fn access_picture(&self, query: &PictureQuery<'_>) -> Result<PictureRows, StoreError> {
        picture::access_picture(&self.pool, query).await
    }

    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        agents::agents(&self.pool).await
    }

    async fn disabled_agents(
        &self,
        names: &[&str],
        issued_at: Option<Timestamp>,
    ) -> Result<Vec<String>, StoreError> {
        agents::disabled_agents(&self.pool, names, issued_at).await
    }

    async fn call_approval(&self, id: &str) -> Result<Option<CallApprovalRecord>, StoreError> {
        agents::call_approval(&self.pool, id).await
    }

    async fn call_approvals_of_key(
        &self,
        key_hash: &str,
        limit: i64,
    ) -> Result<Vec<CallApprovalRecord>, StoreError> {
        agents::call_approvals_of_key(&self.pool, key_hash, limit).await
    }

    async fn pending_call_approvals(
        &self,
        limit: i64,
    ) -> Result<Vec<CallApprovalRecord>, StoreError> {
        agents::pending_call_approvals(&self.pool, limit).await
    }

    async fn n_pending_call_approvals(
        &self,
        subject: &str,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        agents::n_pending_call_approvals(&self.pool, subject, now).await
    }
}

#[cfg(test)]
mod tests {
    use mayfly_core::Principal;
    use mayfly_core::audit::AuditDraft;
    use sqlx::Row;

    use super::*;
    use crate::records::Change;

    /// The queries that migration 0003's partial indexes are for do use them (a query that does
    /// not repeat an index's condition would scan the table, which grows by a row per grant); the
    /// last checkpoint is found by 0013's index by kind, which replaced 0003's.
    #[tokio::test]
    async fn open_requests_and_checkpoints_are_found_by_their_partial_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let pending = requests::requests_sql(true);
        for (sql, index) in [
            (audit::LAST_CHECKPOINT, "audit_events_kind"),
            (pending.as_str(), "requests_open"),
            (requests::EXPIRE_REQUESTS, "requests_open"),
            // 0013's index by kind reads the sweep's findings only (SQLite prefers it to 0014's
            // partial index, which then only costs the rare finding its entry).
            (picture::ORPHANS, "audit_events_kind"),
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

    /// Each audit search walks migration 0013's index of its most selective condition (never
    /// the whole table, which grows by an event per call); a prefix of several kinds walks the
    /// kind index once per kind, and finds those kinds by seeks of it.
    #[tokio::test]
    async fn audit_searches_walk_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        let query = |principal: bool, target: bool, kind: Option<bool>| AuditQuery {
            principal: principal.then(|| "user:alice".to_owned()),
            target: target.then(|| "pg".to_owned()),
            kind: kind.map(|_| "grant.".to_owned()),
            kind_prefix: kind.unwrap_or(false),
            limit: 50,
            ..AuditQuery::default()
        };
        let two = ["grant.issue".to_owned(), "grant.revoked".to_owned()];
        for (query, kinds, index) in [
            (query(true, false, None), &[][..], "audit_events_principal"),
            (query(false, true, None), &[][..], "audit_events_target"),
            (
                query(false, false, Some(false)),
                &[][..],
                "audit_events_kind",
            ),
            (
                query(false, false, Some(true)),
                &[][..],
                "audit_events_kind",
            ),
            (
                query(false, false, Some(true)),
                &two[..],
                "audit_events_kind",
            ),
        ] {
            let (sql, binds) = audit::search_sql(&query, kinds, audit::SeqWindow::default());
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut statement = sqlx::query(sqlx::AssertSqlSafe(explain));
            for value in binds {
                statement = match value {
                    audit::Bound::Text(text) => statement.bind(text),
                    audit::Bound::Int(n) => statement.bind(n),
                };
            }
            let rows = statement.fetch_all(&store.pool).await.unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.try_get("detail").unwrap()).collect();
            assert!(
                plan.iter()
                    .any(|step| step.contains(&format!("INDEX {index}"))),
                "{sql}: {plan:?}"
            );
            assert!(
                !plan
                    .iter()
                    .any(|step| step.starts_with("SCAN audit_events")),
                "{sql}: {plan:?}"
            );
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {}",
            audit::KINDS_WITH_PREFIX
        )))
        .bind("grant.")
        .bind("grant/")
        .bind(65_i64)
        .fetch_all(&store.pool)
        .await
        .unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.try_get("detail").unwrap()).collect();
        assert!(
            !plan
                .iter()
                .any(|step| step.starts_with("SCAN audit_events")),
            "{plan:?}"
        );
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
            actors: vec!["agent:claude".into(), "user:bob".into()],
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
            actors: vec!["agent:cursor".into()],
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
        let head = store.writer.script_head(&[certificate(1)]).unwrap();

        let batch = [certificate(1), plain(), certificate(2)];
        let (outcomes, new_head, kept) = store.writer.commit_script(&batch, head).await.unwrap();
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
            .writer
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
            .writer
            .commit_script(&[certificate(3)], new_head)
            .await
            .unwrap();
        assert_eq!(after.0, new_head.0 + 1);
        assert!(store.grant("g3").await.unwrap().is_some());

        store.close().await;
        let closed = store.writer.commit_script(&[certificate(4)], after).await;
        assert!(closed.is_err(), "committed after close");
    }
}
