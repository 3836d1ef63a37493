//! What every call reads — its session; the target, role and policy text a decision needs; the
//! proxy route it calls and the secret store versions it reads or injects (sealed, as stored) —
//! kept in memory on SQLite, where this process is the only writer of the database (the store
//! holds an exclusive lock on `<database>-mayfly.lock` while open; see [`StoreLock`]).
//!
//! Exact, not a TTL cache: every commit that could change what is kept (anything but the
//! insert-only and request/grant changes listed in [`keeps_reads`]) moves the generation before
//! it starts and after it ends, and a kept value counts only while the generation is the one it
//! was read under. A value read while such a commit ran is therefore never used, and a logout, a
//! disabled user, a changed role or policy counts for the very next call. Negative answers are
//! not kept (an unknown token costs a read, and cannot fill memory).
//!
//! PostgreSQL stores are shared by several nodes, each of which can change them: nothing is kept
//! there.

use std::collections::VecDeque;
use std::fs::File;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mayfly_core::bounded::Bounded;

use crate::error::StoreError;
use crate::records::{
    Change, KvSecretRecord, ProxyRouteRecord, RoleRecord, SessionRecord, StoredEvent, TargetRecord,
};

/// At most this many values of one kind are kept; when full, all are dropped.
const KEPT: usize = 10_000;

pub(crate) type DecisionInputs = (TargetRecord, RoleRecord, Option<String>);

#[derive(Default)]
pub(crate) struct ReadCache {
    generation: AtomicU64,
    sessions: Kept<Vec<u8>, SessionRecord>,
    decisions: Kept<(String, String), DecisionInputs>,
    routes: Kept<String, ProxyRouteRecord>,
    kv: Kept<(String, Option<i64>), KvSecretRecord>,
}

impl ReadCache {
    /// The generation to read under (pass it back to `keep_*`).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Held while a write that may change what is kept runs: moves the generation now and again
    /// when dropped (also if the write is abandoned half-way).
    pub(crate) fn changing(&self) -> Changing<'_> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        Changing(self)
    }

    pub(crate) fn session(&self, token_hash: &[u8]) -> Option<SessionRecord> {
        self.sessions.get(token_hash, self.generation())
    }

    pub(crate) fn keep_session(&self, token_hash: &[u8], read_at: u64, session: &SessionRecord) {
        self.sessions
            .put(token_hash.to_vec(), read_at, session, self.generation());
    }

    pub(crate) fn decision_inputs(&self, target: &str, role: &str) -> Option<DecisionInputs> {
        self.decisions
            .get(&(target.to_owned(), role.to_owned()), self.generation())
    }

    pub(crate) fn keep_decision_inputs(
        &self,
        target: &str,
        role: &str,
        read_at: u64,
        inputs: &DecisionInputs,
    ) {
        self.decisions.put(
            (target.to_owned(), role.to_owned()),
            read_at,
            inputs,
            self.generation(),
        );
    }
}

impl ReadCache {
    pub(crate) fn proxy_route(&self, name: &str) -> Option<ProxyRouteRecord> {
        self.routes.get(name, self.generation())
    }

    pub(crate) fn keep_proxy_route(&self, name: &str, read_at: u64, route: &ProxyRouteRecord) {
        self.routes
            .put(name.to_owned(), read_at, route, self.generation());
    }

    /// A secret store version (`None`: the latest) as stored: sealed, never opened here.
    pub(crate) fn kv_secret(&self, path: &str, version: Option<i64>) -> Option<KvSecretRecord> {
        self.kv.get(&(path.to_owned(), version), self.generation())
    }

    pub(crate) fn keep_kv_secret(
        &self,
        path: &str,
        version: Option<i64>,
        read_at: u64,
        secret: &KvSecretRecord,
    ) {
        self.kv.put(
            (path.to_owned(), version),
            read_at,
            secret,
            self.generation(),
        );
    }
}

pub(crate) struct Changing<'a>(&'a ReadCache);

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.0.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

/// Whether committing `change` leaves every kept read true: it touches only requests, approvals,
/// grants, login failure counts and exchanged tokens (which are never kept), never sessions, users,
/// workload bindings, targets, roles, policies, proxy routes or the secret store's versions.
pub(crate) fn keeps_reads(change: &Change) -> bool {
    if let Change::Notify { change, .. } = change {
        // The outbox is never kept; what counts is the change it rides with.
        return change.as_deref().is_none_or(keeps_reads);
    }
    if let Change::Fenced { inner, .. } = change {
        // The lease row is never kept either.
        return inner.as_deref().is_none_or(keeps_reads);
    }
    matches!(
        change,
        Change::CreateRequest { .. }
            | Change::Approve { .. }
            | Change::DenyRequest { .. }
            | Change::WithdrawRequest { .. }
            | Change::ReserveLoginAttempt { .. }
            | Change::ExpireRequests { .. }
            | Change::RecordIntent { .. }
            | Change::IssueCertificate { .. }
            | Change::UpdateGrant { .. }
            | Change::ReviewGrant { .. }
            | Change::RecordExchangedToken { .. }
            | Change::CreateCallApproval { .. }
            | Change::AnswerCallApproval { .. }
            | Change::UseCallApproval { .. }
            | Change::ExpireCallApproval { .. }
    )
}

/// The audit events this store committed last, in order, so that the sinks copy them out without
/// reading them back. Exact like the reads above: only this store appends to the chain, each
/// batch's events are added after its commit and before it is answered, and a batch that does not
/// follow the last one kept (the chain moved behind the store's back) starts the list afresh.
#[derive(Debug, Default)]
pub(crate) struct RecentEvents {
    events: Mutex<VecDeque<StoredEvent>>,
}

/// At most this many recent events are kept (a few MiB).
const RECENT: usize = 4096;

impl RecentEvents {
    /// The events after `after`, at most `limit` of them, if the list holds all there are:
    /// `None` when they must be read from the database.
    pub(crate) fn after(&self, after: i64, limit: i64) -> Option<Vec<StoredEvent>> {
        let events = self.events.lock().ok()?;
        let first = events.front()?.seq;
        let skip = usize::try_from(after.checked_add(1)?.checked_sub(first)?).ok()?;
        let take = usize::try_from(limit).ok()?;
        Some(events.iter().skip(skip).take(take).cloned().collect())
    }

    /// Adds a committed batch's events (in order).
    pub(crate) fn extend(&self, batch: Vec<StoredEvent>) {
        let Ok(mut events) = self.events.lock() else {
            return;
        };
        let follows = match (events.back(), batch.first()) {
            (Some(last), Some(first)) => last.seq.checked_add(1) == Some(first.seq),
            _ => true,
        };
        if !follows {
            events.clear();
        }
        events.extend(batch);
        let extra = events.len().saturating_sub(RECENT);
        events.drain(..extra);
    }

    /// Forgets every event (the chain may have moved behind the store's back).
    pub(crate) fn forget(&self) {
        if let Ok(mut events) = self.events.lock() {
            events.clear();
        }
    }
}

/// Values read under a generation, given back only under that same generation.
struct Kept<K, V>(Bounded<K, (u64, V)>);

impl<K: Eq + Hash, V: Clone> Default for Kept<K, V> {
    fn default() -> Self {
        Kept(Bounded::new(KEPT))
    }
}

impl<K: Eq + Hash, V: Clone> Kept<K, V> {
    fn get<Q>(&self, key: &Q, generation: u64) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self.0.get(key) {
            Some((read_at, value)) if read_at == generation => Some(value),
            _ => None,
        }
    }

    /// Keeps `value`, read under `read_at`, unless the generation has moved since.
    fn put(&self, key: K, read_at: u64, value: &V, now: u64) {
        if read_at == now {
            self.0.put(key, (read_at, value.clone()));
        }
    }
}

/// The exclusive lock a broker holds on its SQLite database: two brokers writing one SQLite file
/// would each keep reads the other changes. Released when the store is dropped (or the process
/// dies).
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// Takes `<database>-mayfly.lock`, waiting up to `wait` for a broker that is stopping. The
    /// database's path is resolved first (symbolic links, `..`), so two names for one file take
    /// one lock.
    pub(crate) async fn take(database: &Path, wait: Duration) -> Result<StoreLock, StoreError> {
        let database = resolved(database);
        let mut path = database.as_os_str().to_owned();
        path.push("-mayfly.lock");
        let path = PathBuf::from(path);
        let file = private_file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StoreLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::InUse(path.display().to_string()));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(StoreError::Unavailable(Box::new(e)));
                }
            }
        }
    }
}

/// Options that create a file readable and writable by its owner only (0600, whatever the
/// umask): the database holds ciphertext and hashes, but nobody else has any business reading it.
pub(crate) fn private_file_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = File::options();
    options.mode(0o600);
    options
}

/// Makes the SQLite database at `database` and the files SQLite keeps beside it (`-wal`, `-shm`,
/// `-journal`) readable by their owner only, however they were created (SQLite follows the
/// umask). Called once the pool has opened the database, before anything is written to it;
/// SQLite gives the side files it creates later the database's own mode, 0600.
pub(crate) fn make_private(database: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let unavailable = |e: std::io::Error| StoreError::Unavailable(Box::new(e));
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut path = database.as_os_str().to_owned();
        path.push(suffix);
        let path = PathBuf::from(path);
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue;
        };
        if metadata.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(unavailable)?;
        }
    }
    Ok(())
}

/// `database` with its links resolved: the file's own path if it exists, else its directory's
/// resolved path and its name (a database about to be created), else as given.
fn resolved(database: &Path) -> PathBuf {
    if let Ok(path) = std::fs::canonicalize(database) {
        return path;
    }
    let directory = match database.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(directory), database.file_name()) {
        (Ok(directory), Some(name)) => directory.join(name),
        _ => database.to_owned(),
    }
}
