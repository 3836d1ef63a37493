//! Store failover: a store given as several PostgreSQL URLs (the servers of one replicated
//! cluster, the primary first) is only ever connected to the one that accepts writes, and follows
//! it when another is promoted.
//!
//! How, in sqlx's terms: one pool, whose connect options are those of the server in use.
//! - Every new connection asks `pg_is_in_recovery()` (the pool's `after_connect`); a standby's
//!   is refused, so nothing is ever read from or written to a server that does not take writes.
//! - A watcher task keeps one connection of its own to the server in use and asks it every
//!   [`CHECK_EVERY`] whether it still accepts writes (and at once when a commit failed or a
//!   connection was refused). When it does not, or does not answer, the watcher asks every server
//!   of the list (round robin from the one in use, with a back-off that doubles up to
//!   [`BACKOFF_MAX`]) until one accepts writes — among several, the one on the newest timeline
//!   (a promoted standby's is newer than its old primary's, should that come back as a primary)
//!   — and points the pool at it (`Pool::set_connect_options`). Connections made before the
//!   switch are closed rather than handed out (the pool's `before_acquire`).
//! - A call in flight when the server goes away fails with [`StoreError::Unavailable`]: its
//!   transaction dies with the server's connection and was not committed, or was committed
//!   whole (a commit whose answer was lost: see docs/store.md). Calls that wait for a connection
//!   meanwhile get one on the new server, or fail the same way after the pool's acquire timeout.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, AnyPool, Connection};
use tokio::sync::Notify;

use crate::dialect::Dialect;
use crate::error::StoreError;

/// How often the watcher asks the server in use whether it still accepts writes.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long one look at a server may take: connecting, authenticating and one query.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a round over the list in which no server accepted writes, doubling from
/// [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long opening a store waits for one of its servers to accept writes (a broker started
/// while a standby is being promoted).
const OPEN_WAIT: Duration = Duration::from_secs(30);

/// Whether a server accepts writes, and its timeline, in one round trip. `pg_walfile_name`
/// names the current timeline in its first 8 hex digits; it cannot be asked during recovery.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery() AS standby, \
     CASE WHEN pg_is_in_recovery() THEN CAST(0 AS BIGINT) \
     ELSE CAST(CAST(('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)) AS bit(32)) AS BIGINT) END AS timeline";

/// A store's URLs as one text: a single URL, or several separated by commas, each starting with
/// its scheme (`postgres://a/db,postgres://b/db`). A comma not followed by a scheme is part of
/// the URL it is in (a password may hold one).
pub fn split_urls(text: &str) -> Vec<String> {
    let mut urls = Vec::new();
    let mut start = 0;
    for (at, _) in text.match_indices(',') {
        let rest = text.get(at + 1..).unwrap_or_default().trim_start();
        if Dialect::of_url(rest).is_some() {
            urls.push(text.get(start..at).unwrap_or_default().trim().to_owned());
            start = at + 1;
        }
    }
    urls.push(text.get(start..).unwrap_or_default().trim().to_owned());
    urls
}

/// A URL as errors may show it: its scheme only (the rest may hold a password).
pub(crate) fn redact_url(url: &str) -> String {
    url.split_once("://")
        .map_or_else(|| "…".to_owned(), |(scheme, _)| format!("{scheme}://…"))
}

/// A server as logs and errors may name it: `host:port`, never its user or password.
pub(crate) fn server_name(options: &AnyConnectOptions) -> String {
    let url = &options.database_url;
    format!(
        "{}:{}",
        url.host_str().unwrap_or("localhost"),
        url.port().unwrap_or(5432)
    )
}

/// The servers of a store given as a list, which of them is in use, and what wakes the watcher.
pub(crate) struct Servers {
    options: Vec<AnyConnectOptions>,
    names: Vec<String>,
    current: AtomicUsize,
    /// When the pool last moved to another server, in ms after `born` (0: never). A pooled
    /// connection older than that was made to the previous server.
    born: Instant,
    switched_at_ms: AtomicU64,
    n_switches: AtomicU64,
    wake: Notify,
}

/// Names the servers only: their URLs may hold a password.
impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Servers")
            .field("names", &self.names)
            .field("current", &self.current_name())
            .field("n_switches", &self.n_switches())
            .finish_non_exhaustive()
    }
}

/// What one look at a server found.
enum Found {
    /// It accepts writes, on this timeline; the connection is kept for the watcher's checks.
    Primary {
        timeline: i64,
        connection: AnyConnection,
    },
    Standby,
    Unreachable(String),
}

impl Servers {
    /// The servers of `urls` (PostgreSQL only: the list is one replicated cluster).
    pub(crate) fn new(urls: &[String]) -> Result<Servers, StoreError> {
        let mut options = Vec::with_capacity(urls.len());
        for url in urls {
            if Dialect::of_url(url) != Some(Dialect::Postgres) {
                return Err(StoreError::UrlList(format!(
                    "`{}` is not a postgres:// URL: a list of store URLs names the PostgreSQL servers of one cluster, the primary first",
                    redact_url(url)
                )));
            }
            options.push(
                AnyConnectOptions::from_str(url)
                    .map_err(|_| StoreError::UnsupportedUrl(redact_url(url)))?,
            );
        }
        if options.is_empty() {
            return Err(StoreError::UrlList("the list is empty".into()));
        }
        let names: Vec<String> = options.iter().map(server_name).collect();
        Ok(Servers {
            options,
            names,
            current: AtomicUsize::new(0),
            born: Instant::now(),
            switched_at_ms: AtomicU64::new(0),
            n_switches: AtomicU64::new(0),
            wake: Notify::new(),
        })
    }

    /// The server in use, as `host:port`.
    pub(crate) fn current_name(&self) -> String {
        self.names
            .get(self.current.load(Ordering::SeqCst))
            .cloned()
            .unwrap_or_default()
    }

    /// How many times the pool has moved to another server since the store was opened.
    pub(crate) fn n_switches(&self) -> u64 {
        self.n_switches.load(Ordering::SeqCst)
    }

    /// Asks the watcher to check the server in use now rather than at its next round.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether a pooled connection of age `age` was made before the last switch (to the
    /// previous server): it is closed instead of being handed out.
    pub(crate) fn predates_switch(&self, age: Duration) -> bool {
        let switched_at = self.switched_at_ms.load(Ordering::SeqCst);
        if switched_at == 0 {
            return false;
        }
        let since_switch = duration_ms(self.born.elapsed()).saturating_sub(switched_at);
        duration_ms(age) > since_switch
    }

    /// Finds the server that accepts writes, waiting up to [`OPEN_WAIT`]; makes it the one in
    /// use. Returns its connect options and the watcher's connection to it.
    pub(crate) async fn find_at_open(
        &self,
    ) -> Result<(AnyConnectOptions, AnyConnection), StoreError> {
        let deadline = Instant::now() + OPEN_WAIT;
        let mut backoff = BACKOFF_FIRST;
        loop {
            match self.look_around().await {
                Ok((index, connection)) => {
                    if let Some(options) = self.options.get(index) {
                        self.current.store(index, Ordering::SeqCst);
                        return Ok((options.clone(), connection));
                    }
                }
                Err(findings) if Instant::now() + backoff >= deadline => {
                    return Err(StoreError::Unavailable(
                        format!("no server of the store accepts writes: {findings}").into(),
                    ));
                }
                Err(findings) => {
                    tracing::warn!(servers = %findings, "no server of the store accepts writes yet; asking again");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One round over the list, from the server in use: the index of the server that accepts
    /// writes (the newest timeline among several) and a connection to it; or what was found.
    async fn look_around(&self) -> Result<(usize, AnyConnection), String> {
        let start = self.current.load(Ordering::SeqCst);
        let n = self.options.len();
        let mut best: Option<(i64, usize, AnyConnection)> = None;
        let mut findings = Vec::with_capacity(n);
        let mut n_primaries = 0;
        for step in 0..n {
            let index = (start + step) % n;
            let (Some(options), Some(name)) = (self.options.get(index), self.names.get(index))
            else {
                continue;
            };
            match probe(options).await {
                Found::Primary {
                    timeline,
                    connection,
                } => {
                    findings.push(format!("{name} accepts writes (timeline {timeline})"));
                    n_primaries += 1;
                    if best.as_ref().is_none_or(|(newest, ..)| timeline > *newest) {
                        if let Some((.., older)) = best.take() {
                            let _ = older.close().await;
                        }
                        best = Some((timeline, index, connection));
                    } else {
                        let _ = connection.close().await;
                    }
                }
                Found::Standby => findings.push(format!("{name} is a standby")),
                Found::Unreachable(why) => findings.push(format!("{name} is unreachable ({why})")),
            }
        }
        if n_primaries > 1 {
            tracing::error!(servers = %findings.join("; "), "several servers of the store accept writes: using the newest timeline; stop the others (docs/store.md)");
        }
        match best {
            Some((_, index, connection)) => Ok((index, connection)),
            None => Err(findings.join("; ")),
        }
    }

    /// Makes server `index` the one in use: new connections go to it, older ones are closed.
    fn switch_to(&self, index: usize, pool: &AnyPool) {
        let Some(options) = self.options.get(index) else {
            return;
        };
        let from = self.current_name();
        pool.set_connect_options(options.clone());
        self.current.store(index, Ordering::SeqCst);
        self.switched_at_ms
            .store(duration_ms(self.born.elapsed()).max(1), Ordering::SeqCst);
        self.n_switches.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(from = %from, to = %self.current_name(), "the store moved to the server that accepts writes");
    }
}

/// The watcher: checks the server in use every [`CHECK_EVERY`] (or when woken) over a
/// connection of its own, and when it no longer accepts writes finds the one that does and
/// points the pool at it. Ends when the pool is closed.
pub(crate) async fn watch(servers: Arc<Servers>, pool: AnyPool, first: AnyConnection) {
    let mut connection = Some(first);
    let mut backoff = BACKOFF_FIRST;
    loop {
        tokio::select! {
            () = pool.close_event() => return,
            () = servers.wake.notified() => {}
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        if let Some(kept) = connection.as_mut() {
            match tokio::time::timeout(PROBE_TIMEOUT, accepts_writes(kept)).await {
                Ok(Ok(true)) => continue,
                Ok(Ok(false)) => {
                    tracing::warn!(server = %servers.current_name(), "the store's server no longer accepts writes (a standby now)");
                }
                Ok(Err(error)) => {
                    tracing::warn!(server = %servers.current_name(), error = %error, "the store's server went away");
                }
                Err(_) => {
                    tracing::warn!(server = %servers.current_name(), "the store's server does not answer");
                }
            }
        }
        // It may be dead: dropped without waiting for a goodbye.
        connection = None;
        match servers.look_around().await {
            Ok((index, found)) => {
                if index != servers.current.load(Ordering::SeqCst) {
                    servers.switch_to(index, &pool);
                }
                connection = Some(found);
                backoff = BACKOFF_FIRST;
            }
            Err(findings) => {
                tracing::warn!(servers = %findings, "no server of the store accepts writes; asking again");
                tokio::select! {
                    () = pool.close_event() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                servers.wake();
            }
        }
    }
}

/// Whether the server behind `connection` accepts writes (is not in recovery).
pub(crate) async fn accepts_writes(connection: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(connection)
        .await?;
    Ok(!standby)
}

/// Connects to one server and asks whether it accepts writes and on which timeline.
async fn probe(options: &AnyConnectOptions) -> Found {
    let looked = tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut connection = AnyConnection::connect_with(options).await?;
        let (standby, timeline): (bool, i64) =
            sqlx::query_as(PROBE_SQL).fetch_one(&mut connection).await?;
        Ok::<_, sqlx::Error>((standby, timeline, connection))
    })
    .await;
    match looked {
        Ok(Ok((false, timeline, connection))) => Found::Primary {
            timeline,
            connection,
        },
        Ok(Ok((true, _, connection))) => {
            let _ = connection.close().await;
            Found::Standby
        }
        Ok(Err(error)) => Found::Unreachable(one_line(&error.to_string())),
        Err(_) => Found::Unreachable(format!("no answer in {} s", PROBE_TIMEOUT.as_secs())),
    }
}

/// The error sqlx's pool gets from `after_connect` for a connection to a standby: the pool
/// closes it and connects again (to the server the watcher has found by then).
pub(crate) fn standby_refused() -> sqlx::Error {
    sqlx::Error::Protocol(
        "the server is a standby (in recovery): the store writes to the primary only".into(),
    )
}

fn one_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expect: &[&str]) {
        assert_eq!(split_urls(text), expect, "{text}");
    }

    #[test]
    fn a_text_of_urls_splits_where_a_new_url_starts() {
        check("sqlite:///x.db?mode=rwc", &["sqlite:///x.db?mode=rwc"]);
        check("postgres://a/m", &["postgres://a/m"]);
        check(
            "postgres://u:p@a:5432/m,postgres://u:p@b:5433/m",
            &["postgres://u:p@a:5432/m", "postgres://u:p@b:5433/m"],
        );
        check(
            "postgres://a/m , postgresql://b/m,postgres://c/m",
            &["postgres://a/m", "postgresql://b/m", "postgres://c/m"],
        );
        // A comma that no URL follows is part of the URL it is in.
        check("postgres://u:p,w@a/m", &["postgres://u:p,w@a/m"]);
        check(
            "postgres://u:p,w@a/m,postgres://u:p,w@b/m",
            &["postgres://u:p,w@a/m", "postgres://u:p,w@b/m"],
        );
        check("", &[""]);
    }

    #[test]
    fn a_list_is_of_postgresql_servers_only() {
        let urls = |list: &[&str]| list.iter().map(|u| (*u).to_owned()).collect::<Vec<_>>();
        assert!(Servers::new(&urls(&["postgres://a/m", "postgres://b/m"])).is_ok());
        for bad in [
            &["postgres://a/m", "sqlite:///x.db"][..],
            &["mysql://a/m", "postgres://b/m"][..],
            &[][..],
        ] {
            assert!(
                matches!(Servers::new(&urls(bad)), Err(StoreError::UrlList(_))),
                "{bad:?}"
            );
        }
        let servers = Servers::new(&urls(&[
            "postgres://u:secret@db1:6543/m",
            "postgres://db2/m",
        ]))
        .unwrap();
        assert_eq!(servers.current_name(), "db1:6543");
        assert_eq!(servers.names, ["db1:6543", "db2:5432"]);
        assert!(!servers.predates_switch(Duration::from_secs(3600)));
    }
}
