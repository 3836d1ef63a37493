//! SQL for access: targets, roles, policies, requests, approvals and grants, including the claim of
//! due grants by the expiry engine (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several nodes share
//! the work without a leader, each claim bumping the grant's epoch as a fencing token).

use mayfly_core::grant::RequestState;
use mayfly_core::{Principal, Timestamp};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::StoreError;
use crate::records::{
    ApprovalRecord, GrantRecord, GrantUpdate, RequestRecord, RoleRecord, TargetRecord,
};
use crate::sql::Dialect;

pub(crate) enum Applied {
    Done,
    Conflict(String),
}

fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_unix_ms)
}

pub(crate) const GRANT_COLUMNS: &str = "id, request_id, principal, target, role, login, state, created_at, expires_at, \
    next_attempt_at, epoch, n_attempts, last_error, revoke_reason, revoked_at, verified_at, break_glass, reviewed_by";

pub(crate) const REQUEST_COLUMNS: &str = "id, principal_kind, principal_name, principal_role, user_id, target, role, reason, \
    ticket, ttl_ms, max_ttl_ms, approvals_needed, state, decision, break_glass, created_at, expires_at";

pub(crate) fn grant_from_row(row: &AnyRow) -> Result<GrantRecord, StoreError> {
    let state: String = row.try_get("state").map_err(unavailable)?;
    let break_glass: i64 = row.try_get("break_glass").map_err(unavailable)?;
    Ok(GrantRecord {
        id: row.try_get("id").map_err(unavailable)?,
        request_id: row.try_get("request_id").map_err(unavailable)?,
        principal: row.try_get("principal").map_err(unavailable)?,
        target: row.try_get("target").map_err(unavailable)?,
        role: row.try_get("role").map_err(unavailable)?,
        login: row.try_get("login").map_err(unavailable)?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        created_at: Timestamp::from_unix_ms(row.try_get("created_at").map_err(unavailable)?),
        expires_at: Timestamp::from_unix_ms(row.try_get("expires_at").map_err(unavailable)?),
        next_attempt_at: ts(row.try_get("next_attempt_at").map_err(unavailable)?),
        epoch: row.try_get("epoch").map_err(unavailable)?,
        n_attempts: row.try_get("n_attempts").map_err(unavailable)?,
        last_error: row.try_get("last_error").map_err(unavailable)?,
        revoke_reason: row.try_get("revoke_reason").map_err(unavailable)?,
        revoked_at: ts(row.try_get("revoked_at").map_err(unavailable)?),
        verified_at: ts(row.try_get("verified_at").map_err(unavailable)?),
        break_glass: break_glass != 0,
        reviewed_by: row.try_get("reviewed_by").map_err(unavailable)?,
    })
}

pub(crate) fn request_from_row(row: &AnyRow) -> Result<RequestRecord, StoreError> {
    let kind: String = row.try_get("principal_kind").map_err(unavailable)?;
    let name: String = row.try_get("principal_name").map_err(unavailable)?;
    let principal = match kind.as_str() {
        "user" => Principal::User {
            id: row
                .try_get::<Option<String>, _>("user_id")
                .map_err(unavailable)?
                .unwrap_or_default(),
            name,
            groups: Vec::new(),
        },
        _ => Principal::Workload {
            role: row
                .try_get::<Option<String>, _>("principal_role")
                .map_err(unavailable)?
                .unwrap_or_default(),
            name,
        },
    };
    let state: String = row.try_get("state").map_err(unavailable)?;
    let break_glass: i64 = row.try_get("break_glass").map_err(unavailable)?;
    Ok(RequestRecord {
        id: row.try_get("id").map_err(unavailable)?,
        principal,
        target: row.try_get("target").map_err(unavailable)?,
        role: row.try_get("role").map_err(unavailable)?,
        reason: row.try_get("reason").map_err(unavailable)?,
        ticket: row.try_get("ticket").map_err(unavailable)?,
        ttl_ms: row.try_get("ttl_ms").map_err(unavailable)?,
        max_ttl_ms: row.try_get("max_ttl_ms").map_err(unavailable)?,
        approvals_needed: row.try_get("approvals_needed").map_err(unavailable)?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        decision: row.try_get("decision").map_err(unavailable)?,
        break_glass: break_glass != 0,
        created_at: Timestamp::from_unix_ms(row.try_get("created_at").map_err(unavailable)?),
        expires_at: Timestamp::from_unix_ms(row.try_get("expires_at").map_err(unavailable)?),
    })
}

pub(crate) fn target_from_row(row: &AnyRow) -> Result<TargetRecord, StoreError> {
    Ok(TargetRecord {
        name: row.try_get("name").map_err(unavailable)?,
        kind: row.try_get("kind").map_err(unavailable)?,
        url: row.try_get("url").map_err(unavailable)?,
        created_at: Timestamp::from_unix_ms(row.try_get("created_at").map_err(unavailable)?),
    })
}

pub(crate) fn role_from_row(row: &AnyRow) -> Result<RoleRecord, StoreError> {
    Ok(RoleRecord {
        target: row.try_get("target").map_err(unavailable)?,
        name: row.try_get("name").map_err(unavailable)?,
        creation_sql: row.try_get("creation_sql").map_err(unavailable)?,
        revocation_sql: row.try_get("revocation_sql").map_err(unavailable)?,
        max_ttl_ms: row.try_get("max_ttl_ms").map_err(unavailable)?,
    })
}

pub(crate) fn approval_from_row(row: &AnyRow) -> Result<ApprovalRecord, StoreError> {
    Ok(ApprovalRecord {
        request_id: row.try_get("request_id").map_err(unavailable)?,
        approver: row.try_get("approver").map_err(unavailable)?,
        comment: row.try_get("comment").map_err(unavailable)?,
        at: Timestamp::from_unix_ms(row.try_get("at").map_err(unavailable)?),
    })
}

pub(crate) async fn put_target(
    c: &mut AnyConnection,
    target: &TargetRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO targets (name, kind, url, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET kind = $2, url = $3",
    )
    .bind(target.name.clone())
    .bind(target.kind.clone())
    .bind(target.url.clone())
    .bind(target.created_at.unix_ms())
    .execute(&mut *c)
    .await?;
    Ok(())
}

pub(crate) async fn put_role(
    c: &mut AnyConnection,
    role: &RoleRecord,
) -> Result<Applied, sqlx::Error> {
    let exists = sqlx::query("SELECT 1 FROM targets WHERE name = $1")
        .bind(role.target.clone())
        .fetch_optional(&mut *c)
        .await?;
    if exists.is_none() {
        return Ok(Applied::Conflict(format!(
            "no target named `{}`",
            role.target
        )));
    }
    sqlx::query(
        "INSERT INTO roles (target, name, creation_sql, revocation_sql, max_ttl_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (target, name) DO UPDATE SET creation_sql = $3, revocation_sql = $4, max_ttl_ms = $5",
    )
    .bind(role.target.clone())
    .bind(role.name.clone())
    .bind(role.creation_sql.clone())
    .bind(role.revocation_sql.clone())
    .bind(role.max_ttl_ms)
    .execute(&mut *c)
    .await?;
    Ok(Applied::Done)
}

pub(crate) async fn put_policies(
    c: &mut AnyConnection,
    text: &str,
    at: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO policies (id, text, version, updated_at) VALUES (1, $1, 1, $2) \
         ON CONFLICT (id) DO UPDATE SET text = $1, version = policies.version + 1, updated_at = $2",
    )
    .bind(text.to_owned())
    .bind(at.unix_ms())
    .execute(&mut *c)
    .await?;
    Ok(())
}

pub(crate) async fn create_request(
    c: &mut AnyConnection,
    request: &RequestRecord,
) -> Result<(), sqlx::Error> {
    insert_requests(c, &[request]).await
}

/// Rows per multi-row `INSERT` (well under SQLite's and PostgreSQL's limits on bound values).
const ROWS_PER_INSERT: usize = 100;

/// The values of a multi-row `INSERT` on `c`: `?` on SQLite ([`anonymous_placeholders`]),
/// `$N` on PostgreSQL.
pub(crate) fn values_on(c: &AnyConnection, rows: usize, columns: usize) -> String {
    if c.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME {
        anonymous_placeholders(rows, columns)
    } else {
        placeholders(rows, columns)
    }
}

/// `(?, ?, …), …`: SQLite only. sqlx binds these in order, without looking up each one's name
/// (which SQLite finds by a scan: quadratic for a statement of many values).
pub(crate) fn anonymous_placeholders(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// `($1, …, $n), ($n+1, …)`: the placeholders of `rows` rows of `columns` values.
fn placeholders(rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for column in 0..columns {
            if column > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(row * columns + column + 1).to_string());
        }
        out.push(')');
    }
    out
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

/// A principal as the columns `principal_kind, principal_name, principal_role, user_id` of the
/// rows that record one (requests, sessions).
pub(crate) fn principal_columns(
    principal: &Principal,
) -> (&'static str, &str, Option<&str>, Option<&str>) {
    match principal {
        Principal::User { id, name, .. } => ("user", name, None, Some(id)),
        Principal::Workload { role, name } => ("workload", name, Some(role), None),
    }
}

/// One value of a row we insert, borrowed from its record: what both drivers bind (sqlx on the
/// long way, rusqlite in the one-script commit), so that each row's column order is written once.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Column<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
}

/// One request row's values, in [`REQUEST_COLUMNS`] order.
pub(crate) fn request_values(request: &RequestRecord) -> [Column<'_>; REQUEST_ARITY] {
    use Column::{Int, OptText, Text};
    let (kind, name, role, user_id) = principal_columns(&request.principal);
    [
        Text(&request.id),
        Text(kind),
        Text(name),
        OptText(role),
        OptText(user_id),
        Text(&request.target),
        Text(&request.role),
        Text(&request.reason),
        Text(&request.ticket),
        Int(request.ttl_ms),
        Int(request.max_ttl_ms),
        Int(request.approvals_needed),
        Text(request.state.as_str()),
        Text(&request.decision),
        Int(i64::from(request.break_glass)),
        Int(request.created_at.unix_ms()),
        Int(request.expires_at.unix_ms()),
    ]
}

/// One grant row's values, in [`GRANT_COLUMNS`] order.
pub(crate) fn grant_values(grant: &GrantRecord) -> [Column<'_>; GRANT_ARITY] {
    use Column::{Int, OptInt, OptText, Text};
    [
        Text(&grant.id),
        Text(&grant.request_id),
        Text(&grant.principal),
        Text(&grant.target),
        Text(&grant.role),
        Text(&grant.login),
        Text(grant.state.as_str()),
        Int(grant.created_at.unix_ms()),
        Int(grant.expires_at.unix_ms()),
        OptInt(grant.next_attempt_at.map(Timestamp::unix_ms)),
        Int(grant.epoch),
        Int(grant.n_attempts),
        OptText(grant.last_error.as_deref()),
        OptText(grant.revoke_reason.as_deref()),
        OptInt(grant.revoked_at.map(Timestamp::unix_ms)),
        OptInt(grant.verified_at.map(Timestamp::unix_ms)),
        Int(i64::from(grant.break_glass)),
        OptText(grant.reviewed_by.as_deref()),
    ]
}

/// Binds `values` to `query`, in order.
fn bind_values<'q>(query: AnyQuery<'q>, values: &[Column<'_>]) -> AnyQuery<'q> {
    values.iter().fold(query, |query, value| match *value {
        Column::Text(text) => query.bind(text.to_owned()),
        Column::OptText(text) => query.bind(text.map(str::to_owned)),
        Column::Int(n) => query.bind(n),
        Column::OptInt(n) => query.bind(n),
    })
}

/// Columns of a request row.
pub(crate) const REQUEST_ARITY: usize = 17;
/// Columns of a grant row.
pub(crate) const GRANT_ARITY: usize = 18;

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds one request row's [`REQUEST_ARITY`] values, in [`REQUEST_COLUMNS`] order.
pub(crate) fn bind_request<'q>(query: AnyQuery<'q>, request: &RequestRecord) -> AnyQuery<'q> {
    bind_values(query, &request_values(request))
}

pub(crate) async fn approve(
    c: &mut AnyConnection,
    approval: &ApprovalRecord,
) -> Result<Applied, sqlx::Error> {
    let row = sqlx::query("SELECT state, approvals_needed, expires_at FROM requests WHERE id = $1")
        .bind(approval.request_id.clone())
        .fetch_optional(&mut *c)
        .await?;
    let Some(row) = row else {
        return Ok(Applied::Conflict("no such request".into()));
    };
    let state: String = row.try_get("state")?;
    if state != RequestState::Pending.as_str() {
        return Ok(Applied::Conflict(format!(
            "the request is {state}, not pending"
        )));
    }
    let expires_at: i64 = row.try_get("expires_at")?;
    if expires_at <= approval.at.unix_ms() {
        return Ok(Applied::Conflict("the request has expired".into()));
    }
    let needed: i64 = row.try_get("approvals_needed")?;
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
    let count: i64 = sqlx::query("SELECT count(*) AS n FROM approvals WHERE request_id = $1")
        .bind(approval.request_id.clone())
        .fetch_one(&mut *c)
        .await?
        .try_get("n")?;
    if count >= needed {
        sqlx::query("UPDATE requests SET state = 'allowed' WHERE id = $1 AND state = 'pending'")
            .bind(approval.request_id.clone())
            .execute(&mut *c)
            .await?;
    }
    Ok(Applied::Done)
}

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

/// Requests that were never activated and are past their time. The first condition is the partial
/// index `requests_open`'s (migration 0003) word for word.
pub(crate) const EXPIRE_REQUESTS: &str = "UPDATE requests SET state = 'expired' \
     WHERE state IN ('pending', 'allowed') AND expires_at <= $1";

pub(crate) async fn expire_requests(
    c: &mut AnyConnection,
    before: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(EXPIRE_REQUESTS)
        .bind(before.unix_ms())
        .execute(&mut *c)
        .await?;
    Ok(())
}

pub(crate) async fn record_intent(
    c: &mut AnyConnection,
    grant: &GrantRecord,
    secret: &(String, Vec<u8>),
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
    insert_grant(c, grant).await?;
    crate::sql::put_secrets(c, std::slice::from_ref(secret), grant.created_at).await?;
    Ok(Applied::Done)
}

/// A request decided and a certificate grant issued at once (nothing to create on a target: the
/// certificate was signed before this commit and is handed out only after it).
pub(crate) async fn issue_certificate(
    c: &mut AnyConnection,
    request: &RequestRecord,
    grant: &GrantRecord,
) -> Result<(), sqlx::Error> {
    create_request(c, request).await?;
    insert_grant(c, grant).await
}

async fn insert_grant(c: &mut AnyConnection, grant: &GrantRecord) -> Result<(), sqlx::Error> {
    insert_grants(c, &[grant]).await
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
pub(crate) fn bind_grant<'q>(query: AnyQuery<'q>, grant: &GrantRecord) -> AnyQuery<'q> {
    bind_values(query, &grant_values(grant))
}

pub(crate) async fn update_grant(
    c: &mut AnyConnection,
    update: &GrantUpdate,
) -> Result<Applied, sqlx::Error> {
    let base = "UPDATE grants SET state = $1, next_attempt_at = $2, expires_at = COALESCE($3, expires_at), \
        last_error = $4, revoke_reason = COALESCE($5, revoke_reason), revoked_at = COALESCE($6, revoked_at), \
        verified_at = COALESCE($7, verified_at), n_attempts = n_attempts + $8, claimed_until = 0";
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
    Ok(Applied::Done)
}

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

pub(crate) fn claim_sql(dialect: Dialect) -> String {
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
