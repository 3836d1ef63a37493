//! SQL for several brokers on one store (migration 0016): the nodes' heartbeats, the claims of
//! due grants named by node (so a dead node's claims are taken over as soon as its lease ends),
//! the single-doer leases and their fence, and the PostgreSQL `NOTIFY` that tells the other
//! nodes a grant became due sooner.
//!
//! Nothing here reads every lease: the claim and the next claimable time walk the `grants_due`
//! index among due rows only, and a lapsed claimant is found by a primary-key probe of the small
//! `nodes` table. Times are the broker's (`Timestamp`s passed in), as everywhere in the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mayfly_core::Timestamp;
use mayfly_core::audit::{AuditDraft, Outcome};
use sqlx::{AnyConnection, AnyPool};

use crate::dialect::Dialect;
use crate::error::{StoreError, unavailable};
use crate::records::{Applied, GrantRecord, LeaseFence};
use crate::rows::{GRANT_COLUMNS, GrantRow, records};

/// The channel of the hints that a grant became due sooner (payload: its due time, unix ms).
pub const DUE_CHANNEL: &str = "mayfly_due";
/// The kind of the event a fenced write records instead of its own when its lease was lost.
pub const LEASE_LOST_KIND: &str = "lease.lost";

/// A running broker as it registers itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRegistration {
    pub name: String,
    /// The broker's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Where it serves (its public URL), for people reading the cluster's status.
    pub address: String,
}

/// A node's row.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct NodeRecord {
    pub name: String,
    pub generation: i64,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub lease_until: i64,
    pub version: String,
    pub address: String,
}

/// A single-doer lease's row.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseRecord {
    pub name: String,
    pub holder: String,
    pub holder_generation: i64,
    pub epoch: i64,
    pub until: i64,
}

/// Who claims due grants: a node, in one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    pub name: String,
    pub generation: i64,
}

/// What a claim round got: the grants, and how many of them were taken over from a node whose
/// lease had ended while it held them.
#[derive(Debug, Default)]
pub struct Claimed {
    pub grants: Vec<GrantRecord>,
    pub n_taken_over: usize,
}

/// What `GET /v1/sys/cluster` reads, in one call: the nodes, the leases, the claims in flight
/// per node (the past-due count is `Store::past_due_grants`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterRows {
    pub nodes: Vec<NodeRecord>,
    pub leases: Vec<LeaseRecord>,
    /// (node name, claims of due grants it holds that have not timed out).
    pub claims: Vec<(String, i64)>,
}

/// Registers `node` with a new generation (the next after its last one), leased until
/// `lease_until`; `None` while a node of that name is alive (another broker runs under the same
/// name, or this one's previous run has not lapsed yet). The caller holds the write lock.
pub(crate) async fn register(
    pool: &AnyPool,
    node: &NodeRegistration,
    now: Timestamp,
    lease_until: Timestamp,
) -> Result<Option<i64>, StoreError> {
    let generation: Option<i64> = sqlx::query_scalar(
        "INSERT INTO nodes (name, generation, started_at, heartbeat_at, lease_until, version, address) \
         VALUES ($1, 1, $2, $2, $3, $4, $5) \
         ON CONFLICT (name) DO UPDATE SET generation = nodes.generation + 1, started_at = $2, \
         heartbeat_at = $2, lease_until = $3, version = $4, address = $5 \
         WHERE nodes.lease_until <= $2 \
         RETURNING generation",
    )
    .bind(node.name.clone())
    .bind(now.unix_ms())
    .bind(lease_until.unix_ms())
    .bind(node.version.clone())
    .bind(node.address.clone())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    Ok(generation)
}

/// Extends the lease of `name` in `generation` to `lease_until`, if it has not lapsed at `now`:
/// `false` when it has (or another run took the name), and the node must register again and
/// trust none of its claims. The caller holds the write lock.
pub(crate) async fn heartbeat(
    pool: &AnyPool,
    claimant: &Claimant,
    now: Timestamp,
    lease_until: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE nodes SET heartbeat_at = $1, lease_until = $2 \
         WHERE name = $3 AND generation = $4 AND lease_until > $1",
    )
    .bind(now.unix_ms())
    .bind(lease_until.unix_ms())
    .bind(claimant.name.clone())
    .bind(claimant.generation)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(done.rows_affected() == 1)
}

/// Ends the lease of `name` in `generation` and of the leases it holds at `now` (a clean
/// shutdown): the others take its claims and leases over at once. The caller holds the write
/// lock.
pub(crate) async fn leave(
    pool: &AnyPool,
    claimant: &Claimant,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE nodes SET lease_until = $1 WHERE name = $2 AND generation = $3 AND lease_until > $1",
    )
    .bind(now.unix_ms())
    .bind(claimant.name.clone())
    .bind(claimant.generation)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    sqlx::query(
        "UPDATE leases SET until = $1 WHERE holder = $2 AND holder_generation = $3 AND until > $1",
    )
    .bind(now.unix_ms())
    .bind(claimant.name.clone())
    .bind(claimant.generation)
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Every node's row, by name.
pub(crate) async fn nodes(pool: &AnyPool) -> Result<Vec<NodeRecord>, StoreError> {
    sqlx::query_as(
        "SELECT name, generation, started_at, heartbeat_at, lease_until, version, address \
         FROM nodes ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .map_err(unavailable)
}

/// Takes or renews each lease of `names` for `holder` until `until`: one that is free, ended at
/// `now`, or already held by `holder` in the same generation. The epoch bumps when the holder
/// changes. Returns the leases held now, with their epochs. The caller holds the write lock.
pub(crate) async fn acquire(
    pool: &AnyPool,
    names: &[&str],
    holder: &Claimant,
    now: Timestamp,
    until: Timestamp,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut held = Vec::with_capacity(names.len());
    for name in names {
        let epoch: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, holder_generation, epoch, until) VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (name) DO UPDATE SET \
             epoch = CASE WHEN leases.holder = $2 AND leases.holder_generation = $3 THEN leases.epoch ELSE leases.epoch + 1 END, \
             holder = $2, holder_generation = $3, until = $4 \
             WHERE (leases.holder = $2 AND leases.holder_generation = $3) OR leases.until <= $5 \
             RETURNING epoch",
        )
        .bind((*name).to_owned())
        .bind(holder.name.clone())
        .bind(holder.generation)
        .bind(until.unix_ms())
        .bind(now.unix_ms())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
        if let Some(epoch) = epoch {
            held.push(((*name).to_owned(), epoch));
        }
    }
    Ok(held)
}

/// Every lease's row, by name.
pub(crate) async fn leases(pool: &AnyPool) -> Result<Vec<LeaseRecord>, StoreError> {
    sqlx::query_as("SELECT name, holder, holder_generation, epoch, until FROM leases ORDER BY name")
        .fetch_all(pool)
        .await
        .map_err(unavailable)
}

/// [`crate::Change::Fenced`]'s check, inside the write's transaction: the lease still has the
/// holder and epoch of `fence`. The row is locked until the transaction ends (an `UPDATE` of it),
/// so a node acquiring it meanwhile waits and then sees a new epoch.
pub(crate) async fn check_fence(
    c: &mut AnyConnection,
    fence: &LeaseFence,
) -> Result<Applied, sqlx::Error> {
    let held = sqlx::query(
        "UPDATE leases SET epoch = epoch WHERE name = $1 AND holder = $2 AND holder_generation = $3 AND epoch = $4",
    )
    .bind(fence.name.clone())
    .bind(fence.holder.clone())
    .bind(fence.generation)
    .bind(fence.epoch)
    .execute(&mut *c)
    .await?;
    if held.rows_affected() != 1 {
        return Ok(Applied::LeaseLost(format!(
            "the lease `{}` is no longer held by `{}` (generation {}) at epoch {}",
            fence.name, fence.holder, fence.generation, fence.epoch
        )));
    }
    Ok(Applied::Done)
}

/// The event a fenced write records instead of `event` when its lease was lost: what was not
/// done and why, and nothing of its details (a checkpoint refused this way signs nothing).
pub(crate) fn lease_lost_event(event: &AuditDraft, fence: &LeaseFence, reason: &str) -> AuditDraft {
    let mut lost = AuditDraft::new(event.at, LEASE_LOST_KIND, Outcome::Refused)
        .detail("lease", fence.name.clone())
        .detail("holder", fence.holder.clone())
        .detail("generation", fence.generation)
        .detail("epoch", fence.epoch)
        .detail("not_done", event.kind.clone())
        .detail("conflict", reason.to_owned());
    lost.actor = event.actor.clone();
    lost.source = event.source.clone();
    lost.request_id = event.request_id.clone();
    lost
}

/// Sends the hint that a grant is due at `at` to every listening node, when the transaction
/// commits (PostgreSQL; SQLite has one node and no listeners).
pub(crate) async fn hint_due(
    c: &mut AnyConnection,
    dialect: Dialect,
    at: Timestamp,
) -> Result<(), sqlx::Error> {
    if dialect != Dialect::Postgres {
        return Ok(());
    }
    // A plain `NOTIFY` (no row to decode); the payload is a number formatted here.
    let sql = format!("NOTIFY {DUE_CHANNEL}, '{}'", at.unix_ms());
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// The condition under which a grant `g`'s claim no longer holds at `now` (a placeholder): it
/// timed out, or it names a node whose lease ended (or that registered again since).
fn claim_lapsed(now: &str) -> String {
    format!(
        "(g.claimed_until <= {now} OR (g.claimed_by IS NOT NULL AND NOT EXISTS (\
         SELECT 1 FROM nodes n WHERE n.name = g.claimed_by AND n.generation = g.claimed_generation AND n.lease_until > {now})))"
    )
}

/// Claims up to `limit` due grants for `claimant` until `claim_until`, each claim bumping the
/// grant's epoch: those no claim holds, and those whose claimant's lease ended. Nothing is
/// claimed unless the claimant's own lease is alive at `now` (a node back from a pause claims
/// nothing until it has registered again). The caller holds the write lock.
pub(crate) async fn claim_due_as(
    pool: &AnyPool,
    dialect: Dialect,
    claimant: &Claimant,
    now: Timestamp,
    claim_until: Timestamp,
    limit: i64,
) -> Result<Claimed, StoreError> {
    let lock = match dialect {
        Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    // `taken_from` is read before it is written (a `SET` sees the row as it was).
    let lapsed = claim_lapsed("$2");
    let sql = format!(
        "UPDATE grants SET epoch = epoch + 1, claimed_until = $1, claimed_by = $4, claimed_generation = $5, \
            taken_from = CASE WHEN claimed_until > $2 THEN claimed_by ELSE NULL END \
         WHERE id IN (\
            SELECT g.id FROM grants g WHERE g.next_attempt_at IS NOT NULL AND g.next_attempt_at <= $2 AND {lapsed} \
            AND EXISTS (SELECT 1 FROM nodes me WHERE me.name = $4 AND me.generation = $5 AND me.lease_until > $2) \
            ORDER BY g.next_attempt_at LIMIT $3{lock}) \
         RETURNING {GRANT_COLUMNS}, taken_from"
    );
    let rows: Vec<ClaimRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(claim_until.unix_ms())
        .bind(now.unix_ms())
        .bind(limit)
        .bind(claimant.name.clone())
        .bind(claimant.generation)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    let n_taken_over = rows.iter().filter(|r| r.taken_from.is_some()).count();
    let grants = records(rows.into_iter().map(|r| r.grant).collect())?;
    Ok(Claimed {
        grants,
        n_taken_over,
    })
}

/// A claimed grant's row and the node it was taken over from, if any.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    #[sqlx(flatten)]
    grant: GrantRow,
    taken_from: Option<String>,
}

/// The earliest `next_attempt_at` of a grant that a claim round at `now` could take (no claim
/// holds it, or its claimant lapsed): walks the due index and skips only the claims in flight.
pub(crate) async fn next_claimable(
    pool: &AnyPool,
    now: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let sql = format!(
        "SELECT g.next_attempt_at FROM grants g WHERE g.next_attempt_at IS NOT NULL AND {} \
         ORDER BY g.next_attempt_at LIMIT 1",
        claim_lapsed("$1")
    );
    let at: Option<Option<i64>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(now.unix_ms())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    Ok(at.flatten().map(Timestamp::from_unix_ms))
}

/// The cluster as `GET /v1/sys/cluster` shows it (see [`ClusterRows`]). The claims and the
/// past-due count read only due rows, through the due index.
pub(crate) async fn cluster(pool: &AnyPool, now: Timestamp) -> Result<ClusterRows, StoreError> {
    let nodes = nodes(pool).await?;
    let leases = leases(pool).await?;
    let claims: Vec<(String, i64)> = sqlx::query_as(
        "SELECT claimed_by, count(*) AS n FROM grants \
         WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $1 AND claimed_until > $1 AND claimed_by IS NOT NULL \
         GROUP BY claimed_by ORDER BY claimed_by",
    )
    .bind(now.unix_ms())
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(ClusterRows {
        nodes,
        leases,
        claims,
    })
}

/// A receiver of due hints ([`DUE_CHANNEL`]): each is the due time a grant was given, by any
/// node. Hints only: one may be lost (a reconnection), so the expiry engine still polls.
#[derive(Debug)]
pub struct DueHints {
    pub receiver: tokio::sync::mpsc::Receiver<Timestamp>,
    /// Whether the listening connection is up (hints sent meanwhile are heard).
    pub listening: Arc<AtomicBool>,
}

/// The URLs the due hints are listened for on (the store's servers, the primary first; a
/// standby refuses `LISTEN`, so the listener moves on to the next until one takes it): they hold
/// the store's password, so its `Debug` shows none of it.
#[derive(Clone)]
pub(crate) struct ListenUrl(pub(crate) Vec<String>);

impl std::fmt::Debug for ListenUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenUrl(..)")
    }
}

/// Listens on [`DUE_CHANNEL`] on its own connection to `url` (reconnecting with a pause after a
/// failure) and forwards the hints until the receiver is dropped.
pub(crate) fn listen_due(urls: &ListenUrl) -> DueHints {
    let urls = urls.0.clone();
    let mut next = 0usize;
    let (sender, receiver) = tokio::sync::mpsc::channel(256);
    let listening = Arc::new(AtomicBool::new(false));
    let up = listening.clone();
    tokio::spawn(async move {
        let pause = Duration::from_secs(1);
        loop {
            if sender.is_closed() {
                return;
            }
            let Some(url) = urls.get(next % urls.len().max(1)) else {
                return;
            };
            next = next.wrapping_add(1);
            let mut listener = match sqlx::postgres::PgListener::connect(url).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot listen for due hints; polling meanwhile");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            if let Err(error) = listener.listen(DUE_CHANNEL).await {
                tracing::warn!(error = %error, "cannot listen for due hints; polling meanwhile");
                tokio::time::sleep(pause).await;
                continue;
            }
            // Stay on this server when the connection drops: it is tried first again.
            next = next.wrapping_sub(1);
            up.store(true, Ordering::SeqCst);
            loop {
                // `try_recv` answers `None` when the connection was lost (hints may have been
                // missed meanwhile: polling covers them).
                let notification = tokio::select! {
                    received = listener.try_recv() => received,
                    () = sender.closed() => return,
                };
                match notification {
                    Ok(Some(notification)) => {
                        let Ok(ms) = notification.payload().parse::<i64>() else {
                            continue;
                        };
                        // A full queue drops the hint: the engine is busy waking already.
                        let _ = sender.try_send(Timestamp::from_unix_ms(ms));
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(error = %error, "due hints interrupted; reconnecting");
                        break;
                    }
                }
            }
            up.store(false, Ordering::SeqCst);
            tokio::time::sleep(pause).await;
        }
    });
    DueHints {
        receiver,
        listening,
    }
}
