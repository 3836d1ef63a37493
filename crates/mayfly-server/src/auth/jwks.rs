//! The broker's cache of issuers' JWKS documents, one entry per URL with its own fetch lock: one
//! fetch per URL is in flight, logins that need it wait for that one, and a slow issuer holds up
//! no other issuer's logins. Keys are refetched after 5 minutes, on an unknown `kid` at most every
//! 30 s; a failed fetch is the answer for 5 s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::Timestamp;
use mayfly_crypto::jwt::IssuerKeys;
use tokio::sync::Mutex;

use crate::clock::Clock;

/// Keys older than this are fetched again at the next login that needs them.
const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// An unknown `kid` fetches the JWKS again at most this often (from the last attempt), so made-up
/// kids cannot make the broker hammer an issuer.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// How long a failed fetch stands as the answer before the issuer is asked again.
const JWKS_FAILURE_TTL: Duration = Duration::from_secs(5);
/// The issuer's keys cannot be had now (the reason is in the broker's log only).
#[derive(Debug, Clone, Copy)]
pub struct KeysUnavailable;

/// Every JWKS URL's entry. The map's lock is held only to find the entry.
#[derive(Default)]
pub struct JwksCache {
    entries: Mutex<HashMap<String, CachedKeys>>,
}

/// What the broker knows of one JWKS URL: its entry in the [`JwksCache`]. The map's lock is
/// held only to find the entry; a fetch holds the entry's own lock.
#[derive(Default)]
pub struct CachedKeys(Arc<JwksEntry>);

#[derive(Default)]
struct JwksEntry {
    /// Held for a moment at a time, never across a fetch.
    state: Mutex<JwksState>,
    /// Held for the whole fetch: one fetch of this URL in flight.
    fetching: Mutex<()>,
}

/// Times are on the broker's clock, not `Instant`: the limits are rules of the broker's time that
/// a test steps past with its `ManualClock`, not waits in real time.
#[derive(Default)]
struct JwksState {
    keys: Option<Arc<IssuerKeys>>,
    fetched_at: Option<Timestamp>,
    /// The last fetch, whether or not it worked.
    attempted_at: Option<Timestamp>,
    /// The last fetch failed.
    failed: bool,
}

enum Cached {
    Keys(Arc<IssuerKeys>),
    Unavailable,
    /// Fetch, and meanwhile these (stale) keys, if any, may serve other logins.
    Fetch(Option<Arc<IssuerKeys>>),
}

impl JwksState {
    /// What the cache answers at `now`; `force` is a login whose `kid` the keys do not know.
    fn cached(&self, now: Timestamp, force: bool) -> Cached {
        let within =
            |at: Option<Timestamp>, limit: Duration| at.is_some_and(|at| at.until(now) < limit);
        if self.failed && within(self.attempted_at, JWKS_FAILURE_TTL) {
            // Whatever we had before the failure, or nothing.
            return match &self.keys {
                Some(keys) => Cached::Keys(keys.clone()),
                None => Cached::Unavailable,
            };
        }
        let Some(keys) = &self.keys else {
            return Cached::Fetch(None);
        };
        let fresh = if force {
            within(self.attempted_at, JWKS_MIN_REFETCH)
        } else {
            within(self.fetched_at, JWKS_MAX_AGE)
        };
        if fresh {
            return Cached::Keys(keys.clone());
        }
        Cached::Fetch(Some(keys.clone()))
    }
}

impl JwksCache {
    /// The keys at `url`, from the cache or fetched; `force` is a login whose `kid` the cached
    /// keys do not know.
    pub async fn keys(
        &self,
        http: &reqwest::Client,
        clock: &dyn Clock,
        url: &str,
        force: bool,
    ) -> Result<Arc<IssuerKeys>, KeysUnavailable> {
        let entry = {
            let mut cache = self.entries.lock().await;
            cache.entry(url.to_owned()).or_default().0.clone()
        };
        let stale = match entry.state.lock().await.cached(clock.now(), force) {
            Cached::Keys(keys) => return Ok(keys),
            Cached::Unavailable => return Err(KeysUnavailable),
            Cached::Fetch(stale) => stale,
        };
        let _fetching = match (entry.fetching.try_lock(), stale) {
            (Ok(fetching), _) => fetching,
            // Another login is refreshing keys we have: they serve this one meanwhile (only a new
            // `kid` needs the new document).
            (Err(_), Some(stale)) if !force => return Ok(stale),
            (Err(_), _) => entry.fetching.lock().await,
        };
        // Whoever held the fetch lock before us has just fetched: their outcome is ours too.
        match entry.state.lock().await.cached(clock.now(), force) {
            Cached::Keys(keys) => return Ok(keys),
            Cached::Unavailable => return Err(KeysUnavailable),
            Cached::Fetch(_) => {}
        }
        let fetched = fetch_jwks(http, url).await;
        let now = clock.now();
        let mut state = entry.state.lock().await;
        state.attempted_at = Some(now);
        match fetched {
            Ok(keys) => {
                let keys = Arc::new(keys);
                state.keys = Some(keys.clone());
                state.fetched_at = Some(now);
                state.failed = false;
                Ok(keys)
            }
            Err(reason) => {
                tracing::warn!(url = %url, reason = %reason, "cannot fetch JWKS");
                state.failed = true;
                state.keys.clone().ok_or(KeysUnavailable)
            }
        }
    }
}

/// The most the broker reads of an issuer's JWKS or discovery document.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<IssuerKeys, String> {
    let text = fetch_document(http, url).await?;
    IssuerKeys::from_jwks(&text).map_err(|e| e.to_string())
}

/// Fetches a small UTF-8 document (a JWKS, a discovery document) with the broker's HTTP client
/// (10 s timeout, no redirects), at most [`MAX_DOCUMENT_BYTES`].
pub(crate) async fn fetch_document(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("read failed: {e}"))?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err("the document is larger than 256 KiB".into());
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| "the document is not UTF-8".to_owned())
}
