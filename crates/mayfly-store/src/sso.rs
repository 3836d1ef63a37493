//! SQL for single sign-on (OpenID Connect): the providers, the identities bound to users (issuer
//! and `sub`), and the logins in progress (a flow's `state`, the CLI's one-time code), each used
//! once: consuming one is a `DELETE` that must find it.

use mayfly_core::Timestamp;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::error::{StoreError, unavailable};
use crate::identity::{create_user, insert_session};
use crate::records::{Applied, JwtConfigRecord, SessionRecord, SsoPendingRecord, UserRecord};
use crate::rows::{JwtConfigRow, UserRow};
use crate::secrets::put_secrets;

/// [`crate::Change::PutSsoProvider`].
pub(crate) async fn put_provider(
    c: &mut AnyConnection,
    name: &str,
    config: &serde_json::Value,
    secret: &(String, Vec<u8>),
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    sqlx::query(
        "INSERT INTO sso_providers (name, config) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET config = $2",
    )
    .bind(name.to_owned())
    .bind(config.to_string())
    .execute(&mut *c)
    .await?;
    put_secrets(c, std::slice::from_ref(secret), at).await?;
    Ok(Applied::Done)
}

/// [`crate::Change::DeleteSsoProvider`].
pub(crate) async fn delete_provider(
    c: &mut AnyConnection,
    name: &str,
    secret_path: &str,
) -> Result<Applied, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM sso_providers WHERE name = $1")
        .bind(name.to_owned())
        .execute(&mut *c)
        .await?;
    if deleted.rows_affected() == 0 {
        return Ok(Applied::Conflict(format!("no SSO provider `{name}`")));
    }
    sqlx::query("DELETE FROM secrets WHERE path = $1")
        .bind(secret_path.to_owned())
        .execute(&mut *c)
        .await?;
    Ok(Applied::Done)
}

/// [`crate::Change::PutSsoPending`].
pub(crate) async fn put_pending(
    c: &mut AnyConnection,
    pending: &SsoPendingRecord,
    purge_before: Timestamp,
) -> Result<Applied, sqlx::Error> {
    sqlx::query("DELETE FROM sso_pending WHERE expires_at < $1")
        .bind(purge_before.unix_ms())
        .execute(&mut *c)
        .await?;
    insert_pending(c, pending).await?;
    Ok(Applied::Done)
}

async fn insert_pending(
    c: &mut AnyConnection,
    pending: &SsoPendingRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sso_pending (key_hash, kind, blob, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(pending.key_hash.clone())
    .bind(pending.kind.clone())
    .bind(pending.blob.clone())
    .bind(pending.expires_at.unix_ms())
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn consume(c: &mut AnyConnection, key_hash: &[u8], kind: &str) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM sso_pending WHERE key_hash = $1 AND kind = $2")
        .bind(key_hash.to_vec())
        .bind(kind.to_owned())
        .execute(&mut *c)
        .await?;
    Ok(deleted.rows_affected() == 1)
}

/// [`crate::Change::ConsumeSsoPending`].
pub(crate) async fn consume_pending(
    c: &mut AnyConnection,
    key_hash: &[u8],
    kind: &str,
    session: Option<&SessionRecord>,
) -> Result<Applied, sqlx::Error> {
    if !consume(c, key_hash, kind).await? {
        return Ok(Applied::Conflict(format!("the {kind} was already used")));
    }
    if let Some(session) = session {
        if let mayfly_core::Principal::User { id, .. } = &session.principal {
            let enabled = sqlx::query("SELECT 1 FROM users WHERE id = $1 AND disabled = 0")
                .bind(id.clone())
                .fetch_optional(&mut *c)
                .await?;
            if enabled.is_none() {
                return Ok(Applied::Conflict("the user is disabled".into()));
            }
        }
        insert_session(c, session).await?;
    }
    Ok(Applied::Done)
}

/// What [`crate::Change::SsoSignIn`] does, in one transaction.
pub(crate) struct SignIn<'a> {
    pub key_hash: &'a [u8],
    pub issuer: &'a str,
    pub subject: &'a str,
    pub user: &'a UserRecord,
    pub new_user: bool,
    pub session: Option<&'a SessionRecord>,
    pub code: Option<&'a SsoPendingRecord>,
}

/// [`crate::Change::SsoSignIn`].
pub(crate) async fn sign_in(
    c: &mut AnyConnection,
    sign_in: SignIn<'_>,
) -> Result<Applied, sqlx::Error> {
    if !consume(c, sign_in.key_hash, "flow").await? {
        return Ok(Applied::Conflict("the login flow was already used".into()));
    }
    let user = sign_in.user;
    if sign_in.new_user {
        let bound = sqlx::query("SELECT 1 FROM sso_identities WHERE issuer = $1 AND subject = $2")
            .bind(sign_in.issuer.to_owned())
            .bind(sign_in.subject.to_owned())
            .fetch_optional(&mut *c)
            .await?;
        if bound.is_some() {
            return Ok(Applied::Conflict(
                "this identity was bound to a user meanwhile; log in again".into(),
            ));
        }
        if let Applied::Conflict(_) = create_user(c, user, &[]).await? {
            return Ok(Applied::Conflict(format!(
                "a user named `{}` already exists and is not this identity's: single sign-on does not take it over",
                user.username
            )));
        }
        sqlx::query(
            "INSERT INTO sso_identities (issuer, subject, user_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(sign_in.issuer.to_owned())
        .bind(sign_in.subject.to_owned())
        .bind(user.id.clone())
        .bind(user.created_at.unix_ms())
        .execute(&mut *c)
        .await?;
    } else {
        let groups = serde_json::to_string(&user.groups).unwrap_or_else(|_| "[]".into());
        let updated = sqlx::query(
            "UPDATE users SET groups = $1 WHERE id = $2 AND disabled = 0 AND id IN \
             (SELECT user_id FROM sso_identities WHERE issuer = $3 AND subject = $4)",
        )
        .bind(groups)
        .bind(user.id.clone())
        .bind(sign_in.issuer.to_owned())
        .bind(sign_in.subject.to_owned())
        .execute(&mut *c)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(Applied::Conflict("the user is disabled".into()));
        }
    }
    if let Some(session) = sign_in.session {
        insert_session(c, session).await?;
    }
    if let Some(code) = sign_in.code {
        insert_pending(c, code).await?;
    }
    Ok(Applied::Done)
}

pub(crate) async fn provider(
    pool: &AnyPool,
    name: &str,
) -> Result<Option<JwtConfigRecord>, StoreError> {
    let row: Option<JwtConfigRow> =
        sqlx::query_as("SELECT name, config FROM sso_providers WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?;
    row.map(JwtConfigRecord::try_from).transpose()
}

pub(crate) async fn providers(pool: &AnyPool) -> Result<Vec<JwtConfigRecord>, StoreError> {
    let rows: Vec<JwtConfigRow> =
        sqlx::query_as("SELECT name, config FROM sso_providers ORDER BY name")
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
    rows.into_iter().map(JwtConfigRecord::try_from).collect()
}

pub(crate) async fn pending(
    pool: &AnyPool,
    key_hash: &[u8],
    kind: &str,
) -> Result<Option<SsoPendingRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT key_hash, kind, blob, expires_at FROM sso_pending WHERE key_hash = $1 AND kind = $2",
    )
    .bind(key_hash.to_vec())
    .bind(kind.to_owned())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let corrupt = |_| StoreError::Corrupt("an SSO pending row is malformed".into());
    Ok(Some(SsoPendingRecord {
        key_hash: row.try_get("key_hash").map_err(corrupt)?,
        kind: row.try_get("kind").map_err(corrupt)?,
        blob: row.try_get("blob").map_err(corrupt)?,
        expires_at: Timestamp::from_unix_ms(row.try_get("expires_at").map_err(corrupt)?),
    }))
}

/// The user an identity at an issuer is bound to, if any.
pub(crate) async fn identity_user(
    pool: &AnyPool,
    issuer: &str,
    subject: &str,
) -> Result<Option<UserRecord>, StoreError> {
    let row: Option<UserRow> = sqlx::query_as(
        "SELECT u.id, u.username, u.password_hash, u.groups, u.disabled, u.totp_last_step, u.created_at \
         FROM sso_identities i JOIN users u ON u.id = i.user_id WHERE i.issuer = $1 AND i.subject = $2",
    )
    .bind(issuer.to_owned())
    .bind(subject.to_owned())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    row.map(UserRecord::try_from).transpose()
}
