//! Time as a value: milliseconds since the Unix epoch, passed into every decision.
//!
//! An instant is a [`Timestamp`]; a length of time is a [`std::time::Duration`]. Arithmetic between
//! them saturates (`timestamp + duration`, `timestamp - duration`, [`Timestamp::until`],
//! [`Timestamp::since`]) and never panics. Where a length of time is kept as a number (the store's
//! `BIGINT` milliseconds columns, the API's whole seconds), [`duration_to_ms`],
//! [`duration_from_ms`] and [`duration_from_secs`] are the only conversions.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, in milliseconds since the Unix epoch (UTC). The store keeps it as `BIGINT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(0);

    pub fn from_unix_ms(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    /// `secs` whole seconds after the epoch (saturating).
    pub fn from_unix_secs(secs: u64) -> Timestamp {
        Timestamp::EPOCH + Duration::from_secs(secs)
    }

    /// The instant `since_epoch` after the epoch (saturating): what a system clock's
    /// `duration_since(UNIX_EPOCH)` gives.
    pub fn after_epoch(since_epoch: Duration) -> Timestamp {
        Timestamp::EPOCH + since_epoch
    }

    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch, never negative.
    pub fn unix_secs(self) -> u64 {
        u64::try_from(self.0.div_euclid(1000)).unwrap_or(0)
    }

    /// Whole seconds since the epoch, signed (before the epoch is negative, rounded down): what
    /// X.509's `notBefore`/`notAfter` take.
    pub fn unix_secs_signed(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// The hour of the day in UTC, `0..=23`.
    pub fn utc_hour(self) -> u8 {
        u8::try_from(self.unix_secs() / 3600 % 24).unwrap_or(0)
    }

    /// The day of the week in UTC, ISO numbered: 1 (Monday) ..= 7 (Sunday).
    pub fn iso_weekday(self) -> u8 {
        // 1970-01-01 was a Thursday (4).
        let days = self.unix_secs() / 86_400;
        u8::try_from((days + 3) % 7 + 1).unwrap_or(1)
    }

    pub fn saturating_add(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_to_ms(duration)))
    }

    pub fn saturating_sub(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_to_ms(duration)))
    }

    /// The time from `self` until `later`, zero if `later` is not after `self`.
    pub fn until(self, later: Timestamp) -> Duration {
        duration_from_ms(later.0.saturating_sub(self.0))
    }

    /// The time from `earlier` until `self`, zero if `earlier` is not before `self`.
    pub fn since(self, earlier: Timestamp) -> Duration {
        earlier.until(self)
    }
}

/// `timestamp + duration`, saturating.
impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, duration: Duration) -> Timestamp {
        self.saturating_add(duration)
    }
}

/// `timestamp - duration`, saturating.
impl Sub<Duration> for Timestamp {
    type Output = Timestamp;

    fn sub(self, duration: Duration) -> Timestamp {
        self.saturating_sub(duration)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A duration as the store keeps it: whole milliseconds (rounded down) in a signed 64-bit
/// column, at most `i64::MAX`.
pub fn duration_to_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A duration read back from the store's milliseconds; a negative number is zero.
pub fn duration_from_ms(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A duration given in whole seconds by the API or a configuration file, where the number is
/// signed; a negative number is zero.
pub fn duration_from_secs(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_unix_ms(1_500);
        assert_eq!(t.unix_secs(), 1);
        assert_eq!(t.saturating_add(Duration::from_secs(2)).unix_ms(), 3_500);
        assert_eq!(t.until(Timestamp::from_unix_ms(1_000)), Duration::ZERO);
        assert_eq!(t.until(Timestamp::from_unix_ms(2_000)), MS(500));
        assert_eq!(Timestamp::from_unix_ms(-5).unix_secs(), 0);
    }

    #[track_caller]
    fn check_add(at: i64, duration: Duration, plus: i64, minus: i64) {
        let t = Timestamp::from_unix_ms(at);
        assert_eq!((t + duration).unix_ms(), plus, "{at} + {duration:?}");
        assert_eq!((t - duration).unix_ms(), minus, "{at} - {duration:?}");
        assert_eq!(t.saturating_add(duration), t + duration);
        assert_eq!(t.saturating_sub(duration), t - duration);
    }

    #[test]
    fn timestamp_and_duration() {
        check_add(1_000, MS(0), 1_000, 1_000);
        check_add(1_000, MS(1), 1_001, 999);
        check_add(0, Duration::from_secs(86_400), 86_400_000, -86_400_000);
        check_add(1_000, Duration::from_nanos(999_999), 1_000, 1_000);
        check_add(i64::MAX - 1, MS(5), i64::MAX, i64::MAX - 6);
        check_add(i64::MIN + 1, MS(5), i64::MIN + 6, i64::MIN);
        check_add(0, Duration::MAX, i64::MAX, -i64::MAX);
        check_add(-1, Duration::MAX, i64::MAX - 1, i64::MIN);
    }

    #[test]
    fn between_instants() {
        let a = Timestamp::from_unix_ms(10_000);
        let b = Timestamp::from_unix_ms(12_500);
        assert_eq!(a.until(b), MS(2_500));
        assert_eq!(b.since(a), MS(2_500));
        assert_eq!(b.until(a), Duration::ZERO);
        assert_eq!(a.since(b), Duration::ZERO);
        assert_eq!(a.until(a), Duration::ZERO);
        let (low, high) = (
            Timestamp::from_unix_ms(i64::MIN),
            Timestamp::from_unix_ms(i64::MAX),
        );
        assert_eq!(low.until(high), MS(i64::MAX as u64));
        assert_eq!(high.since(low), MS(i64::MAX as u64));
    }

    #[test]
    fn seconds() {
        for (ms, secs, signed) in [
            (0, 0, 0),
            (999, 0, 0),
            (1_000, 1, 1),
            (1_700_000_000_999, 1_700_000_000, 1_700_000_000),
            (-1, 0, -1),
            (-1_000, 0, -1),
            (-1_001, 0, -2),
        ] {
            let t = Timestamp::from_unix_ms(ms);
            assert_eq!(t.unix_secs(), secs, "{ms}");
            assert_eq!(t.unix_secs_signed(), signed, "{ms}");
        }
        assert_eq!(Timestamp::from_unix_secs(7).unix_ms(), 7_000);
        assert_eq!(Timestamp::from_unix_secs(u64::MAX).unix_ms(), i64::MAX);
        assert_eq!(
            Timestamp::after_epoch(Duration::new(3, 999_999_999)).unix_ms(),
            3_999
        );
        assert_eq!(Timestamp::after_epoch(Duration::MAX).unix_ms(), i64::MAX);
    }

    #[test]
    fn hour_and_weekday() {
        // (instant, UTC hour, ISO weekday)
        for (ms, hour, weekday) in [
            (0, 0, 4),                           // 1970-01-01 00:00, a Thursday
            (86_400_000 - 1, 23, 4),             // its last millisecond
            (86_400_000, 0, 5),                  // Friday
            (4 * 86_400_000, 0, 1),              // 1970-01-05, a Monday
            (10 * 86_400_000 + 3_600_000, 1, 7), // 1970-01-11 01:00, a Sunday
            (1_767_225_600_000, 0, 4),           // 2026-01-01 00:00, a Thursday
            (1_767_225_600_000 + 13 * 3_600_000 + 59 * 60_000, 13, 4),
            (1_764_669_600_000, 10, 2), // 2025-12-02 10:00, a Tuesday
            (-5, 0, 4),                 // before the epoch counts as the epoch
        ] {
            let t = Timestamp::from_unix_ms(ms);
            assert_eq!((t.utc_hour(), t.iso_weekday()), (hour, weekday), "{ms}");
        }
    }

    #[test]
    fn stored_durations() {
        for (duration, ms) in [
            (Duration::ZERO, 0),
            (MS(1), 1),
            (Duration::from_micros(1_999), 1),
            (Duration::from_secs(3_600), 3_600_000),
            (MS(i64::MAX as u64), i64::MAX),
            (Duration::MAX, i64::MAX),
        ] {
            assert_eq!(duration_to_ms(duration), ms, "{duration:?}");
        }
        for (ms, duration) in [
            (0, Duration::ZERO),
            (1_500, MS(1_500)),
            (-1, Duration::ZERO),
            (i64::MIN, Duration::ZERO),
            (i64::MAX, MS(i64::MAX as u64)),
        ] {
            assert_eq!(duration_from_ms(ms), duration, "{ms}");
        }
        assert_eq!(duration_from_secs(90), Duration::from_secs(90));
        assert_eq!(duration_from_secs(-90), Duration::ZERO);
    }
}
