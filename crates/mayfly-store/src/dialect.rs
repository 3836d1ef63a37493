//! [`Dialect`]: which database a store runs on, and the placeholders of the statements built at
//! run time. SQL text is shared between the two; where it differs, the module that owns the
//! statement matches on [`Dialect`], and nothing outside the store does (the server reads
//! [`crate::Capabilities`] instead).

use sqlx::AnyConnection;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect of a store URL (`sqlite:…`, `postgres://…`, `postgresql://…`), if supported.
    pub(crate) fn of_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }

    /// A query that returns the database's clock as `ms`, in unix milliseconds.
    pub(crate) fn clock_sql(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "SELECT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT) AS ms"
            }
            Dialect::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS ms"
            }
        }
    }
}

/// Rows per multi-row `INSERT` (well under SQLite's and PostgreSQL's limits on bound values).
pub(crate) const ROWS_PER_INSERT: usize = 100;

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

/// `$1, $2, …, $n`: the placeholders of an `IN (…)` list of `n` values.
pub(crate) fn list_placeholders(n: usize) -> String {
    let placeholders: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    placeholders.join(", ")
}
