//! The proxy's rate limits: a token bucket per route and per (route, principal), refilled on the
//! broker's clock. At most [`MAX_BUCKETS`] are kept: when full, the buckets that have filled up
//! again (as good as absent) are dropped, and if none has, new keys share one bucket per route,
//! so memory stays bounded and a flood of new principals is still limited.

use std::collections::HashMap;
use std::sync::Mutex;

use mayfly_api::ProxyRate;
use mayfly_core::Timestamp;

/// Buckets kept at most.
pub const MAX_BUCKETS: usize = 65_536;

#[derive(Debug, Default)]
pub struct ProxyLimits {
    buckets: Mutex<HashMap<BucketKey, Bucket>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum BucketKey {
    Route(String),
    Principal {
        route: String,
        principal: String,
    },
    /// Every new principal of a route while the map is full.
    Shared(String),
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens, in millionths.
    n_micro: u64,
    refilled_at_ms: i64,
}

const MICRO: u64 = 1_000_000;

impl ProxyLimits {
    /// Takes a token from the principal's bucket on the route and one from the route's, or says
    /// in how many whole seconds both would have one (none is taken then).
    pub fn take(
        &self,
        route: &str,
        principal: &str,
        per_principal: ProxyRate,
        per_route: ProxyRate,
        now: Timestamp,
    ) -> Result<(), u64> {
        let now = now.unix_ms();
        let Ok(mut buckets) = self.buckets.lock() else {
            // A thread panicked holding it: refuse rather than forward unlimited.
            return Err(1);
        };
        let mut principal_key = BucketKey::Principal {
            route: route.to_owned(),
            principal: principal.to_owned(),
        };
        if !buckets.contains_key(&principal_key) && buckets.len() >= MAX_BUCKETS {
            buckets.retain(|key, bucket| match key {
                BucketKey::Route(_) => true,
                _ => refilled(*bucket, per_principal, now).n_micro < capacity(per_principal),
            });
            if buckets.len() >= MAX_BUCKETS {
                principal_key = BucketKey::Shared(route.to_owned());
            }
        }
        let route_key = BucketKey::Route(route.to_owned());
        let principal_bucket = current(&buckets, &principal_key, per_principal, now);
        let route_bucket = current(&buckets, &route_key, per_route, now);
        let wait = wait_ms(principal_bucket, per_principal).max(wait_ms(route_bucket, per_route));
        if wait > 0 {
            return Err(wait.div_ceil(1000).max(1));
        }
        buckets.insert(
            principal_key,
            Bucket {
                n_micro: principal_bucket.n_micro.saturating_sub(MICRO),
                ..principal_bucket
            },
        );
        buckets.insert(
            route_key,
            Bucket {
                n_micro: route_bucket.n_micro.saturating_sub(MICRO),
                ..route_bucket
            },
        );
        Ok(())
    }

    /// Forgets a route's buckets (it was deleted or changed).
    pub fn forget(&self, route: &str) {
        if let Ok(mut buckets) = self.buckets.lock() {
            buckets.retain(|key, _| match key {
                BucketKey::Route(name) | BucketKey::Shared(name) => name != route,
                BucketKey::Principal { route: name, .. } => name != route,
            });
        }
    }
}

fn capacity(rate: ProxyRate) -> u64 {
    u64::from(rate.burst.max(1)).saturating_mul(MICRO)
}

/// Tokens gained per millisecond, in millionths.
fn micro_per_ms(rate: ProxyRate) -> u64 {
    // `per_second` is validated finite and positive; at least one millionth per ms.
    let per_ms = rate.per_second * 1000.0;
    if per_ms.is_finite() && per_ms >= 1.0 {
        per_ms as u64
    } else {
        1
    }
}

fn current(
    buckets: &HashMap<BucketKey, Bucket>,
    key: &BucketKey,
    rate: ProxyRate,
    now: i64,
) -> Bucket {
    match buckets.get(key) {
        Some(bucket) => refilled(*bucket, rate, now),
        None => Bucket {
            n_micro: capacity(rate),
            refilled_at_ms: now,
        },
    }
}

fn refilled(bucket: Bucket, rate: ProxyRate, now: i64) -> Bucket {
    let elapsed = u64::try_from(now.saturating_sub(bucket.refilled_at_ms)).unwrap_or(0);
    Bucket {
        n_micro: bucket
            .n_micro
            .saturating_add(elapsed.saturating_mul(micro_per_ms(rate)))
            .min(capacity(rate)),
        refilled_at_ms: now.max(bucket.refilled_at_ms),
    }
}

/// Milliseconds until the bucket holds a whole token (0: it does).
fn wait_ms(bucket: Bucket, rate: ProxyRate) -> u64 {
    if bucket.n_micro >= MICRO {
        return 0;
    }
    (MICRO - bucket.n_micro).div_ceil(micro_per_ms(rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_per_principal_and_per_route() {
        let limits = ProxyLimits::default();
        let slow = ProxyRate {
            per_second: 1.0,
            burst: 3,
        };
        let wide = ProxyRate {
            per_second: 0.001,
            burst: 5,
        };
        let at = |ms: i64| Timestamp::from_unix_ms(1_000_000 + ms);
        for _ in 0..3 {
            assert_eq!(limits.take("r", "alice", slow, wide, at(0)), Ok(()));
        }
        assert_eq!(limits.take("r", "alice", slow, wide, at(0)), Err(1));
        assert_eq!(limits.take("r", "alice", slow, wide, at(999)), Err(1));
        assert_eq!(limits.take("r", "alice", slow, wide, at(1000)), Ok(()));
        // Another principal has its own bucket, but the route's is shared: 4 taken of 5.
        assert_eq!(limits.take("r", "bob", slow, wide, at(1000)), Ok(()));
        assert!(limits.take("r", "carol", slow, wide, at(1000)).is_err());
        // Another route is not touched.
        assert_eq!(limits.take("s", "alice", slow, wide, at(1000)), Ok(()));
        limits.forget("r");
        assert_eq!(limits.take("r", "alice", slow, wide, at(1000)), Ok(()));
    }

    #[test]
    fn slow_rates_say_how_long_to_wait() {
        let limits = ProxyLimits::default();
        let rate = ProxyRate {
            per_second: 0.1,
            burst: 1,
        };
        let now = Timestamp::from_unix_ms(5_000_000);
        assert_eq!(limits.take("r", "a", rate, rate, now), Ok(()));
        assert_eq!(limits.take("r", "a", rate, rate, now), Err(10));
    }
}
