//! [`StoreError`]: what can go wrong in the store, named after what happened. Foreign errors
//! (sqlx, rusqlite, I/O) are kept as boxed sources, never in a variant's type.

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable")]
    Unavailable(#[source] BoxError),
    #[error("the store holds data it cannot read: {0}")]
    Corrupt(String),
    #[error("store url `{0}` is not supported: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// A list of store URLs that cannot be one store (mixed or non-PostgreSQL URLs, empty).
    #[error("store urls: {0}")]
    UrlList(String),
    #[error("store migration failed")]
    Migration(#[source] BoxError),
    #[error(
        "another broker is using this SQLite store (it holds `{0}`): stop it first, or run several brokers on one PostgreSQL store"
    )]
    InUse(String),
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A database error as the store reports it: the store is unavailable.
pub(crate) fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}
