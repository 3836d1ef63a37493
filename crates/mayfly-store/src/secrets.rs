//! SQL for the seal and the encrypted secrets: the changes that write them and the reads. The
//! store sees ciphertext only; encryption happens before it is called.

use mayfly_core::Timestamp;
use sqlx::{AnyConnection, AnyPool};

use crate::error::{StoreError, unavailable};
use crate::records::{Applied, SealRecord};
use crate::rows::SealRow;

/// [`crate::Change::Initialize`].
pub(crate) async fn initialize(
    c: &mut AnyConnection,
    seal: &SealRecord,
    secrets: &[(String, Vec<u8>)],
) -> Result<Applied, sqlx::Error> {
    let exists = sqlx::query("SELECT 1 FROM seal WHERE id = 1")
        .fetch_optional(&mut *c)
        .await?;
    if exists.is_some() {
        return Ok(Applied::Conflict(
            "the broker is already initialized".into(),
        ));
    }
    sqlx::query(
        "INSERT INTO seal (id, seal_id, n_shares, threshold, kcv, wrapped_keyring, setup_code_hash, created_at) \
         VALUES (1, $1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(seal.seal_id.clone())
    .bind(seal.n_shares)
    .bind(seal.threshold)
    .bind(seal.kcv.clone())
    .bind(seal.wrapped_keyring.clone())
    .bind(seal.setup_code_hash.clone())
    .bind(seal.created_at.unix_ms())
    .execute(&mut *c)
    .await?;
    put_secrets(c, secrets, seal.created_at).await?;
    Ok(Applied::Done)
}

/// [`crate::Change::PutSecret`].
pub(crate) async fn put_secret(
    c: &mut AnyConnection,
    path: &str,
    blob: &[u8],
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    put_secrets(c, &[(path.to_owned(), blob.to_vec())], at).await?;
    Ok(Applied::Done)
}

/// [`crate::Change::CreateSecret`].
pub(crate) async fn create_secret(
    c: &mut AnyConnection,
    path: &str,
    blob: &[u8],
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let created = sqlx::query(
        "INSERT INTO secrets (path, blob, updated_at) VALUES ($1, $2, $3) ON CONFLICT (path) DO NOTHING",
    )
    .bind(path.to_owned())
    .bind(blob.to_vec())
    .bind(at.unix_ms())
    .execute(&mut *c)
    .await?;
    if created.rows_affected() != 1 {
        return Ok(Applied::Conflict(format!("`{path}` exists already")));
    }
    Ok(Applied::Done)
}

/// Writes (or replaces) encrypted secrets, each under its path.
pub(crate) async fn put_secrets(
    c: &mut AnyConnection,
    secrets: &[(String, Vec<u8>)],
    at: Timestamp,
) -> Result<(), sqlx::Error> {
    for (path, blob) in secrets {
        sqlx::query(
            "INSERT INTO secrets (path, blob, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (path) DO UPDATE SET blob = $2, updated_at = $3",
        )
        .bind(path.clone())
        .bind(blob.clone())
        .bind(at.unix_ms())
        .execute(&mut *c)
        .await?;
    }
    Ok(())
}

pub(crate) async fn seal(pool: &AnyPool) -> Result<Option<SealRecord>, StoreError> {
    let row: Option<SealRow> = sqlx::query_as(
        "SELECT seal_id, n_shares, threshold, kcv, wrapped_keyring, setup_code_hash, created_at FROM seal WHERE id = 1",
    )
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    Ok(row.map(SealRecord::from))
}

pub(crate) async fn secret(pool: &AnyPool, path: &str) -> Result<Option<Vec<u8>>, StoreError> {
    sqlx::query_scalar("SELECT blob FROM secrets WHERE path = $1")
        .bind(path.to_owned())
        .fetch_optional(pool)
        .await
        .map_err(unavailable)
}

/// The paths of the secrets under `prefix` (those that start with it), in order.
pub(crate) async fn secret_paths(pool: &AnyPool, prefix: &str) -> Result<Vec<String>, StoreError> {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    let paths: Vec<String> =
        sqlx::query_scalar("SELECT path FROM secrets WHERE path LIKE $1 ESCAPE '\\' ORDER BY path")
            .bind(pattern)
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
    // SQLite's LIKE ignores the case of ASCII letters; the prefix is exact.
    Ok(paths
        .into_iter()
        .filter(|path| path.starts_with(prefix))
        .collect())
}
