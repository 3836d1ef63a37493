//! Applying a policy [`Decision`] to a request: the one place that says what an allow with
//! approvals, an allow without, a break-glass request and a denial make of a request. Both ways a
//! request is decided (`POST /v1/requests`, and the one-call certificate path) go through
//! [`rule`]; the caller records the [`Ruling`] and, for a grant, bounds its lifetime with
//! [`grant_ttl`].

use std::time::Duration;

use crate::Timestamp;
use crate::grant::RequestState;
use crate::policy::Decision;

/// The shortest grant there is, whatever was asked.
pub const MIN_GRANT_TTL: Duration = Duration::from_secs(1);

/// What a request asks, as far as applying its decision goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asked {
    /// The role's own longest TTL, as stored now.
    pub role_max_ttl: Duration,
    /// Break-glass: issued at once without approvals, reviewed afterwards.
    pub break_glass: bool,
}

/// What a request becomes once its decision is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ruling {
    /// May be activated now: no approval is needed, or it is break-glass.
    Allowed {
        /// The role's maximum, lowered by the deciding policies' `@max_ttl`.
        max_ttl: Duration,
        /// `allowed by POLICY, …`.
        decision: String,
    },
    /// Waits for `approvals` approvals (at least one).
    Pending {
        approvals: u32,
        max_ttl: Duration,
        decision: String,
    },
    /// Refused; `decision` says why (the policy that forbids it, or that none permits it).
    Denied { decision: String },
}

/// Applies `decision` to a request that asks `asked`. Pure: the same input gives the same ruling.
pub fn rule(decision: Decision, asked: &Asked) -> Ruling {
    match decision {
        Decision::Deny { reason } => Ruling::Denied { decision: reason },
        Decision::Allow {
            approvals,
            max_ttl,
            policies,
            ..
        } => {
            let max_ttl = match max_ttl {
                Some(policy_max) => asked.role_max_ttl.min(policy_max),
                None => asked.role_max_ttl,
            };
            let decision = format!("allowed by {}", policies.join(", "));
            // Break-glass skips approvals: it is issued at once and reviewed afterwards.
            if asked.break_glass || approvals == 0 {
                Ruling::Allowed { max_ttl, decision }
            } else {
                Ruling::Pending {
                    approvals,
                    max_ttl,
                    decision,
                }
            }
        }
    }
}

impl Ruling {
    /// The request's state as recorded at creation.
    pub fn state(&self) -> RequestState {
        match self {
            Ruling::Allowed { .. } => RequestState::Allowed,
            Ruling::Pending { .. } => RequestState::Pending,
            Ruling::Denied { .. } => RequestState::Denied,
        }
    }

    /// What the request records as its decision.
    pub fn decision(&self) -> &str {
        match self {
            Ruling::Allowed { decision, .. }
            | Ruling::Pending { decision, .. }
            | Ruling::Denied { decision } => decision,
        }
    }

    /// Approvals still needed: 0 unless pending.
    pub fn approvals_needed(&self) -> u32 {
        match self {
            Ruling::Pending { approvals, .. } => *approvals,
            Ruling::Allowed { .. } | Ruling::Denied { .. } => 0,
        }
    }

    /// The longest grant the request may become; `None` when denied (the request keeps its
    /// role's maximum as recorded).
    pub fn max_ttl(&self) -> Option<Duration> {
        match self {
            Ruling::Allowed { max_ttl, .. } | Ruling::Pending { max_ttl, .. } => Some(*max_ttl),
            Ruling::Denied { .. } => None,
        }
    }

    /// Until when the request waits for its next step, decided `now`: an allowed request for its
    /// activation (`activation_window`), a pending one for its approvals and a denied one
    /// (nothing) for `pending_window`.
    pub fn waits_until(
        &self,
        now: Timestamp,
        pending_window: Duration,
        activation_window: Duration,
    ) -> Timestamp {
        match self {
            Ruling::Allowed { .. } => now + activation_window,
            Ruling::Pending { .. } | Ruling::Denied { .. } => now + pending_window,
        }
    }
}

/// How long a grant lives: what was asked, at most `max_ttl` (the lowest of the ceilings that
/// apply: the request's recorded maximum, the role's current one), at least [`MIN_GRANT_TTL`].
pub fn grant_ttl(asked: Duration, max_ttl: Duration) -> Duration {
    asked.min(max_ttl).max(MIN_GRANT_TTL)
}

/// Until when a renewed grant lives: `ttl` from `now`, but never past `created_at` plus the
/// request's `max_ttl` (the whole lifetime a grant may have, renewals included).
pub fn renewed_expiry(
    now: Timestamp,
    ttl: Duration,
    created_at: Timestamp,
    max_ttl: Duration,
) -> Timestamp {
    (now + ttl).min(created_at + max_ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);
    const M15: Duration = Duration::from_secs(900);

    fn allow(approvals: u32, max_ttl: Option<Duration>, policies: &[&str]) -> Decision {
        Decision::Allow {
            approvals,
            max_ttl,
            policies: policies.iter().map(|p| (*p).to_owned()).collect(),
            step_up: None,
        }
    }

    fn deny(reason: &str) -> Decision {
        Decision::Deny {
            reason: reason.to_owned(),
        }
    }

    /// One case: the decision, whether break-glass, and the ruling expected, rendered.
    #[track_caller]
    fn check(decision: Decision, break_glass: bool, expect: &str) {
        let asked = Asked {
            role_max_ttl: H,
            break_glass,
        };
        let ruling = rule(decision, &asked);
        let rendered = format!(
            "{} approvals={} max_ttl={:?} decision={:?}",
            ruling.state().as_str(),
            ruling.approvals_needed(),
            ruling.max_ttl().map(|d| d.as_secs()),
            ruling.decision()
        );
        assert_eq!(rendered, expect);
    }

    #[test]
    fn every_branch() {
        // Allowed at once: no approvals; the role's maximum unless a policy's is lower.
        check(
            allow(0, None, &["p"]),
            false,
            r#"allowed approvals=0 max_ttl=Some(3600) decision="allowed by p""#,
        );
        check(
            allow(0, Some(M15), &["p", "q"]),
            false,
            r#"allowed approvals=0 max_ttl=Some(900) decision="allowed by p, q""#,
        );
        check(
            allow(0, Some(2 * H), &["p"]),
            false,
            r#"allowed approvals=0 max_ttl=Some(3600) decision="allowed by p""#,
        );
        check(
            allow(0, Some(Duration::ZERO), &[]),
            false,
            r#"allowed approvals=0 max_ttl=Some(0) decision="allowed by ""#,
        );
        // Approvals needed: pending, with the same maximum.
        check(
            allow(2, Some(M15), &["two"]),
            false,
            r#"pending approvals=2 max_ttl=Some(900) decision="allowed by two""#,
        );
        check(
            allow(u32::MAX, None, &["many"]),
            false,
            r#"pending approvals=4294967295 max_ttl=Some(3600) decision="allowed by many""#,
        );
        // Break-glass skips approvals, keeps the maximum.
        check(
            allow(2, Some(M15), &["glass"]),
            true,
            r#"allowed approvals=0 max_ttl=Some(900) decision="allowed by glass""#,
        );
        check(
            allow(0, None, &["glass"]),
            true,
            r#"allowed approvals=0 max_ttl=Some(3600) decision="allowed by glass""#,
        );
        // Denied, break-glass or not: the reason is the decision; no maximum.
        check(
            deny("forbidden by policy no-weekend-prod"),
            false,
            r#"denied approvals=0 max_ttl=None decision="forbidden by policy no-weekend-prod""#,
        );
        check(
            deny("no policy permits `break_glass` on `db/rw`"),
            true,
            r#"denied approvals=0 max_ttl=None decision="no policy permits `break_glass` on `db/rw`""#,
        );
    }

    #[test]
    fn waiting_windows() {
        let now = Timestamp::from_unix_ms(1_000_000);
        let asked = Asked {
            role_max_ttl: H,
            break_glass: false,
        };
        let pending = Duration::from_secs(24 * 3600);
        for (decision, until) in [
            (allow(0, None, &["p"]), now + H),
            (allow(1, None, &["p"]), now + pending),
            (deny("no"), now + pending),
        ] {
            assert_eq!(rule(decision, &asked).waits_until(now, pending, H), until);
        }
    }

    #[test]
    fn grant_lifetimes() {
        let s = Duration::from_secs;
        for (asked, max, ttl) in [
            (s(900), s(3600), s(900)),
            (s(7200), s(3600), s(3600)),
            (s(3600), s(3600), s(3600)),
            (Duration::ZERO, s(3600), MIN_GRANT_TTL),
            (Duration::from_millis(500), s(3600), MIN_GRANT_TTL),
            (s(900), Duration::ZERO, MIN_GRANT_TTL),
            (Duration::MAX, Duration::MAX, Duration::MAX),
        ] {
            assert_eq!(grant_ttl(asked, max), ttl, "{asked:?} {max:?}");
        }
        let at = Timestamp::from_unix_ms;
        for (now, ttl, created, max, expect) in [
            // Asked fits inside the lifetime.
            (at(10_000), s(5), at(0), s(60), at(15_000)),
            // Cut at the lifetime's end.
            (at(50_000), s(30), at(0), s(60), at(60_000)),
            // Already at it.
            (at(60_000), s(30), at(0), s(60), at(60_000)),
            (
                at(i64::MAX - 5),
                Duration::MAX,
                at(0),
                Duration::MAX,
                at(i64::MAX),
            ),
        ] {
            assert_eq!(renewed_expiry(now, ttl, created, max), expect);
        }
    }
}
