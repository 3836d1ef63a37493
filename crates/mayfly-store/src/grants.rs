//! SQL for grants: the intent recorded before a target is touched, certificate grants, moves
//! between states, reviews, and the reads, including the claim of due grants by the expiry engine
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several nodes share the work without a leader,
//! each claim bumping the grant's epoch as a fencing token). The claims named by node, which
//! others take over once that node's lease ends, are in `cluster.rs`.

use std::collections::HashSet;

use mayfly_core::Timestamp;
use mayfly_core::grant::GrantState;
use sqlx::{AnyConnection, AnyPool};

use crate::cluster;
use crate::dialect::{Dialect, ROWS_PER_INSERT, list_placeholders, values_on};
use crate::error::{StoreError, unavailable};
use crate::records::{Applied, GrantFilter, GrantRecord, GrantUpdate, Principals, RequestRecord};
use crate::requests::insert_requests;
use crate::rows::{
    AnyQuery, Column, GRANT_ARITY, GRANT_COLUMNS, GrantRow, bind_values, grant_values, records,
};
use crate::secrets::put_secrets;

/// [`crate::Change::RecordIntent`].
pub(crate) async fn record_intent(
    c: &mut AnyConnection,
    grant: &GrantRecord,
    secret: &(String, Vec<u8>),
    issuer: Option<&crate::Claimant>,
) -> Result<Applied, sqlx::Error> {
    let activated =
        sqlx::query("UPDATE requests SET state = 'activated' WHERE id = $1 AND state = 'allowed'")
            .bind(grant.request_id.clone())
            .execute(&mut *c)
            .await?;
    if activated.rows_affected() != 1 {
        return Ok(Applied::Conflict(
            "the request is not allowed (pending, denied, expired or already activated)".into(),
        ));
    }
    match (issuer, grant.next_attempt_at) {
        (Some(issuer), Some(deadline)) => insert_claimed_intent(c, grant, issuer, deadline).await?,
        _ => insert_grants(c, &[grant]).await?,
    }
    put_secrets(c, std::slice::from_ref(secret), grant.created_at).await?;
    Ok(Applied::Done)
}

/// An intent as its issuer's claim, in one row: due from its creation, claimed by `issuer` until
/// the issue `deadline` (epoch 0: no claim round took it yet).
async fn insert_claimed_intent(
    c: &mut AnyConnection,
    grant: &GrantRecord,
    issuer: &crate::Claimant,
    deadline: Timestamp,
) -> Result<(), sqlx::Error> {
    let due_now = GrantRecord {
        next_attempt_at: Some(grant.created_at),
        ..grant.clone()
    };
    let mut values = grant_values(&due_now).to_vec();
    values.extend([
        Column::Text(&issuer.name),
        Column::Int(issuer.generation),
        Column::Int(deadline.unix_ms()),
    ]);
    let sql = format!(
        "INSERT INTO grants ({GRANT_COLUMNS}, claimed_by, claimed_generation, claimed_until) VALUES {}",
        values_on(c, 1, values.len())
    );
    bind_values(sqlx::query(sqlx::AssertSqlSafe(sql)), &values)
        .execute(&mut *c)
        .await?;
    Ok(())
}

/// [`crate::Change::IssueCertificate`]: a request decided and a certificate grant issued at once
/// (nothing to create on a target: the certificate was signed before this commit and is handed
/// out only after it).
pub(crate) async fn issue_certificate(
    c: &mut AnyConnection,
    request: &RequestRecord,
    grant: &GrantRecord,
) -> Result<Applied, sqlx::Error> {
    insert_requests(c, &[request]).await?;
    insert_grants(c, &[grant]).await?;
    Ok(Applied::Done)
}

/// Inserts grants, many rows per statement.
pub(crate) async fn insert_grants(
    c: &mut AnyConnection,
    grants: &[&GrantRecord],
) -> Result<(), sqlx::Error> {
    for chunk in grants.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO grants ({GRANT_COLUMNS}) VALUES {}",
            values_on(c, chunk.len(), GRANT_ARITY)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for grant in chunk {
            query = bind_grant(query, grant);
        }
        query.execute(&mut *c).await?;
    }
    Ok(())
}

/// Binds one grant row's [`GRANT_ARITY`] values, in [`GRANT_COLUMNS`] order.
fn bind_grant<'q>(query: AnyQuery<'q>, grant: &GrantRecord) -> AnyQuery<'q> {
    bind_values(query, &grant_values(grant))
}

/// [`crate::Change::UpdateGrant`]. A revocation asked for now (a user's or an admin's: no claim's
/// epoch, to `revoking`) also hints its due time to every node's expiry engine (`NOTIFY` on
/// PostgreSQL, sent when the transaction commits). An activation or a renewal sends none: its due
/// time is later than any node's next look (at most a second away), and a revocation is the one
/// change that makes a grant due at once.
pub(crate) async fn update_grant(
    c: &mut AnyConnection,
    dialect: Dialect,
    update: &GrantUpdate,
) -> Result<Applied, sqlx::Error> {
    let base = "UPDATE grants SET state = $1, next_attempt_at = $2, expires_at = COALESCE($3, expires_at), \
        last_error = $4, revoke_reason = COALESCE($5, revoke_reason), revoked_at = COALESCE($6, revoked_at), \
        verified_at = COALESCE($7, verified_at), n_attempts = n_attempts + $8, claimed_until = 0, claimed_by = NULL";
    let sql = match update.epoch {
        Some(_) => format!("{base} WHERE id = $9 AND state = $10 AND epoch = $11"),
        None => format!("{base}, epoch = epoch + 1 WHERE id = $9 AND state = $10"),
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(update.to.as_str())
        .bind(update.next_attempt_at.map(Timestamp::unix_ms))
        .bind(update.expires_at.map(Timestamp::unix_ms))
        .bind(update.last_error.clone())
        .bind(update.revoke_reason.clone())
        .bind(update.revoked_at.map(Timestamp::unix_ms))
        .bind(update.verified_at.map(Timestamp::unix_ms))
        .bind(i64::from(update.count_attempt))
        .bind(update.id.clone())
        .bind(update.from.as_str());
    if let Some(epoch) = update.epoch {
        query = query.bind(epoch);
    }
    let done = query.execute(&mut *c).await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(format!(
            "the grant is no longer `{}` (or another node took it over)",
            update.from
        )));
    }
    if update.epoch.is_none()
        && update.to == GrantState::Revoking
        && let Some(at) = update.next_attempt_at
    {
        cluster::hint_due(c, dialect, at).await?;
    }
    Ok(Applied::Done)
}

/// [`crate::Change::ReviewGrant`].
pub(crate) async fn review_grant(
    c: &mut AnyConnection,
    id: &str,
    reviewer: &str,
) -> Result<Applied, sqlx::Error> {
    let done = sqlx::query("UPDATE grants SET reviewed_by = $1 WHERE id = $2 AND break_glass = 1 AND reviewed_by IS NULL")
        .bind(reviewer.to_owned())
        .bind(id.to_owned())
        .execute(&mut *c)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(
            "no unreviewed break-glass grant with that id".into(),
        ));
    }
    Ok(Applied::Done)
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

/// Claims due grants: `$1` the claim's end, `$2` now, `$3` how many.
fn claim_sql(dialect: Dialect) -> String {
    let lock = match dialect {
        Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    format!(
        "UPDATE grants SET epoch = epoch + 1, claimed_until = $1 WHERE id IN (\
            SELECT id FROM grants WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $2 AND claimed_until <= $2 \
            ORDER BY next_attempt_at LIMIT $3{lock}) \
         RETURNING {GRANT_COLUMNS}"
    )
}

/// The grant whose `column` (`id` or `login`, constant) is `value`.
async fn grant_where(
    pool: &AnyPool,
    column: &'static str,
    value: &str,
) -> Result<Option<GrantRecord>, StoreError> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE {column} = $1");
    let row: Option<GrantRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(value.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.map(GrantRecord::try_from).transpose()
}

pub(crate) async fn grant(pool: &AnyPool, id: &str) -> Result<Option<GrantRecord>, StoreError> {
    grant_where(pool, "id", id).await
}

pub(crate) async fn grant_by_login(
    pool: &AnyPool,
    login: &str,
) -> Result<Option<GrantRecord>, StoreError> {
    grant_where(pool, "login", login).await
}

pub(crate) async fn grants(
    pool: &AnyPool,
    filter: GrantFilter,
    limit: i64,
) -> Result<Vec<GrantRecord>, StoreError> {
    let sql = format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE {} ORDER BY created_at DESC LIMIT $1",
        grant_condition(filter)
    );
    let rows: Vec<GrantRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    records(rows)
}

/// The latest `limit` grants of the principal `key` (`user:alice`) matching `filter`, newest
/// first.
pub(crate) async fn grants_of(
    pool: &AnyPool,
    key: &str,
    filter: GrantFilter,
    limit: i64,
) -> Result<Vec<GrantRecord>, StoreError> {
    let sql = format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE principal = $1 AND {} ORDER BY created_at DESC LIMIT $2",
        grant_condition(filter)
    );
    let rows: Vec<GrantRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(key.to_owned())
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    records(rows)
}

/// One page of the grants of `principals` matching `filter`, in id order, after `after_id`.
pub(crate) async fn grants_after(
    pool: &AnyPool,
    filter: GrantFilter,
    principals: Principals<'_>,
    after_id: &str,
    limit: i64,
) -> Result<Vec<GrantRecord>, StoreError> {
    let (scope, key) = match principals {
        Principals::All => ("", ""),
        Principals::Exactly(key) => (" AND principal = $3", key),
        Principals::StartingWith(prefix) => (" AND substr(principal, 1, length($3)) = $3", prefix),
        Principals::Acting(key) => (" AND (principal = $3 OR actors LIKE $4 ESCAPE '\\')", key),
    };
    let sql = format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE id > $1 AND ({}){scope} ORDER BY id LIMIT $2",
        grant_condition(filter)
    );
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(after_id.to_owned())
        .bind(limit);
    if !scope.is_empty() {
        query = query.bind(key.to_owned());
    }
    if let Principals::Acting(key) = principals {
        query = query.bind(crate::agents::json_list_holds(key));
    }
    let rows: Vec<GrantRow> = query.fetch_all(pool).await.map_err(unavailable)?;
    records(rows)
}

/// Claims up to `limit` due grants until `claim_until`, each claim bumping the grant's epoch.
/// The caller holds the store's write lock.
pub(crate) async fn claim_due(
    pool: &AnyPool,
    dialect: Dialect,
    now: Timestamp,
    claim_until: Timestamp,
    limit: i64,
) -> Result<Vec<GrantRecord>, StoreError> {
    let rows: Vec<GrantRow> = sqlx::query_as(sqlx::AssertSqlSafe(claim_sql(dialect)))
        .bind(claim_until.unix_ms())
        .bind(now.unix_ms())
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    records(rows)
}

/// Makes every grant in `issuing` due now and releases its claim; returns how many. The caller
/// holds the store's write lock.
pub(crate) async fn make_issuing_due(pool: &AnyPool, now: Timestamp) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE grants SET next_attempt_at = $1, claimed_until = 0 WHERE state = 'issuing'",
    )
    .bind(now.unix_ms())
    .execute(pool)
    .await
    .map_err(unavailable)?;
    Ok(done.rows_affected())
}

/// The earliest `next_attempt_at` of any grant.
pub(crate) async fn next_due(pool: &AnyPool) -> Result<Option<Timestamp>, StoreError> {
    let at: Option<i64> = sqlx::query_scalar(
        "SELECT min(next_attempt_at) AS at FROM grants WHERE next_attempt_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .map_err(unavailable)?;
    Ok(at.map(Timestamp::from_unix_ms))
}

/// Which of `logins` belong to a live grant, 500 per query.
pub(crate) async fn live_logins(
    pool: &AnyPool,
    logins: &[String],
) -> Result<HashSet<String>, StoreError> {
    let mut live = HashSet::new();
    for chunk in logins.chunks(500) {
        let sql = format!(
            "SELECT login FROM grants WHERE state IN ('issuing', 'active', 'revoking', 'failed') AND login IN ({})",
            list_placeholders(chunk.len())
        );
        let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
        for login in chunk {
            query = query.bind(login.clone());
        }
        let found: Vec<String> = query.fetch_all(pool).await.map_err(unavailable)?;
        live.extend(found);
    }
    Ok(live)
}

/// The logins of the grants on the certificate target `target` that were revoked and have not
/// expired yet.
pub(crate) async fn revoked_certificate_logins(
    pool: &AnyPool,
    target: &str,
    now: Timestamp,
) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(
        "SELECT login FROM grants \
         WHERE target = $2 AND state IN ('revoking', 'failed', 'revoked', 'verified') \
         AND expires_at > $1 ORDER BY login",
    )
    .bind(now.unix_ms())
    .bind(target.to_owned())
    .fetch_all(pool)
    .await
    .map_err(unavailable)
}
