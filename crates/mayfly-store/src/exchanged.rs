//! SQL for the tokens issued by token exchange: the change that records one (its `jti`, session
//! and lifetime, never the token) and the read introspection makes.

use mayfly_core::Timestamp;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::error::{StoreError, unavailable};
use crate::records::{Applied, ExchangedTokenRecord, SessionRecord};
use crate::rows::SessionRow;

/// [`crate::Change::RecordExchangedToken`].
pub(crate) async fn record(
    c: &mut AnyConnection,
    token: &ExchangedTokenRecord,
    agents: &[String],
) -> Result<Applied, sqlx::Error> {
    if let Some(refused) = crate::agents::see(c, agents, token.issued_at).await? {
        return Ok(refused);
    }
    let done = sqlx::query(
        "INSERT INTO exchanged_tokens (jti, session_id, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(token.jti.clone())
    .bind(token.session_id.clone())
    .bind(token.issued_at.unix_ms())
    .bind(token.expires_at.unix_ms())
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict("the token id is taken".into()));
    }
    Ok(Applied::Done)
}

/// The token with this `jti` and its session as it is now.
pub(crate) async fn exchanged_token(
    pool: &AnyPool,
    jti: &str,
) -> Result<Option<(ExchangedTokenRecord, Option<SessionRecord>)>, StoreError> {
    let row = sqlx::query(
        "SELECT jti, session_id, issued_at, expires_at FROM exchanged_tokens WHERE jti = $1",
    )
    .bind(jti.to_owned())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let token = ExchangedTokenRecord {
        jti: row.try_get("jti").map_err(unavailable)?,
        session_id: row.try_get("session_id").map_err(unavailable)?,
        issued_at: Timestamp::from_unix_ms(row.try_get("issued_at").map_err(unavailable)?),
        expires_at: Timestamp::from_unix_ms(row.try_get("expires_at").map_err(unavailable)?),
    };
    let session: Option<SessionRow> = sqlx::query_as(
        "SELECT s.id, s.token_hash, s.principal_kind, s.principal_name, s.principal_role, s.user_id, \
                s.created_at, s.expires_at, s.revoked_at, s.factor_at, u.groups, u.disabled, r.name AS bound_role \
         FROM sessions s LEFT JOIN users u ON u.id = s.user_id \
         LEFT JOIN jwt_roles r ON r.name = s.principal_role WHERE s.id = $1",
    )
    .bind(token.session_id.clone())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    let session = match session {
        Some(row) => row.into_session()?,
        None => None,
    };
    Ok(Some((token, session)))
}

/// Deletes the tokens that expired before `before`.
pub(crate) async fn purge(pool: &AnyPool, before: Timestamp) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM exchanged_tokens WHERE expires_at < $1")
        .bind(before.unix_ms())
        .execute(pool)
        .await
        .map_err(unavailable)?;
    Ok(done.rows_affected())
}
