//! The one place that reads the wall clock. Everything else gets time from a [`Clock`], so tests
//! can move time by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use mayfly_core::Timestamp;
use mayfly_core::time::duration_to_ms;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        #[expect(
            clippy::disallowed_methods,
            reason = "the one place that reads the clock"
        )]
        let now = std::time::SystemTime::now();
        now.duration_since(std::time::UNIX_EPOCH)
            .map(Timestamp::after_epoch)
            .unwrap_or(Timestamp::EPOCH)
    }
}

/// A clock that moves only when told to. Starts at the real time so tokens and certificates made
/// with it look ordinary.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(SystemClock.now().unix_ms())))
    }

    pub fn advance(&self, duration: std::time::Duration) {
        self.0.fetch_add(duration_to_ms(duration), Ordering::SeqCst);
    }

    pub fn set(&self, at: Timestamp) {
        self.0.store(at.unix_ms(), Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_ms(self.0.load(Ordering::SeqCst))
    }
}

/// The store's clock, for brokers sharing one store: the wall clock plus an offset measured
/// against the store (`Store::clock_ms`), refreshed by [`StoreClock::sync`]. Lease times then come
/// from one clock, whichever node reads them.
#[derive(Debug, Clone, Default)]
pub struct StoreClock {
    offset_ms: Arc<AtomicI64>,
}

impl StoreClock {
    /// Measures the offset: the store's time against the midpoint of the round trip, from the
    /// quickest of three round trips (as NTP does: a round trip slowed by a busy pool or network
    /// has the widest error, at most half of it).
    pub async fn sync(
        &self,
        store: &dyn mayfly_store::Store,
    ) -> Result<i64, mayfly_store::StoreError> {
        let mut best: Option<(i64, i64)> = None;
        for _ in 0..3 {
            let before = SystemClock.now().unix_ms();
            let store_ms = store.clock_ms().await?;
            let after = SystemClock.now().unix_ms();
            let round_trip = after - before;
            if best.is_none_or(|(quickest, _)| round_trip < quickest) {
                best = Some((round_trip, store_ms - (before + after) / 2));
            }
        }
        let offset = best.map_or(0, |(_, offset)| offset);
        self.offset_ms.store(offset, Ordering::SeqCst);
        Ok(offset)
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }
}

impl Clock for StoreClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_ms(SystemClock.now().unix_ms().saturating_add(self.offset_ms()))
    }
}
