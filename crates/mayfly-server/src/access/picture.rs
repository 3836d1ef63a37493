//! The dashboard's picture of access (issue 21, "Pictures"): standing vs ephemeral access at a
//! glance. [`Broker::access_picture`] reads the store once ([`mayfly_store::Store::access_picture`],
//! narrow reads bounded by the window) and [`AccessPicture::from_rows`] turns the rows into the
//! series the console draws, pure and tested on its own:
//!
//! - **counts now**: grants in state `active`, requests in state `pending` (what `GET /v1/grants`
//!   and `GET /v1/requests?pending=true` list with those states for the same caller: for anyone
//!   but an admin, the pending requests are their own and those they may approve), and the
//!   standing credentials the orphan sweep found in the window;
//! - **active grants per target**: per bucket, the most grants of each target live at one time
//!   (a grant lives from its creation until it is revoked; one not revoked yet, until now), so
//!   that a five-minute grant shows even in an hour-wide bucket; the five busiest targets, the
//!   rest summed as one series;
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
use mayfly_store::{PictureGrant, PictureQuery, PictureRows};

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
        if span < Window::MIN_SPAN || span > Window::MAX_SPAN || span.as_secs() % 60 != 0 {
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
    /// Per target (the busiest first, then [`OTHER_TARGETS`]), the most grants live at one time
    /// in each bucket.
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
    /// Of `values` (sorted here).
    pub fn of(mut values: Vec<u64>) -> Percentiles {
        values.sort_unstable();
        let rank = |p: u64| -> Option<u64> {
            let n = u64::try_from(values.len()).ok()?;
            if n == 0 {
                return None;
            }
            // Nearest rank: the smallest value with at least p % of the values at or below it.
            let rank = (p * n).div_ceil(100).max(1);
            values.get(usize::try_from(rank - 1).ok()?).copied()
        };
        Percentiles {
            n: u64::try_from(values.len()).unwrap_or(u64::MAX),
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
        let to = frame.to();
        let mut standing = vec![0_u64; frame.buckets];
        for (bucket, n) in &rows.orphans {
            if let Some(slot) = usize::try_from(*bucket)
                .ok()
                .and_then(|b| standing.get_mut(b))
            {
                *slot += u64::try_from(*n).unwrap_or(0);
            }
        }
        let overdue = rows
            .grants
            .iter()
            .filter(|g| g.live && g.expires_at <= to)
            .count();
        AccessPicture {
            counts: Counts {
                active_grants: u64::try_from(rows.active_grants).unwrap_or(0),
                pending_requests: u64::try_from(rows.pending_requests).unwrap_or(0),
                standing_found: standing.iter().sum(),
            },
            active: active_series(&frame, &rows.grants),
            lifetimes: lifetimes(&frame, &rows.grants, &rows.role_max_ttl),
            revocation_lag: revocation_lag(&frame, &rows.grants),
            overdue: u64::try_from(overdue).unwrap_or(u64::MAX),
            approval_time: approval_time(&frame, &rows.approvals),
            standing,
            frame,
            scope,
        }
    }
}

/// When a grant stops being live, in ms: its revocation; if not revoked and still live, never
/// (within the window); otherwise (gone without a recorded revocation) its expiry.
fn end_ms(grant: &PictureGrant) -> Option<i64> {
    match (grant.revoked_at, grant.live) {
        (Some(at), _) => Some(at.unix_ms()),
        (None, true) => None,
        (None, false) => Some(grant.expires_at.unix_ms()),
    }
}

/// The most grants live at one time in each bucket, for the lives `[start, end)` given.
fn peaks(frame: &Frame, lives: &[(i64, Option<i64>)]) -> Vec<u64> {
    // +1 at each start, -1 at each end; at the same instant, ends first.
    let mut changes: Vec<(i64, i64)> = Vec::with_capacity(lives.len() * 2);
    for &(start, end) in lives {
        match end {
            Some(end) if end <= start => {}
            Some(end) => {
                changes.push((start, 1));
                changes.push((end, -1));
            }
            None => changes.push((start, 1)),
        }
    }
    changes.sort_unstable();
    let mut changes = changes.into_iter().peekable();
    let mut level: i64 = 0;
    let mut out = Vec::with_capacity(frame.buckets);
    for i in 0..frame.buckets {
        let start = frame.bucket_start_ms(i);
        let end = frame.bucket_start_ms(i + 1);
        // The level at the bucket's first instant.
        while let Some(&(at, delta)) = changes.peek() {
            if at > start {
                break;
            }
            level += delta;
            changes.next();
        }
        let mut peak = level;
        while let Some(&(at, delta)) = changes.peek() {
            if at >= end {
                break;
            }
            level += delta;
            peak = peak.max(level);
            changes.next();
        }
        out.push(u64::try_from(peak).unwrap_or(0));
    }
    out
}

fn active_series(frame: &Frame, grants: &[PictureGrant]) -> Vec<TargetSeries> {
    let mut by_target: HashMap<&str, Vec<(i64, Option<i64>)>> = HashMap::new();
    for grant in grants {
        let end = end_ms(grant);
        if end.is_some_and(|end| end < frame.from.unix_ms()) {
            continue;
        }
        by_target
            .entry(grant.target.as_str())
            .or_default()
            .push((grant.created_at.unix_ms(), end));
    }
    let mut series: Vec<TargetSeries> = by_target
        .iter()
        .map(|(target, lives)| TargetSeries {
            target: (*target).to_owned(),
            values: peaks(frame, lives),
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
        let rest: Vec<(i64, Option<i64>)> = series
            .split_off(MAX_TARGET_SERIES)
            .iter()
            .filter_map(|s| by_target.get(s.target.as_str()))
            .flatten()
            .copied()
            .collect();
        series.push(TargetSeries {
            target: OTHER_TARGETS.to_owned(),
            values: peaks(frame, &rest),
        });
    }
    series
}

/// Bin widths the histogram picks from, in seconds: the smallest that needs at most
/// [`MAX_LIFETIME_BINS`] bins.
const BIN_STEPS_SECS: [u64; 15] = [
    60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 172_800, 345_600,
    604_800,
];

fn lifetimes(
    frame: &Frame,
    grants: &[PictureGrant],
    role_max_ttl: &[(String, String, i64)],
) -> Lifetimes {
    let ttls: Vec<(&PictureGrant, u64)> = grants
        .iter()
        .filter(|g| frame.bucket_of(g.created_at).is_some())
        .map(|g| {
            let ttl = g
                .expires_at
                .unix_ms()
                .saturating_sub(g.created_at.unix_ms());
            (g, u64::try_from(ttl).unwrap_or(0))
        })
        .collect();
    let mut policy_max: Vec<RoleMax> = role_max_ttl
        .iter()
        .filter(|(target, role, _)| {
            ttls.iter()
                .any(|(g, _)| &g.target == target && &g.role == role)
        })
        .map(|(target, role, max)| RoleMax {
            target: target.clone(),
            role: role.clone(),
            max_ms: u64::try_from(*max).unwrap_or(0),
        })
        .collect();
    policy_max.sort_by(|a, b| (&a.target, &a.role).cmp(&(&b.target, &b.role)));
    if ttls.is_empty() {
        return Lifetimes {
            bin_ms: 0,
            counts: Vec::new(),
            policy_max,
        };
    }
    let upper = ttls
        .iter()
        .map(|(_, ttl)| *ttl)
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
    for (_, ttl) in &ttls {
        let i = usize::try_from((ttl / bin_ms).min(bins - 1)).unwrap_or(0);
        if let Some(slot) = counts.get_mut(i) {
            *slot += 1;
        }
    }
    Lifetimes {
        bin_ms,
        counts,
        policy_max,
    }
}

/// Values per bucket, then their percentiles.
fn per_bucket(frame: &Frame, values: impl Iterator<Item = (Timestamp, u64)>) -> Vec<Percentiles> {
    let mut buckets: Vec<Vec<u64>> = vec![Vec::new(); frame.buckets];
    for (at, value) in values {
        if let Some(bucket) = frame.bucket_of(at).and_then(|i| buckets.get_mut(i)) {
            bucket.push(value);
        }
    }
    buckets.into_iter().map(Percentiles::of).collect()
}

fn revocation_lag(frame: &Frame, grants: &[PictureGrant]) -> Vec<Percentiles> {
    per_bucket(
        frame,
        grants.iter().filter(|g| g.at_expiry).filter_map(|g| {
            let gone = g.verified_at.or(g.revoked_at)?;
            let lag = gone.unix_ms().saturating_sub(g.expires_at.unix_ms());
            Some((g.expires_at, u64::try_from(lag).unwrap_or(0)))
        }),
    )
}

fn approval_time(frame: &Frame, approvals: &[(Timestamp, Timestamp)]) -> Vec<Percentiles> {
    per_bucket(
        frame,
        approvals.iter().map(|(asked, approved)| {
            let wait = approved.unix_ms().saturating_sub(asked.unix_ms());
            (*approved, u64::try_from(wait).unwrap_or(0))
        }),
    )
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

    fn grant(target: &str, created: i64, expires: i64) -> PictureGrant {
        PictureGrant {
            target: target.into(),
            role: "ro".into(),
            live: false,
            created_at: ms(created),
            expires_at: ms(expires),
            revoked_at: Some(ms(expires)),
            verified_at: None,
            at_expiry: true,
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
        let one = Percentiles::of(vec![7]);
        assert_eq!((one.n, one.p50_ms, one.p99_ms), (1, Some(7), Some(7)));
        let hundred = Percentiles::of((1..=100).rev().collect());
        assert_eq!((hundred.p50_ms, hundred.p99_ms), (Some(50), Some(99)));
        let two = Percentiles::of(vec![10, 1000]);
        assert_eq!((two.p50_ms, two.p99_ms), (Some(10), Some(1000)));
    }

    #[test]
    fn active_grants_are_the_peak_per_bucket_per_target() {
        let f = frame();
        let mut still = grant("pg", 13 * HOUR + 30 * MIN, 15 * HOUR);
        (still.live, still.revoked_at) = (true, None);
        let grants = vec![
            // Before the window and over: not counted.
            grant("pg", 8 * HOUR, 9 * HOUR),
            // Five minutes in bucket 0, and two overlapping in bucket 1 on pg.
            grant("pg", 10 * HOUR + 10 * MIN, 10 * HOUR + 15 * MIN),
            grant("pg", 11 * HOUR, 11 * HOUR + 30 * MIN),
            grant("pg", 11 * HOUR + 10 * MIN, 12 * HOUR),
            // One on redis across buckets 0 to 2, ending exactly at bucket 2's start.
            grant("redis", 9 * HOUR, 12 * HOUR),
            // Still live in bucket 3.
            still,
        ];
        let series = active_series(&f, &grants);
        assert_eq!(series.len(), 2, "{series:?}");
        assert_eq!(series[0].target, "pg");
        assert_eq!(series[0].values, vec![1, 2, 0, 1]);
        assert_eq!(series[1].target, "redis");
        assert_eq!(series[1].values, vec![1, 1, 0, 0]);
    }

    #[test]
    fn beyond_five_targets_the_rest_is_one_series() {
        let f = frame();
        let grants: Vec<PictureGrant> = (0..8)
            .flat_map(|t| {
                // Target t has 8 - t grants in bucket 0, one after the other.
                (0..(8 - t)).map(move |i| {
                    grant(
                        &format!("t{t}"),
                        10 * HOUR + i * MIN,
                        10 * HOUR + i * MIN + 30_000,
                    )
                })
            })
            .collect();
        let series = active_series(&f, &grants);
        let names: Vec<&str> = series.iter().map(|s| s.target.as_str()).collect();
        assert_eq!(names, ["t0", "t1", "t2", "t3", "t4", OTHER_TARGETS]);
        // One at a time on each target; the other three targets' first grants overlap.
        assert!(
            series[..5].iter().all(|s| s.values == vec![1, 0, 0, 0]),
            "{series:?}"
        );
        assert_eq!(series[5].values, vec![3, 0, 0, 0]);
    }

    #[test]
    fn lifetimes_histogram_bins_and_policy_maximum() {
        let f = frame();
        let grants = vec![
            grant("pg", 10 * HOUR, 10 * HOUR + 15 * MIN),
            grant("pg", 11 * HOUR, 11 * HOUR + 60 * MIN),
            grant("pg", 12 * HOUR, 12 * HOUR + 4 * MIN),
            // Created before the window: not counted.
            grant("pg", 9 * HOUR, 11 * HOUR),
        ];
        let max = vec![
            ("pg".to_owned(), "ro".to_owned(), HOUR),
            ("other".to_owned(), "ro".to_owned(), 8 * HOUR),
        ];
        let l = lifetimes(&f, &grants, &max);
        // Up to an hour in 12 bins of five minutes; the hour itself in the last.
        assert_eq!(l.bin_ms, 5 * 60_000);
        assert_eq!(l.counts, vec![1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        // Only the roles of the grants counted.
        assert_eq!(
            l.policy_max,
            vec![RoleMax {
                target: "pg".into(),
                role: "ro".into(),
                max_ms: 3_600_000
            }]
        );
        assert_eq!(l.largest_max().map(|m| m.max_ms), Some(3_600_000));
        assert_eq!(lifetimes(&f, &[], &max), Lifetimes::default());
    }

    #[test]
    fn revocation_lag_counts_expiries_only_and_overdue_apart() {
        let f = frame();
        let mut early = grant("pg", 10 * HOUR, 11 * HOUR);
        early.at_expiry = false;
        let mut verified = grant("pg", 10 * HOUR, 11 * HOUR);
        verified.revoked_at = Some(ms(11 * HOUR + 2_000));
        verified.verified_at = Some(ms(11 * HOUR + 5_000));
        let mut revoked = grant("pg", 10 * HOUR, 11 * HOUR + 10);
        revoked.revoked_at = Some(ms(11 * HOUR + 1_010));
        let mut stuck = grant("pg", 12 * HOUR, 13 * HOUR);
        (stuck.live, stuck.revoked_at) = (true, None);
        let picture = AccessPicture::from_rows(
            f,
            PictureScope::Everyone,
            PictureRows {
                grants: vec![early, verified, revoked, stuck],
                orphans: vec![(2, 3), (9, 1)],
                approvals: vec![(ms(10 * HOUR), ms(10 * HOUR + 90_000))],
                ..PictureRows::default()
            },
        );
        let lag = &picture.revocation_lag;
        assert_eq!(lag[1].n, 2);
        assert_eq!((lag[1].p50_ms, lag[1].p99_ms), (Some(1_000), Some(5_000)));
        assert_eq!(lag[3].n, 0);
        assert_eq!(picture.overdue, 1);
        // Findings outside the window's buckets are dropped.
        assert_eq!(picture.standing, vec![0, 0, 3, 0]);
        assert_eq!(picture.counts.standing_found, 3);
        assert_eq!(picture.approval_time[0].p50_ms, Some(90_000));
    }
}
