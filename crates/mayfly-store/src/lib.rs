//! The broker's state: the [`Store`] trait and its two backends, SQLite (embedded default, one
//! file, WAL) and PostgreSQL (several broker nodes on one state).
//!
//! Both backends run the same SQL through sqlx's `Any` driver; the DDL differs, so each has its
//! own migrations folder, applied at [`open`]. The only dialect switch is on `Dialect`, inside
//! this crate; the server reads [`Capabilities`].
//!
//! Every change of state goes through [`Store::commit`] together with the audit event that records
//! it: one transaction appends the events to the hash chain and applies the changes, so an action
//! and its event commit together or not at all. A batch holds many requests' writes (group
//! commit); each write runs under its own savepoint, so one conflicting write does not fail the
//! others. The store keeps only ciphertext for secrets: encryption happens before it is called.
//!
//! ## Code map, bottom to top
//!
//! Each module uses only modules listed before it (none but `store` uses [`Store`]):
//!
//! - `error`, `records`: [`StoreError`]; the records, [`Change`], [`Write`] and its outcome.
//! - `dialect`, `rows`: the row plumbing. `Dialect` and placeholders; column lists, the
//!   values of the rows written, and the rows read mapped to records (`sqlx::FromRow`).
//! - `cache`: reads and recent events kept in memory on SQLite, and the lock on its file.
//! - `cluster`: several brokers on one store (migration 0016): the nodes' heartbeats, the claims
//!   of due grants named by node, the single-doer leases and their fence, the due hints
//!   (PostgreSQL `LISTEN`/`NOTIFY`).
//! - `secrets`, `rotations`, `identity`, `catalog`, `requests`, `grants`, `exchanged`, `kv`,
//!   `proxy_routes`, `outbox`, `sso`, `agents`, `audit`: the SQL of each group of tables
//!   (`rotations`: the rotation of targets' admin secrets; `sso`: single sign-on; `agents`: the
//!   agents' kill switch and the approvals of single tool calls), the changes that write them and
//!   the reads. (`exchanged` and `identity` call `agents` to mark an agent seen.)
//! - `seal_wraps`: the root key's wraps per key-encryption key (auto-unseal) and the count of
//!   live grants past due.
//! - `picture`: the dashboard's narrow reads across grants, requests and the log (issue 21).
//! - `write`: the write path (batches, the one-script commit on SQLite, the chain head).
//! - `failover`: a store given as several PostgreSQL URLs: only the server that accepts writes
//!   is connected to, and the pool follows a promotion (docs/store.md).
//! - `store`: [`SqlStore`], opening, and the [`Store`] methods.

mod agents;
mod audit;
mod cache;
mod catalog;
mod cluster;
mod dialect;
mod error;
mod exchanged;
mod failover;
mod grants;
mod identity;
mod kv;
mod outbox;
mod picture;
mod proxy_routes;
mod records;
mod requests;
mod rotations;
mod rows;
mod seal_wraps;
mod secrets;
mod sso;
mod store;
mod write;

use mayfly_core::{Principal, SecretPath, Timestamp};

pub use cluster::{
    Claimant, Claimed, ClusterRows, DUE_CHANNEL, DueHints, LEASE_LOST_KIND, LeaseRecord,
    NodeRecord, NodeRegistration,
};
pub use error::{BoxError, StoreError};
pub use failover::split_urls;
pub use picture::{LiveSpan, PictureQuery, PictureRows};
pub use records::{
    AdminRotationRecord, AgentRecord, ApprovalRecord, AuditQuery, AuditRecord, CallApprovalRecord,
    CallApprovalState, Change, ExchangedTokenRecord, GrantFilter, GrantRecord, GrantUpdate,
    JwtConfigRecord, KvSecretRecord, KvVersionRecord, LeaseFence, NotificationRecord,
    NotifyCondition, OutboxStats, PendingRotation, Principals, ProxyRouteRecord, RequestRecord,
    RoleRecord, SealRecord, SealWrapRecord, SessionRecord, SsoPendingRecord, StoredEvent,
    TargetRecord, ThrottleRecord, TotpStep, UserRecord, Write, WriteOutcome,
};
pub use store::SqlStore;

/// What the broker must know about the database behind a store, named by what it means for the
/// broker rather than by which database it is. Code outside the store reads this, never
/// [`Store::dialect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// This broker is the store's only writer; no other broker shares it (SQLite: one broker per
    /// database, held through its lock file). Then anything left half-done in the store at start
    /// (an intent still `issuing`) was left by this broker, by a crash, and the broker's own
    /// clock is the only one whose times go into the store. When `false`, other brokers may
    /// share the store at once (PostgreSQL): half-done work may be another broker's, in
    /// progress, and times should come from the one clock they share, the store's
    /// ([`Store::clock_ms`]).
    pub sole_writer: bool,
    /// A commit is blocking work in this process (SQLite: a file this process writes and
    /// `fsync`s; the one-script commit runs on the calling thread and blocks it), not I/O on
    /// sockets driven by the async runtime. The caller of [`Store::commit`] does best to call it
    /// from a thread of its own, on a runtime of its own (timers are all it needs), away from
    /// the tasks that serve requests. When `false` (PostgreSQL), the pool's connections belong
    /// to the runtime that opened the store, and commits must run there.
    pub commits_in_process: bool,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// What the broker must know about the database behind this store (see [`Capabilities`]).
    fn capabilities(&self) -> Capabilities;

    /// Applies a batch of writes and appends their events in one transaction.
    async fn commit(&self, writes: Vec<Write>) -> Result<Vec<WriteOutcome>, StoreError>;

    async fn seal(&self) -> Result<Option<SealRecord>, StoreError>;
    async fn secret(&self, path: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The root key's wrap under the key-encryption key `key_id` (auto-unseal), if any.
    async fn seal_wrap(&self, key_id: &str) -> Result<Option<SealWrapRecord>, StoreError>;
    /// How many live grants were due at or before `now` (an indexed count: only those rows are
    /// read). Above zero for long, nobody is revoking: the broker is sealed, or its expiry is stuck.
    async fn past_due_grants(&self, now: Timestamp) -> Result<u64, StoreError>;
    /// The paths of the stored secrets that start with `prefix`, in (byte) order of path.
    async fn secret_paths(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// A version of the stored secret `path` (`None`: its highest), with its ciphertext (`None`
    /// once destroyed).
    async fn kv_secret(
        &self,
        path: &SecretPath,
        version: Option<i64>,
    ) -> Result<Option<KvSecretRecord>, StoreError>;
    /// Every version of `path`, oldest first, without ciphertext.
    async fn kv_history(&self, path: &SecretPath) -> Result<Vec<KvVersionRecord>, StoreError>;
    /// The highest version of each secret in `project/environment`, in order of name; with its
    /// ciphertext only if `with_blobs`.
    async fn kv_latest(
        &self,
        project: &str,
        environment: &str,
        with_blobs: bool,
    ) -> Result<Vec<KvSecretRecord>, StoreError>;

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn users(&self) -> Result<Vec<UserRecord>, StoreError>;
    async fn throttle(&self, username: &str) -> Result<Option<ThrottleRecord>, StoreError>;
    /// The user linked to the Slack user `slack_user_id` (`Change::LinkSlackUser`), if any.
    async fn user_by_slack_id(&self, slack_user_id: &str)
    -> Result<Option<UserRecord>, StoreError>;
    /// The latest second factor proved by a live (unrevoked, unexpired at `now`) session of the
    /// user `user_id`, if any.
    async fn latest_factor_at(
        &self,
        user_id: &str,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError>;

    /// The session with this token hash, with the principal as it is *now* (current groups; a
    /// disabled or deleted user yields `None`).
    async fn session_by_hash(&self, token_hash: &[u8])
    -> Result<Option<SessionRecord>, StoreError>;

    async fn jwt_issuer(&self, name: &str) -> Result<Option<JwtConfigRecord>, StoreError>;
    async fn jwt_role(&self, name: &str) -> Result<Option<JwtConfigRecord>, StoreError>;
    /// Every JWT role, in order of name.
    async fn jwt_roles(&self) -> Result<Vec<JwtConfigRecord>, StoreError>;

    /// A single sign-on provider's configuration (JSON), by name.
    async fn sso_provider(&self, name: &str) -> Result<Option<JwtConfigRecord>, StoreError>;
    /// Every single sign-on provider, in order of name.
    async fn sso_providers(&self) -> Result<Vec<JwtConfigRecord>, StoreError>;
    /// A login in progress of `kind` (`flow`, `code`) by the SHA-256 of its key, used or not.
    async fn sso_pending(
        &self,
        key_hash: &[u8],
        kind: &str,
    ) -> Result<Option<SsoPendingRecord>, StoreError>;
    /// The user bound to the identity (`issuer`, `subject`), if any.
    async fn sso_identity_user(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<UserRecord>, StoreError>;

    /// The newest event's sequence number and hash (`0` and the genesis hash for an empty log).
    async fn audit_head(&self) -> Result<(i64, String), StoreError>;
    /// Up to `limit` events with `seq > after`, in order. On SQLite the events this store wrote
    /// last may come from memory (for the sinks, which copy them out as they are written).
    async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, StoreError>;
    /// The same, always read from the database, never from memory: what verification and export
    /// must see, since a row changed in the database behind the broker's back differs from what
    /// the broker remembers writing.
    async fn stored_audit_events(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// The newest checkpoint event, if any.
    async fn last_checkpoint(&self) -> Result<Option<StoredEvent>, StoreError>;
    /// Up to `query.limit` events matching `query`, newest first, read from the database (the
    /// audit search's indexed columns, migration 0013).
    async fn audit_search(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;

    async fn sink_cursor(&self, sink: &str) -> Result<i64, StoreError>;
    async fn set_sink_cursor(&self, sink: &str, seq: i64) -> Result<(), StoreError>;

    /// The token issued by token exchange with this `jti`, and the session it derives from as it
    /// is *now* (`None` if the session is gone, or its user disabled or deleted).
    async fn exchanged_token(
        &self,
        jti: &str,
    ) -> Result<Option<(ExchangedTokenRecord, Option<SessionRecord>)>, StoreError>;

    /// Deletes sessions (and exchanged tokens) that expired before `before`; returns how many
    /// sessions.
    async fn purge_sessions(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// The secure proxy's route with this name.
    async fn proxy_route(&self, name: &str) -> Result<Option<ProxyRouteRecord>, StoreError>;
    /// Every proxy route, by name.
    async fn proxy_routes(&self) -> Result<Vec<ProxyRouteRecord>, StoreError>;

    async fn target(&self, name: &str) -> Result<Option<TargetRecord>, StoreError>;
    async fn targets(&self) -> Result<Vec<TargetRecord>, StoreError>;
    async fn role(&self, target: &str, name: &str) -> Result<Option<RoleRecord>, StoreError>;
    async fn roles(&self) -> Result<Vec<RoleRecord>, StoreError>;
    /// The policy text and its version.
    async fn policies(&self) -> Result<Option<(String, i64)>, StoreError>;
    /// What a decision on `target/role` reads, in one round trip: the target, the role and the
    /// policy text (`None` if no policies were ever stored). `None` if there is no such role.
    async fn decision_inputs(
        &self,
        target: &str,
        role: &str,
    ) -> Result<Option<(TargetRecord, RoleRecord, Option<String>)>, StoreError>;
    async fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError>;
    async fn requests(
        &self,
        pending_only: bool,
        limit: i64,
    ) -> Result<Vec<RequestRecord>, StoreError>;
    /// The latest `limit` requests of `principal`, newest first.
    async fn requests_of(
        &self,
        principal: &Principal,
        limit: i64,
    ) -> Result<Vec<RequestRecord>, StoreError>;
    /// The latest `limit` grants of the principal key `key` matching `filter`, newest first.
    async fn grants_of(
        &self,
        key: &str,
        filter: GrantFilter,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError>;
    /// One page of the requests still pending or allowed (expired ones too, until the expiry
    /// engine marks them), in id order, after `after_id` (`""` for the first page).
    async fn open_requests_after(
        &self,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<RequestRecord>, StoreError>;
    async fn approvals(&self, request_id: &str) -> Result<Vec<ApprovalRecord>, StoreError>;
    async fn grant(&self, id: &str) -> Result<Option<GrantRecord>, StoreError>;
    async fn grants(&self, filter: GrantFilter, limit: i64)
    -> Result<Vec<GrantRecord>, StoreError>;
    /// One page of the grants of `principals` matching `filter`, in id order, after `after_id`
    /// (`""` for the first page): for walking all of them without holding all of them.
    async fn grants_after(
        &self,
        filter: GrantFilter,
        principals: Principals<'_>,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError>;
    /// Claims up to `limit` grants whose `next_attempt_at` has come and that no live claim holds,
    /// until `claim_until`; each claim bumps the grant's epoch (its fencing token). Several nodes
    /// can call this at once: each grant goes to one of them.
    async fn claim_due(
        &self,
        now: Timestamp,
        claim_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError>;
    /// Claims up to `limit` due grants for the node `claimant` until `claim_until` (each claim
    /// bumps the grant's epoch): those no claim holds, and at once those claimed by a node whose
    /// lease ended (taken over). Claims nothing unless `claimant`'s own lease is alive at `now`.
    async fn claim_due_as(
        &self,
        claimant: &Claimant,
        now: Timestamp,
        claim_until: Timestamp,
        limit: i64,
    ) -> Result<Claimed, StoreError>;
    /// The earliest due time of a grant that [`Store::claim_due_as`] at `now` could take (claims
    /// in flight of live nodes skipped), read among due rows only.
    async fn next_claimable(&self, now: Timestamp) -> Result<Option<Timestamp>, StoreError>;
    /// Registers a node with a new generation leased until `lease_until`; `None` while a node of
    /// that name is alive.
    async fn register_node(
        &self,
        node: &NodeRegistration,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Option<i64>, StoreError>;
    /// Extends a node's lease; `false` if it lapsed at `now` (the node must register again).
    async fn heartbeat_node(
        &self,
        node: &Claimant,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Ends a node's lease and the leases it holds (a clean shutdown).
    async fn leave_node(&self, node: &Claimant, now: Timestamp) -> Result<(), StoreError>;
    /// Every node's row, by name.
    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Takes or renews the single-doer leases `names` for `holder` until `until` (those free,
    /// ended at `now`, or already its own); returns those it holds, with their epochs.
    async fn acquire_leases(
        &self,
        names: &[&str],
        holder: &Claimant,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<(String, i64)>, StoreError>;
    /// The cluster's nodes, leases, claims in flight per node and past-due grants at `now`.
    async fn cluster(&self, now: Timestamp) -> Result<ClusterRows, StoreError>;
    /// The hints that grants became due sooner, sent by any node's commits (PostgreSQL
    /// `LISTEN`); `None` for a store that has no other writer to hear from.
    fn due_hints(&self) -> Option<DueHints>;
    /// Makes every grant in `issuing` due now and releases its claim; returns how many. For a
    /// single-node store at start: an intent still `issuing` is the leftover of a crash.
    async fn make_issuing_due(&self, now: Timestamp) -> Result<u64, StoreError>;
    /// The store's own clock, in unix milliseconds: one clock for every node sharing the store.
    async fn clock_ms(&self) -> Result<i64, StoreError>;
    /// Which of `logins` belong to a live grant (at most 500 at a time).
    async fn live_logins(
        &self,
        logins: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError>;
    /// The logins of the grants on the certificate target `target` (`ssh`, `x509`) that were
    /// revoked and have not expired yet: what that target's KRL or CRL lists, and nothing of any
    /// other target's (each target has its own CA).
    async fn revoked_certificate_logins(
        &self,
        target: &str,
        now: Timestamp,
    ) -> Result<Vec<String>, StoreError>;
    /// The grant with this login.
    async fn grant_by_login(&self, login: &str) -> Result<Option<GrantRecord>, StoreError>;
    /// The earliest `next_attempt_at` of any grant.
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError>;
    /// The rotation of the admin secret of `target` (`None`: a certificate target).
    async fn admin_rotation(&self, target: &str)
    -> Result<Option<AdminRotationRecord>, StoreError>;
    /// Every database target's admin secret rotation, by target name.
    async fn admin_rotations(&self) -> Result<Vec<AdminRotationRecord>, StoreError>;
    /// The rotations due at `now` (at most 100): an intent whose holder's claim ended, or a
    /// scheduled (or retried) rotation whose time came.
    async fn due_admin_rotations(
        &self,
        now: Timestamp,
    ) -> Result<Vec<AdminRotationRecord>, StoreError>;
    /// Claims up to `limit` due notifications of the outbox until `claim_until` (each claim
    /// bumps the row's epoch). Several nodes can call this at once: each row goes to one.
    async fn claim_notifications(
        &self,
        now: Timestamp,
        claim_until: Timestamp,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
    /// The notification `id` was delivered at `at`.
    async fn notification_delivered(&self, id: &str, at: Timestamp) -> Result<(), StoreError>;
    /// An attempt to deliver `id` failed: counted and due again at `retry_at`, unless another
    /// claim (a later `epoch`) took it over.
    async fn notification_failed(
        &self,
        id: &str,
        epoch: i64,
        error: &str,
        retry_at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Notifications not delivered yet, with at least `min_attempts` attempts, oldest first.
    async fn undelivered_notifications(
        &self,
        min_attempts: i64,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
    async fn notification(&self, id: &str) -> Result<Option<NotificationRecord>, StoreError>;
    /// The notifications of `kind`, on every channel, oldest first.
    async fn notifications_of_kind(
        &self,
        kind: &str,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
    /// The outbox per channel (`failing_after`: attempts after which one counts as failing).
    async fn outbox_stats(&self, failing_after: i64) -> Result<Vec<OutboxStats>, StoreError>;
    /// The earliest time a notification is due.
    async fn next_notification_due(&self) -> Result<Option<Timestamp>, StoreError>;
    /// Active grants expiring after `now` and by `before` with no notification under
    /// `<dedup_prefix><grant id>` yet, soonest first.
    async fn grants_to_warn(
        &self,
        dedup_prefix: &str,
        now: Timestamp,
        before: Timestamp,
        limit: i64,
    ) -> Result<Vec<GrantRecord>, StoreError>;
    /// Forgets notifications delivered before `before`.
    async fn purge_delivered_notifications(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Every agent the broker knows (seen or disabled), by name.
    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    /// Which of the agents `names` (at most 16) are disabled; with `issued_at`, also those
    /// switched off at or after it (what a token issued then may no longer do).
    async fn disabled_agents(
        &self,
        names: &[&str],
        issued_at: Option<Timestamp>,
    ) -> Result<Vec<String>, StoreError>;
    async fn call_approval(&self, id: &str) -> Result<Option<CallApprovalRecord>, StoreError>;
    /// The newest `limit` approvals of the call whose key hashes to `key_hash`, newest first.
    async fn call_approvals_of_key(
        &self,
        key_hash: &str,
        limit: i64,
    ) -> Result<Vec<CallApprovalRecord>, StoreError>;
    /// The approvals still `pending` (expired ones too until marked), oldest first.
    async fn pending_call_approvals(
        &self,
        limit: i64,
    ) -> Result<Vec<CallApprovalRecord>, StoreError>;
    /// How many approvals of calls for `subject` are pending and not expired at `now`.
    async fn n_pending_call_approvals(
        &self,
        subject: &str,
        now: Timestamp,
    ) -> Result<i64, StoreError>;

    /// What the dashboard's pictures of access read for one window: the counts now, the grants
    /// whose life touches the window, the policy's maxima, the approvals and the orphan sweep's
    /// findings, in narrow reads bounded by the window (never whole rows, never event bodies).
    async fn access_picture(&self, query: &PictureQuery<'_>) -> Result<PictureRows, StoreError>;
}

/// Opens the store at `url` (`sqlite://PATH` or `postgres://…`, or several PostgreSQL URLs
/// separated by commas: see [`open_any`]) and applies its migrations.
pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
    SqlStore::open(url).await
}

/// Opens the store whose servers are `urls`: one URL, or the PostgreSQL servers of one
/// replicated cluster, the primary first. Only the server that accepts writes is ever connected
/// to, and the store follows a promotion (docs/store.md).
pub async fn open_any(urls: &[String]) -> Result<SqlStore, StoreError> {
    SqlStore::open_any(urls).await
}
