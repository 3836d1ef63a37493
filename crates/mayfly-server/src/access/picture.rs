//! The dashboard's picture of access (issue 21, "Pictures"): standing vs ephemeral access at a
//! glance. [`Broker::access_picture`] reads the store once ([`mayfly_store::Store::access_picture`],
//! narrow reads bounded by the window) and [`AccessPicture::from_rows`] turns the rows into the
//! series the console draws, pure and tested on its own:
//!
//! - **counts now**: grants in state `active`, requests in state `pending` (what `GET /v1/grants`
//!   and `GET /v1/requests?pending=true` list with those states for the same caller: for anyone
//!   but an admin, the pending requests are their own and those they may approve), and the
//!   standing credentials the orphan sweep found in the window;
//! - **active grants per target**: per bucket, how many grants of each target were live at some
//!   time in it (a grant lives from its creation until it is revoked; one not revoked yet, until
//!   now), so that a five-minute grant shows even in an hour-wide bucket; the five busiest
//!   targets, the rest summed as one series;
//! - **credential lifetimes**: a histogram of the TTLs granted (expiry minus creation, renewals
//!   included) of the grants created in the window, with the largest maximum the policy allowed
//!   per role (`@max_ttl` lowering the role's maximum, as recorded on each request);
//! - **revocation lag**: per bucket of expiry, p50 and p99 of the time from a grant's expiry to
//!   the proof that it is gone (its verification; its revocation where not verified yet), for the
//!   grants the expiry engine revoked because they expired; grants past their expiry whose
//!   credential may still exist are counted apart (`overdue`);
//! - **time to approval**: per bucket of approval, p50 and p99 of the time from a request to the
//!   approval that allowed it, for requests that needed approvals;
//! - **standing credentials found**: the orphan sweep's findings per bucket (should be zero).
//!
//! Who sees what: admins see everyone's grants and requests; anyone else sees their own only
//! (their counts, series and percentiles are computed over their own grants and requests; the
//! pending count adds the requests they may approve, as the API lists them). The
//! sweep's findings are the broker's, not a principal's: everyone sees their number (never which
//! target or login), since "no standing credentials" is the promise the dashboard shows.

use std::collections::HashMap;
use std::time::Duration;

use mayfly_core::Timestamp;
use mayfly_core::time::duration_to_ms;
use mayfly_store::{LiveSpan, PictureQuery, PictureRows};

use crate::access::principal_key;
use crate::auth::Caller;
use crate::error::BrokerError;
use crate::state::Broker;

/// Targets drawn as series of their own; the rest are summed as one.
pub const MAX_TARGET_SERIES: usize = 5;
/// Bins of the lifetimes histogram, at most.
pub const MAX_LIFETIME_BINS: u64 = 12;
/// The name of the series that sums the targets beyond [`MAX_TARGET_SERIES`].
pub const OTHER_TARGETS: &str = "other targets";

/// Which stretch of time a picture shows, ending now: its length and how many buckets it is cut
/// into. Validated when made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    span: Duration,
    buckets: u32,
}

impl Window {
    /// The dashboard's default: the last 24 hours in 24 buckets of an hour.
    pub const DAY: Window = Window {
        span: Duration::from_secs(24 * 3600),
        buckets: 24,
    };
    pub const MIN_SPAN: Duration = Duration::from_secs(10 * 60);
    pub const MAX_SPAN: Duration = Duration::from_secs(90 * 24 * 3600);
    pub const MAX_BUCKETS: u32 = 96;

    /// A window of `span` (10 minutes to 90 days, whole minutes) in `buckets` (1 to 96).
    pub fn new(span: Duration, buckets: u32) -> Result<Window, BrokerError> {
        if span < Window::MIN_SPAN || span > Window::MAX_SPAN || !span.as_secs().is_multiple_of(60)
        {
            return Err(BrokerError::BadRequest(
                "window: between 10 minutes and 90 days, in whole minutes".into(),
            ));
        }
        if buckets == 0 || buckets > Window::MAX_BUCKETS {
            return Err(BrokerError::BadRequest("buckets: between 1 and 96".into()));
        }
        Ok(Window { span, buckets })
    }

    pub fn span(&self) -> Duration {
        self.span
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// This window ending at `now`, as buckets of whole milliseconds.
    pub fn ending(&self, now: Timestamp) -> Frame {
        let buckets = usize::try_from(self.buckets).unwrap_or(1).max(1);
        let bucket_ms = (duration_to_ms(self.span) / i64::from(self.buckets.max(1))).max(1);
        let span_ms = bucket_ms.saturating_mul(i64::from(self.buckets.max(1)));
        Frame {
            from: Timestamp::from_unix_ms(now.unix_ms().saturating_sub(span_ms)),
            bucket_ms,
            buckets,
        }
    }
}

/// A window placed in time: `buckets` buckets of `bucket_ms` from `from`, the last ending now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub from: Timestamp,
    pub bucket_ms: i64,
    pub buckets: usize,
}

impl Frame {
    /// The end of the window (now, when it was made).
    pub fn to(&self) -> Timestamp {
        Timestamp::from_unix_ms(self.bucket_start_ms(self.buckets))
    }

    /// Where bucket `i` starts, in unix milliseconds.
    pub fn bucket_start_ms(&self, i: usize) -> i64 {
        let i = i64::try_from(i).unwrap_or(i64::MAX);
        self.from
            .unix_ms()
            .saturating_add(self.bucket_ms.saturating_mul(i))
    }

    /// The bucket of `at`, if it falls in the window.
    pub fn bucket_of(&self, at: Timestamp) -> Option<usize> {
        let offset = at.unix_ms().checked_sub(self.from.unix_ms())?;
        if offset < 0 || self.bucket_ms <= 0 {
            return None;
        }
        usize::try_from(offset / self.bucket_ms)
            .ok()
            .filter(|&i| i < self.buckets)
    }
}

/// Whose grants and requests a picture counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PictureScope {
    /// An admin's: everyone's.
    Everyone,
    /// Anyone else's: the caller's own.
    Own,
}

/// The dashboard's numbers and series (see the module's doc for what each means).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessPicture {
    pub frame: Frame,
    pub scope: PictureScope,
    pub counts: Counts,
    /// Per target (the busiest first, then [`OTHER_TARGETS`]), how many grants were live at some
    /// time in each bucket.
    pub active: Vec<TargetSeries>,
    pub lifetimes: Lifetimes,
    /// Per bucket of expiry.
    pub revocation_lag: Vec<Percentiles>,
    /// Grants past their expiry whose credential may still exist (not revoked yet) now.
    pub overdue: u64,
    /// Per bucket of approval.
    pub approval_time: Vec<Percentiles>,
    /// The orphan sweep's findings per bucket.
    pub standing: Vec<u64>,
}

/// The counts at the top of the dashboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Grants in state `active` now.
    pub active_grants: u64,
    /// Requests in state `pending` now (for anyone but an admin: its own, and those it may
    /// approve).
    pub pending_requests: u64,
    /// Standing credentials (logins no live grant knows) the orphan sweep found in the window.
    pub standing_found: u64,
}

/// One target's values, one per bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSeries {
    pub target: String,
    pub values: Vec<u64>,
}

/// The histogram of granted TTLs: bin `i` holds the TTLs in `[i × bin_ms, (i + 1) × bin_ms)`,
/// the last bin its upper edge too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifetimes {
    pub bin_ms: u64,
    pub counts: Vec<u64>,
    /// The policy's maximum TTL per role, for the roles of the grants counted.
    pub policy_max: Vec<RoleMax>,
}

impl Lifetimes {
    /// The largest policy maximum, if any: the histogram's marker.
    pub fn largest_max(&self) -> Option<&RoleMax> {
        self.policy_max.iter().max_by_key(|m| m.max_ms)
    }
}

/// The largest maximum TTL the policy allowed for `target/role` in the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleMax {
    pub target: String,
    pub role: String,
    pub max_ms: u64,
}

/// How many values a bucket has, and their 50th and 99th percentiles (nearest rank), in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub n: u64,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

impl Percentiles {
    /// Of `values`, each `(value, how many times)`, in any order.
    pub fn of(mut values: Vec<(u64, u64)>) -> Percentiles {
        values.sort_unstable();
        let n: u64 = values.iter().map(|(_, count)| count).sum();
        // Nearest rank: the smallest value with at least p % of the values at or below it.
        let rank = |p: u64| -> Option<u64> {
            let rank = (p * n).div_ceil(100).max(1);
            let mut seen = 0;
            values.iter().find_map(|(value, count)| {
                seen += count;
                (seen >= rank).then_some(*value)
            })
        };
        Percentiles {
            n,
            p50_ms: rank(50),
            p99_ms: rank(99),
        }
    }
}

impl Broker {
    /// The dashboard's picture of access over `window`, ending now: everyone's for an admin, the
    /// caller's own otherwise (see the module's doc). One store call of narrow reads.
    pub async fn access_picture(
        &self,
        caller: &Caller,
        window: Window,
    ) -> Result<AccessPicture, BrokerError> {
        let frame = window.ending(self.now());
        let scope = if caller.principal().is_admin() {
            PictureScope::Everyone
        } else {
            PictureScope::Own
        };
        let rows = self
            .store()
            .access_picture(&PictureQuery {
                principal: match scope {
                    PictureScope::Everyone => None,
                    PictureScope::Own => Some(caller.principal()),
                },
                from: frame.from,
                to: frame.to(),
                bucket_ms: frame.bucket_ms,
            })
            .await?;
        let mut picture = AccessPicture::from_rows(frame, scope, rows);
        if scope == PictureScope::Own {
            picture.counts.pending_requests = self.pending_visible_to(caller).await?;
        }
        Ok(picture)
    }

    /// The pending requests `GET /v1/requests?pending=true` lists for a caller who is not an
    /// admin: its own, and those it may approve (at most the listing's 500).
    async fn pending_visible_to(&self, caller: &Caller) -> Result<u64, BrokerError> {
        let me = principal_key(caller.principal());
        let mut n = 0;
        for request in self.store().requests(true, 500).await? {
            if principal_key(&request.principal) == me
                || self.may_approve(caller.principal(), &request).await?
            {
                n += 1;
            }
        }
        Ok(n)
    }
}

impl AccessPicture {
    /// The picture the rows of `frame` make.
    pub fn from_rows(frame: Frame, scope: PictureScope, rows: PictureRows) -> AccessPicture {
        let mut standing = vec![0_u64; frame.buckets];
        for (bucket, n) in &rows.orphans {
            if let Some(slot) = usize::try_from(*bucket)
                .ok()
                .and_then(|b| standing.get_mut(b))
            {
                *slot += count(*n);
            }
        }
        AccessPicture {
            counts: Counts {
                active_grants: count(rows.active_grants),
                pending_requests: count(rows.pending_requests),
                standing_found: standing.iter().sum(),
            },
            active: active_series(&frame, &rows.live_spans),
            lifetimes: lifetimes(&rows.ttl_minutes, &rows.role_max_ttl),
            revocation_lag: percentiles(&frame, &rows.revocation_lags),
            overdue: count(rows.overdue),
            approval_time: percentiles(&frame, &rows.approval_waits),
            standing,
            frame,
            scope,
        }
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// `(bucket, value, how many)` rows as percentiles per bucket.
fn percentiles(frame: &Frame, rows: &[(i64, i64, i64)]) -> Vec<Percentiles> {
    let mut buckets: Vec<Vec<(u64, u64)>> = vec![Vec::new(); frame.buckets];
    for (bucket, value, n) in rows {
        if let Some(slot) = usize::try_from(*bucket)
            .ok()
            .and_then(|b| buckets.get_mut(b))
        {
            slot.push((count(*value), count(*n)));
        }
    }
    buckets.into_iter().map(Percentiles::of).collect()
}

/// Per bucket, how many of `spans` (one target's) were live in it: a difference array over the
/// spans' first and last buckets.
fn live_per_bucket(frame: &Frame, spans: &[&LiveSpan]) -> Vec<u64> {
    let n = frame.buckets;
    let mut diff = vec![0_i64; n + 1];
    for span in spans {
        let first = usize::try_from(span.first).unwrap_or(0).min(n);
        let end = match usize::try_from(span.last) {
            Ok(last) => (last + 1).min(n),
            Err(_) => n,
        };
        if first >= end {
            continue;
        }
        if let Some(d) = diff.get_mut(first) {
            *d += span.grants;
        }
        if let Some(d) = diff.get_mut(end) {
            *d -= span.grants;
        }
    }
    let mut level = 0;
    diff.iter()
        .take(n)
        .map(|d| {
            level += d;
            count(level)
        })
        .collect()
}

fn active_series(frame: &Frame, spans: &[LiveSpan]) -> Vec<TargetSeries> {
    let mut by_target: HashMap<&str, Vec<&LiveSpan>> = HashMap::new();
    for span in spans {
        by_target
            .entry(span.target.as_str())
            .or_default()
            .push(span);
    }
    let mut series: Vec<TargetSeries> = by_target
        .into_iter()
        .map(|(target, spans)| TargetSeries {
            target: target.to_owned(),
            values: live_per_bucket(frame, &spans),
        })
        .filter(|s| s.values.iter().any(|&v| v > 0))
        .collect();
    // The busiest first (then by name, so that the order is stable).
    series.sort_by(|a, b| {
        let total = |s: &TargetSeries| s.values.iter().sum::<u64>();
        total(b)
            .cmp(&total(a))
            .then_with(|| a.target.cmp(&b.target))
    });
    if series.len() > MAX_TARGET_SERIES {
        let mut other = vec![0_u64; frame.buckets];
        for s in series.split_off(MAX_TARGET_SERIES) {
            for (sum, v) in other.iter_mut().zip(s.values) {
                *sum += v;
            }
        }
        series.push(TargetSeries {
            target: OTHER_TARGETS.to_owned(),
            values: other,
        });
    }
    series
}

/// Bin widths the histogram picks from, in seconds (whole minutes, as the store groups TTLs):
/// the smallest that needs at most [`MAX_LIFETIME_BINS`] bins.
const BIN_STEPS_SECS: [u64; 15] = [
    60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 172_800, 345_600,
    604_800,
];

fn lifetimes(ttl_minutes: &[(i64, i64)], role_max_ttl: &[(String, String, i64)]) -> Lifetimes {
    let policy_max: Vec<RoleMax> = role_max_ttl
        .iter()
        .map(|(target, role, max)| RoleMax {
            target: target.clone(),
            role: role.clone(),
            max_ms: count(*max),
        })
        .collect();
    let ttls: Vec<(u64, u64)> = ttl_minutes
        .iter()
        .map(|(minutes, n)| (count(*minutes).saturating_mul(60_000), count(*n)))
        .filter(|(_, n)| *n > 0)
        .collect();
    if ttls.is_empty() {
        return Lifetimes {
            bin_ms: 0,
            counts: Vec::new(),
            policy_max,
        };
    }
    let upper = ttls
        .iter()
        .map(|(ttl, _)| *ttl)
        .chain(policy_max.iter().map(|m| m.max_ms))
        .max()
        .unwrap_or(0)
        .max(1);
    let bin_ms = BIN_STEPS_SECS
        .iter()
        .map(|s| s * 1000)
        .find(|step| upper.div_ceil(*step) <= MAX_LIFETIME_BINS)
        .unwrap_or_else(|| upper.div_ceil(MAX_LIFETIME_BINS).max(1));
    let bins = upper.div_ceil(bin_ms).max(1);
    let mut counts = vec![0_u64; usize::try_from(bins).unwrap_or(1)];
    for (ttl, n) in &ttls {
        let i = usize::try_from((ttl / bin_ms).min(bins - 1)).unwrap_or(0);
        if let Some(slot) = counts.get_mut(i) {
            *slot += n;
        }
    }
    Lifetimes {
        bin_ms,
        counts,
        policy_max,
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "tests: a failed step should stop the test loudly"
    )]

    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn ms(at: i64) -> Timestamp {
        Timestamp::from_unix_ms(at)
    }

    /// Four buckets of an hour from 10 h.
    fn frame() -> Frame {
        Window::new(Duration::from_secs(4 * 3600), 4)
            .unwrap()
            .ending(ms(14 * HOUR))
    }

    fn span(target: &str, first: i64, last: i64, grants: i64) -> LiveSpan {
        LiveSpan {
            target: target.into(),
            first,
            last,
            grants,
        }
    }

    #[test]
    fn windows_are_validated_and_cut_into_whole_buckets() {
        assert!(Window::new(Duration::from_secs(60), 4).is_err());
        assert!(Window::new(Duration::from_secs(3601), 4).is_err());
        assert!(Window::new(Duration::from_secs(3600), 0).is_err());
        assert!(Window::new(Duration::from_secs(3600), 97).is_err());
        assert!(Window::new(Duration::from_secs(91 * 24 * 3600), 24).is_err());
        let f = frame();
        assert_eq!(
            (f.from, f.to(), f.bucket_ms),
            (ms(10 * HOUR), ms(14 * HOUR), HOUR)
        );
        assert_eq!(f.bucket_of(ms(10 * HOUR)), Some(0));
        assert_eq!(f.bucket_of(ms(14 * HOUR - 1)), Some(3));
        assert_eq!(f.bucket_of(ms(14 * HOUR)), None);
        assert_eq!(f.bucket_of(ms(10 * HOUR - 1)), None);
        // A span that does not divide evenly ends now and starts a little later.
        let odd = Window::new(Duration::from_secs(3600), 7)
            .unwrap()
            .ending(ms(7 * HOUR));
        assert_eq!(odd.to(), ms(7 * HOUR));
        assert_eq!(odd.bucket_ms, HOUR / 7);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(Percentiles::of(vec![]), Percentiles::default());
        let one = Percentiles::of(vec![(7, 1)]);
        assert_eq!((one.n, one.p50_ms, one.p99_ms), (1, Some(7), Some(7)));
        let hundred = Percentiles::of((1..=100).rev().map(|v| (v, 1)).collect());
        assert_eq!((hundred.p50_ms, hundred.p99_ms), (Some(50), Some(99)));
        let two = Percentiles::of(vec![(1000, 1), (10, 1)]);
        assert_eq!((two.p50_ms, two.p99_ms), (Some(10), Some(1000)));
        // Counted values: 98 of 10 ms, 2 of 5 s.
        let counted = Percentiles::of(vec![(5_000, 2), (10, 98)]);
        assert_eq!(
            (counted.n, counted.p50_ms, counted.p99_ms),
            (100, Some(10), Some(5_000))
        );
    }

    #[test]
    fn active_grants_are_counted_in_every_bucket_they_were_live_in() {
        let f = frame();
        let spans = vec![
            // pg: two from bucket 0 to 1, one in bucket 1 only, one live to the end.
            span("pg", 0, 1, 2),
            span("pg", 1, 1, 1),
            span("pg", 2, -1, 1),
            // redis: one in the last bucket, still live.
            span("redis", 3, -1, 1),
            // Out of range (a store that disagrees): clamped, never a panic.
            span("redis", 9, 12, 5),
        ];
        let series = active_series(&f, &spans);
        assert_eq!(series.len(), 2, "{series:?}");
        assert_eq!(series[0].target, "pg");
        assert_eq!(series[0].values, vec![2, 3, 1, 1]);
        assert_eq!(series[1].target, "redis");
        assert_eq!(series[1].values, vec![0, 0, 0, 1]);
    }

    #[test]
    fn beyond_five_targets_the_rest_is_summed() {
        let f = frame();
        let spans: Vec<LiveSpan> = (0..8)
            .map(|t| span(&format!("t{t}"), 0, 0, 8 - t))
            .collect();
        let series = active_series(&f, &spans);
        let names: Vec<&str> = series.iter().map(|s| s.target.as_str()).collect();
        assert_eq!(names, ["t0", "t1", "t2", "t3", "t4", OTHER_TARGETS]);
        assert_eq!(series[0].values, vec![8, 0, 0, 0]);
        assert_eq!(series[5].values, vec![3 + 2 + 1, 0, 0, 0]);
    }

    #[test]
    fn lifetimes_histogram_bins_and_policy_maximum() {
        let max = vec![
            ("other".to_owned(), "ro".to_owned(), 30 * MIN),
            ("pg".to_owned(), "ro".to_owned(), HOUR),
        ];
        let l = lifetimes(&[(4, 1), (15, 2), (60, 1)], &max);
        // Up to an hour in 12 bins of five minutes; the hour itself in the last.
        assert_eq!(l.bin_ms, 5 * 60_000);
        assert_eq!(l.counts, vec![1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(l.policy_max.len(), 2);
        assert_eq!(l.largest_max().map(|m| m.max_ms), Some(3_600_000));
        // Nothing granted: no bins, the maxima still known.
        let none = lifetimes(&[], &max);
        assert!(none.counts.is_empty() && none.policy_max.len() == 2);
        // A week's TTL in bins of 14 hours at most 12.
        let week = lifetimes(&[(7 * 24 * 60, 1)], &[]);
        assert!(week.counts.len() <= 12, "{week:?}");
        assert_eq!(week.counts.last(), Some(&1));
    }

    #[test]
    fn rows_outside_the_window_are_dropped() {
        let picture = AccessPicture::from_rows(
            frame(),
            PictureScope::Everyone,
            PictureRows {
                active_grants: 2,
                pending_requests: 1,
                overdue: 1,
                revocation_lags: vec![(1, 1_000, 1), (1, 5_000, 1), (7, 1, 1), (-1, 1, 1)],
                orphans: vec![(2, 3), (9, 1)],
                approval_waits: vec![(0, 90_000, 2)],
                ..PictureRows::default()
            },
        );
        let lag = &picture.revocation_lag;
        assert_eq!(lag.len(), 4);
        assert_eq!(lag[1].n, 2);
        assert_eq!((lag[1].p50_ms, lag[1].p99_ms), (Some(1_000), Some(5_000)));
        assert_eq!(lag.iter().map(|p| p.n).sum::<u64>(), 2);
        assert_eq!(picture.overdue, 1);
        assert_eq!(picture.standing, vec![0, 0, 3, 0]);
        assert_eq!(picture.counts.standing_found, 3);
        assert_eq!(
            (
                picture.counts.active_grants,
                picture.counts.pending_requests
            ),
            (2, 1)
        );
        assert_eq!(picture.approval_time[0].n, 2);
        assert_eq!(picture.approval_time[0].p50_ms, Some(90_000));
    }
}
