//! SQL for what access is decided on: targets, their roles and the policy set. The changes that
//! write them and the reads, including the one read a decision needs.

use mayfly_core::Timestamp;
use sqlx::{AnyConnection, AnyPool};

use crate::error::{StoreError, unavailable};
use crate::records::{Applied, RoleRecord, TargetRecord};
use crate::rows::{DecisionRow, RoleRow, TargetRow};
use crate::secrets::put_secrets;

/// [`crate::Change::PutTarget`]: the target, its encrypted admin secret, and its admin secret's
/// rotation started afresh.
pub(crate) async fn put_target(
    c: &mut AnyConnection,
    target: &TargetRecord,
    secret: &(String, Vec<u8>),
    rotate_admin_every_ms: Option<i64>,
) -> Result<Applied, sqlx::Error> {
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
    put_secrets(c, std::slice::from_ref(secret), target.created_at).await?;
    crate::rotations::reset(c, &target.name, rotate_admin_every_ms, target.created_at).await?;
    Ok(Applied::Done)
}

/// [`crate::Change::PutRole`].
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

/// [`crate::Change::PutPolicies`].
pub(crate) async fn put_policies(
    c: &mut AnyConnection,
    text: &str,
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    sqlx::query(
        "INSERT INTO policies (id, text, version, updated_at) VALUES (1, $1, 1, $2) \
         ON CONFLICT (id) DO UPDATE SET text = $1, version = policies.version + 1, updated_at = $2",
    )
    .bind(text.to_owned())
    .bind(at.unix_ms())
    .execute(&mut *c)
    .await?;
    Ok(Applied::Done)
}

pub(crate) async fn target(pool: &AnyPool, name: &str) -> Result<Option<TargetRecord>, StoreError> {
    let row: Option<TargetRow> =
        sqlx::query_as("SELECT name, kind, url, created_at FROM targets WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?;
    Ok(row.map(TargetRecord::from))
}

pub(crate) async fn targets(pool: &AnyPool) -> Result<Vec<TargetRecord>, StoreError> {
    let rows: Vec<TargetRow> =
        sqlx::query_as("SELECT name, kind, url, created_at FROM targets ORDER BY name")
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
    Ok(rows.into_iter().map(TargetRecord::from).collect())
}

pub(crate) async fn role(
    pool: &AnyPool,
    target: &str,
    name: &str,
) -> Result<Option<RoleRecord>, StoreError> {
    let row: Option<RoleRow> = sqlx::query_as(
        "SELECT target, name, creation_sql, revocation_sql, max_ttl_ms FROM roles WHERE target = $1 AND name = $2",
    )
    .bind(target.to_owned())
    .bind(name.to_owned())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    Ok(row.map(RoleRecord::from))
}

pub(crate) async fn roles(pool: &AnyPool) -> Result<Vec<RoleRecord>, StoreError> {
    let rows: Vec<RoleRow> = sqlx::query_as(
        "SELECT target, name, creation_sql, revocation_sql, max_ttl_ms FROM roles ORDER BY target, name",
    )
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    Ok(rows.into_iter().map(RoleRecord::from).collect())
}

/// The policy text and its version.
pub(crate) async fn policies(pool: &AnyPool) -> Result<Option<(String, i64)>, StoreError> {
    sqlx::query_as("SELECT text, version FROM policies WHERE id = 1")
        .fetch_optional(pool)
        .await
        .map_err(unavailable)
}

/// The target, role and policy text of a decision, from the database, in one round trip.
pub(crate) async fn decision_inputs(
    pool: &AnyPool,
    target: &str,
    role: &str,
) -> Result<Option<(TargetRecord, RoleRecord, Option<String>)>, StoreError> {
    let row: Option<DecisionRow> = sqlx::query_as(
        "SELECT r.target AS target, r.name AS name, r.creation_sql AS creation_sql, \
         r.revocation_sql AS revocation_sql, r.max_ttl_ms AS max_ttl_ms, t.kind AS kind, \
         t.url AS url, t.created_at AS created_at, \
         (SELECT text FROM policies WHERE id = 1) AS policy_text \
         FROM roles r JOIN targets t ON t.name = r.target WHERE r.target = $1 AND r.name = $2",
    )
    .bind(target.to_owned())
    .bind(role.to_owned())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    Ok(row.map(DecisionRow::into_inputs))
}
