//! SQL for the dashboard's pictures of access (issue 21): a few aggregates bounded by a time
//! window, each answering a row per bucket (and value) at most, never whole rows of grants and
//! never the events' bodies, so that the answer stays small however many grants the window holds.
//!
//! - the counts now: active grants, pending requests, overdue grants (one round trip);
//! - in which buckets grants were live, per target: the first and last bucket of each grant whose
//!   life touches the window, grouped (the caller adds them up per bucket);
//! - the TTLs granted, per minute; the largest TTL the policy allowed per role;
//! - the revocation lags and the waits for approval, per bucket and value (two significant
//!   digits, so that equal ones group), for the percentiles;
//! - the orphan sweep's findings (`sweep.orphan` events) per bucket, found through an index by
//!   kind (0013's `audit_events_kind`; 0014's partial `audit_sweep_orphans`, whose condition the
//!   query repeats word for word): the rest of the log is never read.

use mayfly_core::{Principal, Timestamp};
use sqlx::AnyPool;

use crate::error::{StoreError, unavailable};
use crate::rows::principal_columns;

/// The grant states in which a credential may exist on its target.
const LIVE: [&str; 4] = ["issuing", "active", "revoking", "failed"];

/// The dashboard's pictures, read for one window.
#[derive(Clone, Copy, Debug)]
pub struct PictureQuery<'a> {
    /// Only this principal's grants and requests (`None`: everyone's). The sweep's findings are
    /// the broker's, not a principal's, and are never narrowed.
    pub principal: Option<&'a Principal>,
    /// The window, `[from, to)`, cut into buckets of `bucket_ms` (at least 1) from `from`.
    pub from: Timestamp,
    pub to: Timestamp,
    pub bucket_ms: i64,
}

/// What [`crate::Store::access_picture`] reads: aggregates, a row per bucket and value at most.
/// A bucket is `(at - from) / bucket_ms`; durations are in milliseconds, those of the lags and
/// waits rounded down to two significant digits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PictureRows {
    /// Grants in state `active` now.
    pub active_grants: i64,
    /// Requests in state `pending` now.
    pub pending_requests: i64,
    /// Grants whose credential may still exist (`issuing`, `active`, `revoking`, `failed`) and
    /// whose expiry has come by the window's end.
    pub overdue: i64,
    /// Which buckets grants were live in, per target (see [`LiveSpan`]).
    pub live_spans: Vec<LiveSpan>,
    /// `(TTL in whole minutes, grants)` of the grants created in the window.
    pub ttl_minutes: Vec<(i64, i64)>,
    /// `(target, role, the largest max TTL)` of the requests activated in the window: the role's
    /// maximum lowered by the deciding policies' `@max_ttl`.
    pub role_max_ttl: Vec<(String, String, i64)>,
    /// `(bucket of expiry, lag, grants)`: grants the expiry engine revoked because they expired,
    /// the lag from their expiry to their verification (or revocation, if not verified yet).
    pub revocation_lags: Vec<(i64, i64, i64)>,
    /// `(bucket of approval, wait, requests)`: requests that needed approvals, the wait from the
    /// request to the approval that allowed it.
    pub approval_waits: Vec<(i64, i64, i64)>,
    /// `(bucket, findings)` of the orphan sweep, buckets without any left out.
    pub orphans: Vec<(i64, i64)>,
}

/// How many grants of `target` were live from bucket `first` to bucket `last` (`-1`: to the end
/// of the window, still live or ended after it). A grant lives from its creation until its
/// revocation (without one: until its expiry if it is no longer live, on if it is); one that
/// started before the window starts in bucket 0.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveSpan {
    pub target: String,
    pub first: i64,
    pub last: i64,
    pub grants: i64,
}

/// A condition on whose rows are read, from placeholder `$first` on, and its values.
struct Scope {
    grants: String,
    requests: String,
    key: Option<String>,
    columns: Option<(String, String, String)>,
}

impl Scope {
    /// `grants`: `$first`; `requests`: `$first` to `$first + 2`.
    fn of(principal: Option<&Principal>, first: usize, requests_alias: &str) -> Scope {
        match principal {
            None => Scope {
                grants: String::new(),
                requests: String::new(),
                key: None,
                columns: None,
            },
            Some(principal) => {
                let (kind, name, role, _) = principal_columns(principal);
                let r = requests_alias;
                Scope {
                    grants: format!(" AND principal = ${first}"),
                    requests: format!(
                        " AND {r}principal_kind = ${first} AND {r}principal_name = ${} \
                         AND COALESCE({r}principal_role, '') = ${}",
                        first + 1,
                        first + 2
                    ),
                    key: Some(principal.to_string()),
                    columns: Some((
                        kind.to_owned(),
                        name.to_owned(),
                        role.unwrap_or_default().to_owned(),
                    )),
                }
            }
        }
    }
}

/// `expr` (a non-negative number of milliseconds) rounded down to two significant digits.
fn two_digits(expr: &str) -> String {
    let mut sql = format!("CASE WHEN {expr} < 100 THEN {expr}");
    // Below 10^(k + 2), keep two digits: drop k of them (up to 10^18, beyond any lag).
    for k in 1..=16_u32 {
        let unit = 10_i64.pow(k);
        let limit = 10_i64.pow(k + 2);
        sql.push_str(&format!(
            " WHEN {expr} < {limit} THEN {expr} / {unit} * {unit}"
        ));
    }
    sql.push_str(&format!(" ELSE {expr} END"));
    sql
}

fn live_states() -> String {
    LIVE.map(|s| format!("'{s}'")).join(", ")
}

/// Everything [`PictureRows`] holds, its reads run side by side on the pool.
pub(crate) async fn access_picture(
    pool: &AnyPool,
    query: &PictureQuery<'_>,
) -> Result<PictureRows, StoreError> {
    let (
        (active_grants, pending_requests, overdue),
        live_spans,
        ttl_minutes,
        role_max_ttl,
        revocation_lags,
        approval_waits,
        orphans,
    ) = tokio::try_join!(
        counts(pool, query),
        live_spans(pool, query),
        ttl_minutes(pool, query),
        role_max_ttl(pool, query),
        revocation_lags(pool, query),
        approval_waits(pool, query),
        orphans(pool, query),
    )?;
    Ok(PictureRows {
        active_grants,
        pending_requests,
        overdue,
        live_spans,
        ttl_minutes,
        role_max_ttl,
        revocation_lags,
        approval_waits,
        orphans,
    })
}

/// Active grants and pending requests now, and the overdue. The pending condition is the
/// partial index `requests_open`'s (migration 0003) word for word, then the state itself.
async fn counts(pool: &AnyPool, query: &PictureQuery<'_>) -> Result<(i64, i64, i64), StoreError> {
    let grants = Scope::of(query.principal, 2, "");
    let requests = Scope::of(query.principal, 3, "");
    let sql = format!(
        "SELECT (SELECT count(*) FROM grants WHERE state = 'active'{g}) AS active_grants, \
         (SELECT count(*) FROM requests WHERE state IN ('pending', 'allowed') AND state = 'pending'{r}) AS pending_requests, \
         (SELECT count(*) FROM grants WHERE state IN ({live}) AND expires_at <= $1{g}) AS overdue",
        g = grants.grants,
        r = requests.requests,
        live = live_states(),
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(query.to.unix_ms());
    if let (Some(key), Some((kind, name, role))) = (grants.key, requests.columns) {
        q = q.bind(key).bind(kind).bind(name).bind(role);
    }
    q.fetch_one(pool).await.map_err(unavailable)
}

/// The buckets each grant whose life touches the window was live in, grouped: a row per target
/// and span of buckets.
async fn live_spans(pool: &AnyPool, query: &PictureQuery<'_>) -> Result<Vec<LiveSpan>, StoreError> {
    let scope = Scope::of(query.principal, 4, "");
    let live = live_states();
    let sql = format!(
        "SELECT target, first, last, count(*) AS grants FROM (\
           SELECT target, \
             CASE WHEN created_at < $1 THEN 0 ELSE (created_at - $1) / $2 END AS first, \
             CASE WHEN ended IS NULL OR ended >= $3 THEN -1 ELSE (ended - 1 - $1) / $2 END AS last \
           FROM (\
             SELECT target, created_at, CASE WHEN revoked_at IS NOT NULL THEN revoked_at \
               WHEN state IN ({live}) THEN NULL ELSE expires_at END AS ended \
             FROM grants WHERE created_at < $3 \
             AND (revoked_at >= $1 OR expires_at >= $1 OR state IN ({live})){scope}) lives \
           WHERE ended IS NULL OR (ended > $1 AND ended > created_at)) spans \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        scope = scope.grants
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.from.unix_ms())
        .bind(query.bucket_ms.max(1))
        .bind(query.to.unix_ms());
    if let Some(key) = scope.key {
        q = q.bind(key);
    }
    q.fetch_all(pool).await.map_err(unavailable)
}

/// The TTLs granted (expiry minus creation, renewals included) of the grants created in the
/// window, in whole minutes.
async fn ttl_minutes(
    pool: &AnyPool,
    query: &PictureQuery<'_>,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let scope = Scope::of(query.principal, 3, "");
    let sql = format!(
        "SELECT (expires_at - created_at) / 60000 AS minutes, count(*) AS n FROM grants \
         WHERE created_at >= $1 AND created_at < $2{} GROUP BY 1 ORDER BY 1",
        scope.grants
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.from.unix_ms())
        .bind(query.to.unix_ms());
    if let Some(key) = scope.key {
        q = q.bind(key);
    }
    q.fetch_all(pool).await.map_err(unavailable)
}

/// The largest max TTL per role among the requests activated in the window (an activated
/// request's `expires_at` is its activation deadline, so one activated in the window has it
/// after the window's start).
async fn role_max_ttl(
    pool: &AnyPool,
    query: &PictureQuery<'_>,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let scope = Scope::of(query.principal, 3, "");
    let sql = format!(
        "SELECT target, role, max(max_ttl_ms) AS max_ttl_ms FROM requests \
         WHERE state = 'activated' AND expires_at >= $1 AND created_at < $2{} \
         GROUP BY target, role ORDER BY target, role",
        scope.requests
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.from.unix_ms())
        .bind(query.to.unix_ms());
    if let Some((kind, name, role)) = scope.columns {
        q = q.bind(kind).bind(name).bind(role);
    }
    q.fetch_all(pool).await.map_err(unavailable)
}

/// The lags of the revocations at expiry, per bucket of expiry.
async fn revocation_lags(
    pool: &AnyPool,
    query: &PictureQuery<'_>,
) -> Result<Vec<(i64, i64, i64)>, StoreError> {
    let scope = Scope::of(query.principal, 4, "");
    let sql = format!(
        "SELECT (expires_at - $1) / $2 AS bucket, {} AS lag, count(*) AS n FROM (\
           SELECT expires_at, CASE WHEN COALESCE(verified_at, revoked_at) > expires_at \
             THEN COALESCE(verified_at, revoked_at) - expires_at ELSE 0 END AS lag \
           FROM grants WHERE revoke_reason = 'expired' AND expires_at >= $1 AND expires_at < $3 \
           AND COALESCE(verified_at, revoked_at) IS NOT NULL{}) x \
         GROUP BY 1, 2 ORDER BY 1, 2",
        two_digits("lag"),
        scope.grants
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.from.unix_ms())
        .bind(query.bucket_ms.max(1))
        .bind(query.to.unix_ms());
    if let Some(key) = scope.key {
        q = q.bind(key);
    }
    q.fetch_all(pool).await.map_err(unavailable)
}

/// Requests that needed approvals and got the last one (the one that allowed them) in the
/// window: the wait from the request, per bucket of approval. Grouped by the approvals' own key,
/// which SQLite walks in order through its primary key (no sort).
async fn approval_waits(
    pool: &AnyPool,
    query: &PictureQuery<'_>,
) -> Result<Vec<(i64, i64, i64)>, StoreError> {
    let scope = Scope::of(query.principal, 4, "r.");
    let sql = format!(
        "SELECT (approved - $1) / $2 AS bucket, {} AS wait, count(*) AS n FROM (\
           SELECT max(r.created_at) AS asked, max(a.at) AS approved \
           FROM approvals a JOIN requests r ON r.id = a.request_id \
           WHERE r.created_at < $3{} \
           GROUP BY a.request_id \
           HAVING count(*) >= max(r.approvals_needed) AND max(a.at) >= $1 AND max(a.at) < $3) x \
         GROUP BY 1, 2 ORDER BY 1, 2",
        two_digits("(CASE WHEN approved > asked THEN approved - asked ELSE 0 END)"),
        scope.requests
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.from.unix_ms())
        .bind(query.bucket_ms.max(1))
        .bind(query.to.unix_ms());
    if let Some((kind, name, role)) = scope.columns {
        q = q.bind(kind).bind(name).bind(role);
    }
    q.fetch_all(pool).await.map_err(unavailable)
}

/// The orphan sweep's findings per bucket, through an index by kind. The kind is written out,
/// not bound: only then may the planner use the partial index `audit_sweep_orphans` too.
pub(crate) const ORPHANS: &str = "SELECT (at_ms - $1) / $2 AS bucket, count(*) AS n \
     FROM audit_events WHERE kind = 'sweep.orphan' AND at_ms >= $1 AND at_ms < $3 \
     GROUP BY (at_ms - $1) / $2 ORDER BY 1";
const _: () = assert!(matches!(
    mayfly_core::audit::SWEEP_ORPHAN_KIND.as_bytes(),
    b"sweep.orphan"
));

async fn orphans(pool: &AnyPool, query: &PictureQuery<'_>) -> Result<Vec<(i64, i64)>, StoreError> {
    sqlx::query_as(ORPHANS)
        .bind(query.from.unix_ms())
        .bind(query.bucket_ms.max(1))
        .bind(query.to.unix_ms())
        .fetch_all(pool)
        .await
        .map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_digits_rounds_down_by_powers_of_ten() {
        let sql = two_digits("x");
        assert!(sql.starts_with("CASE WHEN x < 100 THEN x WHEN x < 1000 THEN x / 10 * 10"));
        assert!(sql.contains(
            "WHEN x < 1000000000000000000 THEN x / 10000000000000000 * 10000000000000000"
        ));
        assert!(sql.ends_with("ELSE x END"));
    }
}
