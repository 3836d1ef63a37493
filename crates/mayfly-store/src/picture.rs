//! SQL for the dashboard's pictures of access (issue 21): a few narrow reads bounded by a time
//! window, each a compact aggregate or a read of the few columns a chart needs, never whole rows
//! and never the events' bodies.
//!
//! - the counts now: active grants, pending requests (one round trip);
//! - the grants whose life touches the window: target, role, state and their times;
//! - the largest TTL the policy allowed per role, among the requests activated in the window;
//! - the requests approved in the window: when asked and when the last approval came;
//! - the orphan sweep's findings (`sweep.orphan` events) per bucket, found through the partial
//!   index `audit_sweep_orphans` (migration 0013), whose condition the query repeats word for
//!   word: the rest of the log is never read.

use mayfly_core::{Principal, Timestamp};
use sqlx::AnyPool;

use crate::error::{StoreError, unavailable};
use crate::rows::principal_columns;

/// The grant states in which a credential may exist on its target.
const LIVE: [&str; 4] = ["issuing", "active", "revoking", "failed"];

/// What [`crate::Store::access_picture`] reads.
#[derive(Clone, Copy, Debug)]
pub struct PictureQuery<'a> {
    /// Only this principal's grants and requests (`None`: everyone's). The sweep's findings are
    /// the broker's, not a principal's, and are never narrowed.
    pub principal: Option<&'a Principal>,
    /// The window, `[from, to)`.
    pub from: Timestamp,
    pub to: Timestamp,
    /// The width of a bucket of the window, in milliseconds (at least 1).
    pub bucket_ms: i64,
}

/// The rows behind the dashboard's pictures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PictureRows {
    /// Grants in state `active` now.
    pub active_grants: i64,
    /// Requests in state `pending` now.
    pub pending_requests: i64,
    /// The grants whose life touches the window, in no particular order.
    pub grants: Vec<PictureGrant>,
    /// `(target, role, the largest max TTL in ms)` of the requests activated in the window: the
    /// role's maximum lowered by the deciding policies' `@max_ttl`.
    pub role_max_ttl: Vec<(String, String, i64)>,
    /// `(asked, approved)`: requests that needed approvals and got the last one in the window.
    pub approvals: Vec<(Timestamp, Timestamp)>,
    /// `(bucket index, findings)` of the orphan sweep in the window, buckets without any left out.
    pub orphans: Vec<(i64, i64)>,
}

/// A grant as the pictures see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PictureGrant {
    pub target: String,
    pub role: String,
    /// In a state where its credential may exist (`issuing`, `active`, `revoking`, `failed`).
    pub live: bool,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub verified_at: Option<Timestamp>,
    /// Revoked by the expiry engine because it expired (not early by a person or a recheck).
    pub at_expiry: bool,
}

#[derive(sqlx::FromRow)]
struct GrantColumns {
    target: String,
    role: String,
    state: String,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    verified_at: Option<i64>,
    at_expiry: i64,
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

/// Everything [`PictureRows`] holds, its reads run side by side on the pool.
pub(crate) async fn access_picture(
    pool: &AnyPool,
    query: &PictureQuery<'_>,
) -> Result<PictureRows, StoreError> {
    let ((active_grants, pending_requests), grants, role_max_ttl, approvals, orphans) = tokio::try_join!(
        counts(pool, query),
        grants(pool, query),
        role_max_ttl(pool, query),
        approvals(pool, query),
        orphans(pool, query),
    )?;
    Ok(PictureRows {
        active_grants,
        pending_requests,
        grants,
        role_max_ttl,
        approvals,
        orphans,
    })
}

/// Active grants and pending requests now. The pending condition is the partial index
/// `requests_open`'s (migration 0003) word for word, then the state itself.
async fn counts(pool: &AnyPool, query: &PictureQuery<'_>) -> Result<(i64, i64), StoreError> {
    let grants = Scope::of(query.principal, 1, "");
    let requests = Scope::of(query.principal, 2, "");
    let sql = format!(
        "SELECT (SELECT count(*) FROM grants WHERE state = 'active'{}) AS active_grants, \
         (SELECT count(*) FROM requests WHERE state IN ('pending', 'allowed') AND state = 'pending'{}) AS pending_requests",
        grants.grants, requests.requests
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    if let (Some(key), Some((kind, name, role))) = (grants.key, requests.columns) {
        q = q.bind(key).bind(kind).bind(name).bind(role);
    }
    q.fetch_one(pool).await.map_err(unavailable)
}

/// The grants whose life touches `[from, to)`: created before its end and revoked, expiring or
/// still live after its start. A grant revoked early before the window but expiring in it is read
/// too; the caller sees its `revoked_at`.
async fn grants(pool: &AnyPool, query: &PictureQuery<'_>) -> Result<Vec<PictureGrant>, StoreError> {
    let scope = Scope::of(query.principal, 3, "");
    let live = LIVE.map(|s| format!("'{s}'")).join(", ");
    let sql = format!(
        "SELECT target, role, state, created_at, expires_at, revoked_at, verified_at, \
         CAST(CASE WHEN revoke_reason = 'expired' THEN 1 ELSE 0 END AS BIGINT) AS at_expiry \
         FROM grants WHERE created_at < $1 \
         AND (revoked_at >= $2 OR expires_at >= $2 OR state IN ({live})){}",
        scope.grants
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.to.unix_ms())
        .bind(query.from.unix_ms());
    if let Some(key) = scope.key {
        q = q.bind(key);
    }
    let rows: Vec<GrantColumns> = q.fetch_all(pool).await.map_err(unavailable)?;
    let ms = Timestamp::from_unix_ms;
    Ok(rows
        .into_iter()
        .map(|row| PictureGrant {
            live: LIVE.contains(&row.state.as_str()),
            target: row.target,
            role: row.role,
            created_at: ms(row.created_at),
            expires_at: ms(row.expires_at),
            revoked_at: row.revoked_at.map(ms),
            verified_at: row.verified_at.map(ms),
            at_expiry: row.at_expiry != 0,
        })
        .collect())
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

/// Requests that needed approvals, and got the last one (the one that allowed them) in the
/// window: when asked, when allowed.
async fn approvals(
    pool: &AnyPool,
    query: &PictureQuery<'_>,
) -> Result<Vec<(Timestamp, Timestamp)>, StoreError> {
    let scope = Scope::of(query.principal, 3, "r.");
    let sql = format!(
        "SELECT r.created_at AS asked, max(a.at) AS approved \
         FROM approvals a JOIN requests r ON r.id = a.request_id \
         WHERE r.created_at < $2{} \
         GROUP BY r.id, r.created_at, r.approvals_needed \
         HAVING count(*) >= r.approvals_needed AND max(a.at) >= $1 AND max(a.at) < $2",
        scope.requests
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.from.unix_ms())
        .bind(query.to.unix_ms());
    if let Some((kind, name, role)) = scope.columns {
        q = q.bind(kind).bind(name).bind(role);
    }
    let rows: Vec<(i64, i64)> = q.fetch_all(pool).await.map_err(unavailable)?;
    Ok(rows
        .into_iter()
        .map(|(asked, approved)| {
            (
                Timestamp::from_unix_ms(asked),
                Timestamp::from_unix_ms(approved),
            )
        })
        .collect())
}

/// The orphan sweep's findings per bucket. The kind is written out, not bound: only then may
/// the planner use the partial index `audit_sweep_orphans`, whose condition names it.
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
