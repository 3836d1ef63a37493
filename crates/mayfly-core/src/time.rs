//! Time as a value: milliseconds since the Unix epoch, passed into every decision.

use std::fmt;
use std::time::Duration;

/// A point in time, in milliseconds since the Unix epoch (UTC). The store keeps it as `BIGINT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(0);

    pub fn from_unix_ms(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch, never negative.
    pub fn unix_secs(self) -> u64 {
        u64::try_from(self.0.div_euclid(1000)).unwrap_or(0)
    }

    pub fn saturating_add(self, duration: Duration) -> Timestamp {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// The time from `self` until `later`, zero if `later` is not after `self`.
    pub fn until(self, later: Timestamp) -> Duration {
        let ms = later.0.saturating_sub(self.0);
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_unix_ms(1_500);
        assert_eq!(t.unix_secs(), 1);
        assert_eq!(t.saturating_add(Duration::from_secs(2)).unix_ms(), 3_500);
        assert_eq!(t.until(Timestamp::from_unix_ms(1_000)), Duration::ZERO);
        assert_eq!(
            t.until(Timestamp::from_unix_ms(2_000)),
            Duration::from_millis(500)
        );
        assert_eq!(Timestamp::from_unix_ms(-5).unix_secs(), 0);
    }
}
