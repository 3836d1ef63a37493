//! SQL for auto-unseal (migration 0017): the root key wrapped under each key-encryption key, by
//! key id, and the count of live grants past due, which tells how much a sealed broker leaves
//! undone. The store sees wraps only, never the root key or a key-encryption key.

use mayfly_core::Timestamp;
use sqlx::{AnyConnection, AnyPool};

use crate::error::{StoreError, unavailable};
use crate::records::{Applied, SealWrapRecord};

/// [`crate::Change::PutSealWrap`]: writes (or replaces) the wrap under `wrap.key_id`. Conflicts
/// when the broker is not initialized: a wrap belongs to a seal.
pub(crate) async fn put_seal_wrap(
    c: &mut AnyConnection,
    wrap: &SealWrapRecord,
) -> Result<Applied, sqlx::Error> {
    let initialized = sqlx::query("SELECT 1 FROM seal WHERE id = 1")
        .fetch_optional(&mut *c)
        .await?;
    if initialized.is_none() {
        return Ok(Applied::Conflict("the broker is not initialized".into()));
    }
    sqlx::query(
        "INSERT INTO seal_wraps (key_id, kind, wrapped, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (key_id) DO UPDATE SET kind = $2, wrapped = $3, created_at = $4",
    )
    .bind(wrap.key_id.clone())
    .bind(wrap.kind.clone())
    .bind(wrap.wrapped.clone())
    .bind(wrap.created_at.unix_ms())
    .execute(&mut *c)
    .await?;
    Ok(Applied::Done)
}

#[derive(sqlx::FromRow)]
struct SealWrapRow {
    key_id: String,
    kind: String,
    wrapped: Vec<u8>,
    created_at: i64,
}

pub(crate) async fn seal_wrap(
    pool: &AnyPool,
    key_id: &str,
) -> Result<Option<SealWrapRecord>, StoreError> {
    let row: Option<SealWrapRow> = sqlx::query_as(
        "SELECT key_id, kind, wrapped, created_at FROM seal_wraps WHERE key_id = $1",
    )
    .bind(key_id.to_owned())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    Ok(row.map(|row| SealWrapRecord {
        key_id: row.key_id,
        kind: row.kind,
        wrapped: row.wrapped,
        created_at: Timestamp::from_unix_ms(row.created_at),
    }))
}

/// Live grants (`issuing`, `active`, `revoking`, `failed`) whose next step was due at or before
/// `now`: a range of the `next_attempt_at` index, so only the rows past due are read. An intent
/// its issuer still holds (`issuing`, never claimed by a claim round: epoch 0, before its
/// deadline) is being issued, not past due.
pub(crate) async fn past_due_grants(pool: &AnyPool, now: Timestamp) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM grants WHERE next_attempt_at <= $1 \
         AND state IN ('issuing', 'active', 'revoking', 'failed') \
         AND NOT (state = 'issuing' AND epoch = 0 AND claimed_until > $1)",
    )
    .bind(now.unix_ms())
    .fetch_one(pool)
    .await
    .map_err(unavailable)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
