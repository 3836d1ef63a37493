//! The budget of failed logins per source address, kept in memory on the broker's clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use mayfly_core::Timestamp;
use mayfly_core::time::duration_to_ms;

/// Failed logins per source address: a token bucket for each (an IPv6 address by its /64, what
/// one host usually holds), refilled on the broker's clock. A login takes a token before
/// anything else is done for it, and a success gives it back, so the budget counts failures.
/// At most [`MAX_SOURCES`] buckets are kept: when full, the buckets that have filled up again
/// (as good as absent) are dropped, and if none has, new sources share one bucket, so memory
/// stays bounded and a flood from many addresses is still limited.
#[derive(Debug)]
pub struct SourceLimiter {
    buckets: Mutex<Buckets>,
    burst: u32,
    refill_ms: i64,
}

#[derive(Debug, Default)]
struct Buckets {
    by_source: HashMap<SourceKey, Bucket>,
    /// When full buckets were last dropped (unix ms): at most once per refill, since none can
    /// have filled up sooner, so a flood from new addresses does not scan the map at each call.
    swept_at_ms: Option<i64>,
}

/// Buckets kept at most (a few MiB).
pub const MAX_SOURCES: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6(u64),
    /// Calls with no known address.
    Unknown,
    /// Every new source while the map is full.
    Shared,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    n_tokens: u32,
    /// The refills up to here are counted in `n_tokens` (unix ms).
    refilled_at_ms: i64,
}

impl SourceLimiter {
    pub fn new(burst: u32, refill: Duration) -> SourceLimiter {
        SourceLimiter {
            buckets: Mutex::new(Buckets::default()),
            burst: burst.max(1),
            refill_ms: duration_to_ms(refill).max(1),
        }
    }

    /// Takes a token for a login from `source`, or says in how many seconds one comes.
    pub fn take(&self, source: Option<IpAddr>, now: Timestamp) -> Result<(), u64> {
        let now = now.unix_ms();
        let Ok(mut buckets) = self.buckets.lock() else {
            // A thread panicked holding it: refusing every login would be worse than not
            // limiting them (the name throttle and the argon2 pool still hold).
            return Ok(());
        };
        let buckets = &mut *buckets;
        let mut key = source_key(source);
        if !buckets.by_source.contains_key(&key) && buckets.by_source.len() >= MAX_SOURCES {
            let swept_lately = buckets
                .swept_at_ms
                .is_some_and(|swept| now.saturating_sub(swept) < self.refill_ms);
            if !swept_lately {
                buckets.swept_at_ms = Some(now);
                buckets
                    .by_source
                    .retain(|_, bucket| self.refilled(*bucket, now).n_tokens < self.burst);
            }
            if buckets.by_source.len() >= MAX_SOURCES {
                key = SourceKey::Shared;
            }
        }
        let full = Bucket {
            n_tokens: self.burst,
            refilled_at_ms: now,
        };
        let bucket = buckets.by_source.entry(key).or_insert(full);
        *bucket = self.refilled(*bucket, now);
        if bucket.n_tokens > 0 {
            bucket.n_tokens -= 1;
            return Ok(());
        }
        let waited = now.saturating_sub(bucket.refilled_at_ms).max(0);
        let wait_ms = u64::try_from(self.refill_ms.saturating_sub(waited)).unwrap_or(1);
        Err(wait_ms.div_ceil(1000).max(1))
    }

    /// Gives back the token of a login that succeeded.
    pub fn give_back(&self, source: Option<IpAddr>, now: Timestamp) {
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        if let Some(bucket) = buckets.by_source.get_mut(&source_key(source)) {
            *bucket = self.refilled(*bucket, now.unix_ms());
            bucket.n_tokens = bucket.n_tokens.saturating_add(1).min(self.burst);
        }
    }

    /// `bucket` with the tokens that came since it was last refilled. A clock that went back
    /// adds nothing.
    fn refilled(&self, bucket: Bucket, now_ms: i64) -> Bucket {
        let elapsed = now_ms.saturating_sub(bucket.refilled_at_ms);
        if elapsed < self.refill_ms {
            return bucket;
        }
        let n_new = elapsed / self.refill_ms;
        let n_tokens = u32::try_from(n_new)
            .unwrap_or(u32::MAX)
            .saturating_add(bucket.n_tokens);
        if n_tokens >= self.burst {
            return Bucket {
                n_tokens: self.burst,
                refilled_at_ms: now_ms,
            };
        }
        Bucket {
            n_tokens,
            refilled_at_ms: bucket
                .refilled_at_ms
                .saturating_add(n_new.saturating_mul(self.refill_ms)),
        }
    }
}

fn source_key(source: Option<IpAddr>) -> SourceKey {
    match source {
        Some(IpAddr::V4(ip)) => SourceKey::V4(u32::from(ip)),
        Some(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            Some(ip) => SourceKey::V4(u32::from(ip)),
            None => {
                let bits = u128::from(ip) >> 64;
                SourceKey::V6(u64::try_from(bits).unwrap_or(u64::MAX))
            }
        },
        None => SourceKey::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms)
    }

    #[test]
    fn a_source_gets_its_burst_then_one_per_refill_and_successes_give_back() {
        let limiter = SourceLimiter::new(3, Duration::from_secs(2));
        let one: Option<IpAddr> = "192.0.2.1".parse().ok();
        let other: Option<IpAddr> = "192.0.2.2".parse().ok();
        for _ in 0..3 {
            assert_eq!(limiter.take(one, at(0)), Ok(()));
        }
        assert_eq!(limiter.take(one, at(0)), Err(2));
        assert_eq!(limiter.take(one, at(1_500)), Err(1));
        assert_eq!(limiter.take(other, at(1_500)), Ok(()));
        assert_eq!(limiter.take(one, at(2_000)), Ok(()));
        assert_eq!(limiter.take(one, at(2_000)), Err(2));
        limiter.give_back(one, at(2_000));
        assert_eq!(limiter.take(one, at(2_000)), Ok(()));
        // Long idle: full again, never more than the burst.
        for _ in 0..3 {
            assert_eq!(limiter.take(one, at(1_000_000)), Ok(()));
        }
        assert_eq!(limiter.take(one, at(1_000_000)), Err(2));
    }

    #[test]
    fn ipv6_hosts_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let key = |text: &str| source_key(text.parse().ok());
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_eq!(key("not an address"), SourceKey::Unknown);
    }
}
