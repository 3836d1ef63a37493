//! SQL for the secure proxy's routes: the changes that put and delete one and the reads. A route
//! is kept as JSON the server validates (its injections name secret paths, never values).

use sqlx::{AnyConnection, AnyPool, Row};

use mayfly_core::Timestamp;

use crate::error::{StoreError, unavailable};
use crate::records::{Applied, ProxyRouteRecord};

/// [`crate::Change::PutProxyRoute`]: adds the route, or replaces its configuration (keeping when
/// it was created).
pub(crate) async fn put(
    c: &mut AnyConnection,
    route: &ProxyRouteRecord,
) -> Result<Applied, sqlx::Error> {
    sqlx::query(
        "INSERT INTO proxy_routes (name, config, created_at, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET config = $2, updated_at = $4",
    )
    .bind(route.name.clone())
    .bind(route.config.clone())
    .bind(route.created_at.unix_ms())
    .bind(route.updated_at.unix_ms())
    .execute(&mut *c)
    .await?;
    Ok(Applied::Done)
}

/// [`crate::Change::DeleteProxyRoute`]. Conflicts if there is no such route.
pub(crate) async fn delete(c: &mut AnyConnection, name: &str) -> Result<Applied, sqlx::Error> {
    let done = sqlx::query("DELETE FROM proxy_routes WHERE name = $1")
        .bind(name.to_owned())
        .execute(&mut *c)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(Applied::Conflict(format!("no proxy route named `{name}`")));
    }
    Ok(Applied::Done)
}

fn record(row: &sqlx::any::AnyRow) -> Result<ProxyRouteRecord, StoreError> {
    Ok(ProxyRouteRecord {
        name: row.try_get("name").map_err(unavailable)?,
        config: row.try_get("config").map_err(unavailable)?,
        created_at: Timestamp::from_unix_ms(row.try_get("created_at").map_err(unavailable)?),
        updated_at: Timestamp::from_unix_ms(row.try_get("updated_at").map_err(unavailable)?),
    })
}

pub(crate) async fn route(
    pool: &AnyPool,
    name: &str,
) -> Result<Option<ProxyRouteRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT name, config, created_at, updated_at FROM proxy_routes WHERE name = $1",
    )
    .bind(name.to_owned())
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    row.as_ref().map(record).transpose()
}

pub(crate) async fn routes(pool: &AnyPool) -> Result<Vec<ProxyRouteRecord>, StoreError> {
    let rows =
        sqlx::query("SELECT name, config, created_at, updated_at FROM proxy_routes ORDER BY name")
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
    rows.iter().map(record).collect()
}
