//! SQL for requests and their approvals: the changes that create, approve, deny, withdraw and
//! expire them, the many-rows-per-statement insert the write path batches, and the reads.

use mayfly_core::grant::RequestState;
use mayfly_core::{Principal, Timestamp};
use sqlx::{AnyConnection, AnyPool};

use crate::dialect::{ROWS_PER_INSERT, values_on};
use crate::error::{StoreError, unavailable};
use crate::records::{Applied, ApprovalRecord, RequestRecord};
use crate::rows::{
    AnyQuery, ApprovalRow, REQUEST_ARITY, REQUEST_COLUMNS, RequestRow, bind_values,
    principal_columns, records, request_values,
};

/// The pending requests. The first condition is the partial index `requests_open`'s (migration
/// 0003) word for word: SQLite uses a partial index only for a query that repeats its condition.
const PENDING_REQUESTS: &str = "WHERE state IN ('pending', 'allowed') AND state = 'pending'";

/// Requests that were never activated and are past their time. The first condition is the partial
/// index `requests_open`'s (migration 0003) word for word.
pub(crate) const EXPIRE_REQUESTS: &str = "UPDATE requests SET state = 'expired' \
     WHERE state IN ('pending', 'allowed') AND expires_at <= $1";

/// The newest requests, or the newest pending ones; `$1` is how many.
pub(crate) fn requests_sql(pending_only: bool) -> String {
    let filter = if pending_only { PENDING_REQUESTS } else { "" };
    format!("SELECT {REQUEST_COLUMNS} FROM requests {filter} ORDER BY created_at DESC LIMIT $1")
}

/// [`crate::Change::CreateRequest`].
pub(crate) async fn create_request(
    c: &mut AnyConnection,
    request: &RequestRecord,
) -> Result<Applied, sqlx::Error> {
    insert_requests(c, &[request]).await?;
    Ok(Applied::Done)
}

/// Inserts requests, many rows per statement.
pub(crate) async fn insert_requests(
    c: &mut AnyConnection,
    requests: &[&RequestRecord],
) -> Result<(), sqlx::Error> {
    for chunk in requests.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO requests ({REQUEST_COLUMNS}) VALUES {}",
            values_on(c, chunk.len(), REQUEST_ARITY)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for request in chunk {
            query = bind_request(query, request);
        }
        query.execute(&mut *c).await?;
    }
    Ok(())
}

/// Binds one request row's [`REQUEST_ARITY`] values, in [`REQUEST_COLUMNS`] order.
fn bind_request<'q>(query: AnyQuery<'q>, request: &RequestRecord) -> AnyQuery<'q> {
    bind_values(query, &request_values(request))
}

/// What an approval checks of its request.
#[derive(sqlx::FromRow)]
struct Approvable {
    state: String,
    approvals_needed: i64,
    expires_at: i64,
}

/// [`crate::Change::Approve`].
pub(crate) async fn approve(
    c: &mut AnyConnection,
    approval: &ApprovalRecord,
) -> Result<Applied, sqlx::Error> {
    let request: Option<Approvable> =
        sqlx::query_as("SELECT state, approvals_needed, expires_at FROM requests WHERE id = $1")
            .bind(approval.request_id.clone())
            .fetch_optional(&mut *c)
            .await?;
    let Some(request) = request else {
        return Ok(Applied::Conflict("no such request".into()));
    };
    if request.state != RequestState::Pending.as_str() {
        return Ok(Applied::Conflict(format!(
            "the request is {}, not pending",
            request.state
        )));
    }
    if request.expires_at <= approval.at.unix_ms() {
        return Ok(Applied::Conflict("the request has expired".into()));
    }
    let taken = sqlx::query("SELECT 1 FROM approvals WHERE request_id = $1 AND approver = $2")
        .bind(approval.request_id.clone())
        .bind(approval.approver.clone())
        .fetch_optional(&mut *c)
        .await?;
    if taken.is_some() {
        return Ok(Applied::Conflict(
            "this approver already approved the request".into(),
        ));
    }
    sqlx::query(
        "INSERT INTO approvals (request_id, approver, comment, at) VALUES ($1, $2, $3, $4)",
    )
    .bind(approval.request_id.clone())
    .bind(approval.approver.clone())
    .bind(approval.comment.clone())
    .bind(approval.at.unix_ms())
    .execute(&mut *c)
    .await?;
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) AS n FROM approvals WHERE request_id = $1")
            .bind(approval.request_id.clone())
            .fetch_one(&mut *c)
            .await?;
    if count >= request.approvals_needed {
        sqlx::query("UPDATE requests SET state = 'allowed' WHERE id = $1 AND state = 'pending'")
            .bind(approval.request_id.clone())
            .execute(&mut *c)
            .await?;
    }
    Ok(Applied::Done)
}

/// [`crate::Change::DenyRequest`].
pub(crate) async fn deny(c: &mut AnyConnection, request_id: &str) -> Result<Applied, sqlx::Error> {
    let done =
        sqlx::query("UPDATE requests SET state = 'denied' WHERE id = $1 AND state = 'pending'")
            .bind(request_id.to_owned())
            .execute(&mut *c)
            .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict("the request is not pending".into()));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::WithdrawRequest`].
pub(crate) async fn withdraw(
    c: &mut AnyConnection,
    request_id: &str,
) -> Result<Applied, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE requests SET state = 'denied' WHERE id = $1 AND state IN ('pending', 'allowed')",
    )
    .bind(request_id.to_owned())
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(
            "the request is neither pending nor allowed".into(),
        ));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::ExpireRequests`].
pub(crate) async fn expire_requests(
    c: &mut AnyConnection,
    before: Timestamp,
) -> Result<Applied, sqlx::Error> {
    sqlx::query(EXPIRE_REQUESTS)
        .bind(before.unix_ms())
        .execute(&mut *c)
        .await?;
    Ok(Applied::Done)
}

pub(crate) async fn request(pool: &AnyPool, id: &str) -> Result<Option<RequestRecord>, StoreError> {
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1");
    let row: Option<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.map(RequestRecord::try_from).transpose()
}

pub(crate) async fn requests(
    pool: &AnyPool,
    pending_only: bool,
    limit: i64,
) -> Result<Vec<RequestRecord>, StoreError> {
    let rows: Vec<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(requests_sql(pending_only)))
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    records(rows)
}

/// The latest `limit` requests of `principal`, newest first.
pub(crate) async fn requests_of(
    pool: &AnyPool,
    principal: &Principal,
    limit: i64,
) -> Result<Vec<RequestRecord>, StoreError> {
    let (kind, name, role, _) = principal_columns(principal);
    // The workload's role is compared too: two bindings may name workloads alike.
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE principal_kind = $1 AND principal_name = $2 \
         AND COALESCE(principal_role, '') = $3 ORDER BY created_at DESC LIMIT $4"
    );
    let rows: Vec<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(kind)
        .bind(name.to_owned())
        .bind(role.unwrap_or_default().to_owned())
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    records(rows)
}

/// One page of the requests still pending or allowed, in id order, after `after_id`.
pub(crate) async fn open_requests_after(
    pool: &AnyPool,
    after_id: &str,
    limit: i64,
) -> Result<Vec<RequestRecord>, StoreError> {
    // The state condition is the partial index `requests_open`'s (migration 0003).
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE state IN ('pending', 'allowed') AND id > $1 ORDER BY id LIMIT $2"
    );
    let rows: Vec<RequestRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(after_id.to_owned())
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    records(rows)
}

pub(crate) async fn approvals(
    pool: &AnyPool,
    request_id: &str,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    let rows: Vec<ApprovalRow> = sqlx::query_as(
        "SELECT request_id, approver, comment, at FROM approvals WHERE request_id = $1 ORDER BY at",
    )
    .bind(request_id.to_owned())
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(rows.into_iter().map(ApprovalRecord::from).collect())
}
