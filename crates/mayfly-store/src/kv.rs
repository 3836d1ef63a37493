//! SQL for the secret store's versioned secrets (`kv_secrets`): the changes that write, delete,
//! restore and destroy versions, and the reads. Values arrive as ciphertext; a destroyed version's
//! `blob` is set to NULL, so its ciphertext is gone from the row.

use mayfly_core::{SecretPath, Timestamp};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::error::{StoreError, unavailable};
use crate::records::{Applied, KvSecretRecord, KvVersionRecord};

/// The row's version and path; its ciphertext only if `with_blob` (the column is not read
/// otherwise).
fn record(row: &AnyRow, with_blob: bool) -> Result<KvSecretRecord, sqlx::Error> {
    let ms = |column: &str| -> Result<Option<Timestamp>, sqlx::Error> {
        Ok(row
            .try_get::<Option<i64>, _>(column)?
            .map(Timestamp::from_unix_ms))
    };
    Ok(KvSecretRecord {
        path: SecretPath {
            project: row.try_get("project")?,
            environment: row.try_get("environment")?,
            name: row.try_get("name")?,
        },
        meta: KvVersionRecord {
            version: row.try_get("version")?,
            created_at: Timestamp::from_unix_ms(row.try_get("created_at")?),
            created_by: row.try_get("created_by")?,
            deleted_at: ms("deleted_at")?,
            destroyed_at: ms("destroyed_at")?,
        },
        blob: if with_blob {
            row.try_get("blob")?
        } else {
            None
        },
    })
}

async fn highest_version(c: &mut AnyConnection, path: &SecretPath) -> Result<i64, sqlx::Error> {
    let highest: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(version) FROM kv_secrets WHERE project = $1 AND environment = $2 AND name = $3",
    )
    .bind(path.project.clone())
    .bind(path.environment.clone())
    .bind(path.name.clone())
    .fetch_one(&mut *c)
    .await?;
    Ok(highest.unwrap_or(0))
}

/// [`crate::Change::PutKvSecret`]. The row's primary key settles a race: of two writers of the
/// same version one inserts and the other conflicts.
pub(crate) async fn put(
    c: &mut AnyConnection,
    path: &SecretPath,
    version: i64,
    blob: &[u8],
    created_by: &str,
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let current = highest_version(c, path).await?;
    if version < 1 || current != version - 1 {
        return Ok(Applied::Conflict(format!(
            "the current version of `{path}` is {current}"
        )));
    }
    let done = sqlx::query(
        "INSERT INTO kv_secrets (project, environment, name, version, blob, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(path.project.clone())
    .bind(path.environment.clone())
    .bind(path.name.clone())
    .bind(version)
    .bind(blob.to_vec())
    .bind(at.unix_ms())
    .bind(created_by.to_owned())
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        let current = highest_version(c, path).await?;
        return Ok(Applied::Conflict(format!(
            "the current version of `{path}` is {current}"
        )));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::DeleteKvSecret`].
pub(crate) async fn delete(
    c: &mut AnyConnection,
    path: &SecretPath,
    version: i64,
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE kv_secrets SET deleted_at = $5 WHERE project = $1 AND environment = $2 \
         AND name = $3 AND version = $4 AND deleted_at IS NULL AND destroyed_at IS NULL",
    )
    .bind(path.project.clone())
    .bind(path.environment.clone())
    .bind(path.name.clone())
    .bind(version)
    .bind(at.unix_ms())
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(format!(
            "version {version} of `{path}` does not exist, is deleted already or was destroyed"
        )));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::UndeleteKvSecret`].
pub(crate) async fn undelete(
    c: &mut AnyConnection,
    path: &SecretPath,
    version: i64,
) -> Result<Applied, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE kv_secrets SET deleted_at = NULL WHERE project = $1 AND environment = $2 \
         AND name = $3 AND version = $4 AND deleted_at IS NOT NULL AND destroyed_at IS NULL",
    )
    .bind(path.project.clone())
    .bind(path.environment.clone())
    .bind(path.name.clone())
    .bind(version)
    .execute(&mut *c)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(format!(
            "version {version} of `{path}` is not deleted, or was destroyed"
        )));
    }
    Ok(Applied::Done)
}

/// [`crate::Change::DestroyKvSecret`]: the ciphertext is overwritten with NULL.
pub(crate) async fn destroy(
    c: &mut AnyConnection,
    path: &SecretPath,
    versions: &[i64],
    at: Timestamp,
) -> Result<Applied, sqlx::Error> {
    for &version in versions {
        let done = sqlx::query(
            "UPDATE kv_secrets SET blob = NULL, destroyed_at = COALESCE(destroyed_at, $5) \
             WHERE project = $1 AND environment = $2 AND name = $3 AND version = $4",
        )
        .bind(path.project.clone())
        .bind(path.environment.clone())
        .bind(path.name.clone())
        .bind(version)
        .bind(at.unix_ms())
        .execute(&mut *c)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(Applied::Conflict(format!(
                "version {version} of `{path}` does not exist"
            )));
        }
    }
    Ok(Applied::Done)
}

/// One version of `path` (`None`: the highest), with its ciphertext.
pub(crate) async fn version(
    pool: &AnyPool,
    path: &SecretPath,
    version: Option<i64>,
) -> Result<Option<KvSecretRecord>, StoreError> {
    let sql = match version {
        Some(_) => {
            "SELECT project, environment, name, version, blob, created_at, created_by, deleted_at, \
             destroyed_at FROM kv_secrets WHERE project = $1 AND environment = $2 AND name = $3 \
             AND version = $4"
        }
        None => {
            "SELECT project, environment, name, version, blob, created_at, created_by, deleted_at, \
             destroyed_at FROM kv_secrets WHERE project = $1 AND environment = $2 AND name = $3 \
             ORDER BY version DESC LIMIT 1"
        }
    };
    let mut query = sqlx::query(sql)
        .bind(path.project.clone())
        .bind(path.environment.clone())
        .bind(path.name.clone());
    if let Some(version) = version {
        query = query.bind(version);
    }
    let row = query.fetch_optional(pool).await.map_err(unavailable)?;
    row.as_ref()
        .map(|row| record(row, true))
        .transpose()
        .map_err(unavailable)
}

/// Every version of `path`, oldest first, without ciphertext.
pub(crate) async fn history(
    pool: &AnyPool,
    path: &SecretPath,
) -> Result<Vec<KvVersionRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT project, environment, name, version, created_at, created_by, \
         deleted_at, destroyed_at FROM kv_secrets WHERE project = $1 AND environment = $2 \
         AND name = $3 ORDER BY version",
    )
    .bind(path.project.clone())
    .bind(path.environment.clone())
    .bind(path.name.clone())
    .fetch_all(pool)
    .await
    .map_err(unavailable)?;
    rows.iter()
        .map(|row| record(row, false).map(|r| r.meta))
        .collect::<Result<_, _>>()
        .map_err(unavailable)
}

/// The highest version of each secret of `project/environment`, in order of name, with its
/// ciphertext only if `with_blobs`.
pub(crate) async fn latest(
    pool: &AnyPool,
    project: &str,
    environment: &str,
    with_blobs: bool,
) -> Result<Vec<KvSecretRecord>, StoreError> {
    let sql = if with_blobs {
        "SELECT s.project, s.environment, s.name, s.version, s.created_at, s.created_by, \
         s.deleted_at, s.destroyed_at, s.blob FROM kv_secrets s \
         WHERE s.project = $1 AND s.environment = $2 AND s.version = (SELECT MAX(t.version) \
         FROM kv_secrets t WHERE t.project = s.project AND t.environment = s.environment \
         AND t.name = s.name) ORDER BY s.name"
    } else {
        "SELECT s.project, s.environment, s.name, s.version, s.created_at, s.created_by, \
         s.deleted_at, s.destroyed_at FROM kv_secrets s \
         WHERE s.project = $1 AND s.environment = $2 AND s.version = (SELECT MAX(t.version) \
         FROM kv_secrets t WHERE t.project = s.project AND t.environment = s.environment \
         AND t.name = s.name) ORDER BY s.name"
    };
    let rows = sqlx::query(sql)
        .bind(project.to_owned())
        .bind(environment.to_owned())
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    rows.iter()
        .map(|row| record(row, with_blobs))
        .collect::<Result<_, _>>()
        .map_err(unavailable)
}
