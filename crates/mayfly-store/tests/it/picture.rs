//! The dashboard's reads (`Store::access_picture`) on both backends: which grants, maxima,
//! approvals and sweep findings a window reads, whose (everyone's or one principal's), and the
//! counts now.

use mayfly_core::audit::{AuditDraft, Outcome, SWEEP_ORPHAN_KIND};
use mayfly_core::grant::{GrantState, RequestState};
use mayfly_core::{Principal, Timestamp};
use mayfly_store::{ApprovalRecord, Change, LiveSpan, PictureQuery, Store, Write, WriteOutcome};

use crate::access::{grant, request};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// The window: 10 h to 14 h, in hours.
const FROM: i64 = 10 * HOUR;
const TO: i64 = 14 * HOUR;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

async fn commit(store: &dyn Store, change: Option<Change>, event: AuditDraft) {
    let outcome = store
        .commit(vec![Write { change, event }])
        .await
        .unwrap()
        .remove(0);
    assert!(
        matches!(outcome, WriteOutcome::Applied { .. }),
        "{outcome:?}"
    );
}

fn bob() -> Principal {
    Principal::User {
        id: "u2".into(),
        name: "bob".into(),
        groups: vec![],
    }
}

/// A grant of `principal` on `target`, created at `created`, expiring at `expires`, in `state`,
/// with its (activated) request allowing `max_ttl`.
#[allow(clippy::too_many_arguments, reason = "a test's table of columns")]
async fn issued(
    store: &dyn Store,
    id: &str,
    principal: &Principal,
    target: &str,
    (created, expires): (i64, i64),
    state: GrantState,
    revoked: Option<(i64, Option<i64>, &str)>,
    max_ttl: i64,
) {
    let mut r = request(&format!("r-{id}"), RequestState::Activated, 0);
    r.principal = principal.clone();
    r.target = target.into();
    r.max_ttl_ms = max_ttl;
    r.created_at = at(created);
    r.expires_at = at(created + HOUR);
    let mut g = grant(id, &r.id, expires);
    g.principal = principal.to_string();
    g.target = target.into();
    g.state = state;
    g.created_at = at(created);
    g.next_attempt_at = None;
    if let Some((revoked_at, verified_at, reason)) = revoked {
        g.revoked_at = Some(at(revoked_at));
        g.verified_at = verified_at.map(at);
        g.revoke_reason = Some(reason.into());
    }
    commit(
        store,
        Some(Change::IssueCertificate {
            request: Box::new(r),
            grant: Box::new(g),
        }),
        AuditDraft::new(at(created), "access.certificate", Outcome::Ok),
    )
    .await;
}

pub async fn run(store: &dyn Store) {
    let alice = request("x", RequestState::Pending, 0).principal;
    // Before the window, and over before it: not read.
    issued(
        store,
        "old",
        &alice,
        "pg",
        (8 * HOUR, 9 * HOUR),
        GrantState::Verified,
        Some((9 * HOUR + 500, Some(9 * HOUR + 900), "expired")),
        HOUR,
    )
    .await;
    // Revoked at expiry in the window, verified 3 s later.
    issued(
        store,
        "g1",
        &alice,
        "pg",
        (10 * HOUR, 11 * HOUR),
        GrantState::Verified,
        Some((11 * HOUR + 1_000, Some(11 * HOUR + 3_000), "expired")),
        2 * HOUR,
    )
    .await;
    // Revoked early by its holder.
    issued(
        store,
        "g2",
        &alice,
        "redis",
        (11 * HOUR, 13 * HOUR),
        GrantState::Revoked,
        Some((11 * HOUR + 30 * MIN, None, "revoked early")),
        HOUR,
    )
    .await;
    // Started before the window, still active now (and past its expiry: overdue).
    issued(
        store,
        "g3",
        &bob(),
        "pg",
        (9 * HOUR, 13 * HOUR),
        GrantState::Active,
        None,
        4 * HOUR,
    )
    .await;
    // Active, expiring after the window.
    issued(
        store,
        "g4",
        &bob(),
        "pg",
        (13 * HOUR, 15 * HOUR),
        GrantState::Active,
        None,
        4 * HOUR,
    )
    .await;
    // Created after the window's end: not read.
    issued(
        store,
        "late",
        &bob(),
        "pg",
        (TO + 1, TO + HOUR),
        GrantState::Active,
        None,
        HOUR,
    )
    .await;

    // Requests: two pending (alice's, bob's); alice's first one approved by two at 12:05 and 12:10.
    for (id, principal, approvals) in [
        ("p1", alice.clone(), 0),
        ("p2", bob(), 0),
        ("a1", alice.clone(), 2),
    ] {
        let mut r = request(id, RequestState::Pending, approvals);
        r.principal = principal;
        r.created_at = at(12 * HOUR);
        r.expires_at = at(20 * HOUR);
        if approvals == 0 {
            // A request that waits for approval, never given.
            r.approvals_needed = 1;
        }
        commit(
            store,
            Some(Change::CreateRequest { request: r }),
            AuditDraft::new(at(12 * HOUR), "request.created", Outcome::Ok),
        )
        .await;
    }
    for (approver, minute) in [("carol", 5), ("dave", 10)] {
        commit(
            store,
            Some(Change::Approve {
                approval: ApprovalRecord {
                    request_id: "a1".into(),
                    approver: approver.into(),
                    comment: "ok".into(),
                    at: at(12 * HOUR + minute * MIN),
                },
            }),
            AuditDraft::new(
                at(12 * HOUR + minute * MIN),
                "request.approved",
                Outcome::Ok,
            ),
        )
        .await;
    }
    // One approval of two on p1 would not count; there is none. The sweep found two standing
    // logins at 12:30 and one before the window; other events never count.
    for (kind, t) in [
        (SWEEP_ORPHAN_KIND, 12 * HOUR + 30 * MIN),
        (SWEEP_ORPHAN_KIND, 12 * HOUR + 31 * MIN),
        (SWEEP_ORPHAN_KIND, 9 * HOUR),
        ("grant.revoked", 12 * HOUR),
    ] {
        commit(store, None, AuditDraft::new(at(t), kind, Outcome::Ok)).await;
    }

    // Everyone's.
    let rows = store
        .access_picture(&PictureQuery {
            principal: None,
            from: at(FROM),
            to: at(TO),
            bucket_ms: HOUR,
        })
        .await
        .unwrap();
    assert_eq!(
        rows.active_grants, 3,
        "g3, g4 and the late one are active now"
    );
    assert_eq!(rows.pending_requests, 2);
    assert_eq!(rows.overdue, 1, "g3 is past its expiry and not revoked");
    // pg: g3 from before the window to now, g1 from 10:00 to 11:00:01, g4 from 13:00; redis: g2
    // from 11:00 to 11:30. The old and late ones are not read.
    let span = |target: &str, first, last, grants| LiveSpan {
        target: target.into(),
        first,
        last,
        grants,
    };
    assert_eq!(
        rows.live_spans,
        vec![
            span("pg", 0, -1, 1),
            span("pg", 0, 1, 1),
            span("pg", 3, -1, 1),
            span("redis", 1, 1, 1),
        ]
    );
    assert_eq!(rows.ttl_minutes, vec![(60, 1), (120, 2)]);
    assert_eq!(
        rows.role_max_ttl,
        vec![
            ("pg".into(), "readonly".into(), 4 * HOUR),
            ("redis".into(), "readonly".into(), HOUR),
        ]
    );
    // g1 expired at 11:00 and was verified 3 s later; g2 was revoked early.
    assert_eq!(rows.revocation_lags, vec![(1, 3_000, 1)]);
    // a1 was asked at 12:00 and allowed by the second approval at 12:10.
    assert_eq!(rows.approval_waits, vec![(2, 10 * MIN, 1)]);
    assert_eq!(rows.orphans, vec![(2, 2)]);

    // Bob's own: his grants and requests; the sweep's findings are the broker's.
    let bob = bob();
    let own = store
        .access_picture(&PictureQuery {
            principal: Some(&bob),
            from: at(FROM),
            to: at(TO),
            bucket_ms: HOUR,
        })
        .await
        .unwrap();
    assert_eq!(
        (own.active_grants, own.pending_requests, own.overdue),
        (3, 1, 1)
    );
    assert_eq!(
        own.live_spans,
        vec![span("pg", 0, -1, 1), span("pg", 3, -1, 1)]
    );
    assert_eq!(own.ttl_minutes, vec![(120, 1)]);
    assert_eq!(
        own.role_max_ttl,
        vec![("pg".into(), "readonly".into(), 4 * HOUR)]
    );
    assert!(own.revocation_lags.is_empty() && own.approval_waits.is_empty());
    assert_eq!(own.orphans, vec![(2, 2)]);

    // A workload with bob's name is not bob.
    let workload = Principal::Workload {
        role: String::new(),
        name: "bob".into(),
    };
    let none = store
        .access_picture(&PictureQuery {
            principal: Some(&workload),
            from: at(FROM),
            to: at(TO),
            bucket_ms: HOUR,
        })
        .await
        .unwrap();
    assert_eq!(
        (none.active_grants, none.pending_requests, none.overdue),
        (0, 0, 0)
    );
    assert!(none.live_spans.is_empty() && none.ttl_minutes.is_empty());
    assert!(none.role_max_ttl.is_empty());
}

/// The dashboard's reads on a store the size of the issue's goal (10,000 grants and their
/// requests, 3,000 approvals, 100,000 audit events of ~400 bytes, all in the last day), seeded in
/// SQL behind the store's back (reads only). Returns the median of five reads of the whole day in
/// 24 buckets, in milliseconds; the caller asserts a bound and prints it.
pub async fn seeded_median_ms(store: &dyn Store, url: &str) -> f64 {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let now = 1_800_000_000_000_i64;
    let day = 24 * HOUR;
    let from = now - day;
    let body = "x".repeat(400);
    let seed = [
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) \
             INSERT INTO requests (id, principal_kind, principal_name, principal_role, user_id, \
             target, role, reason, ticket, ttl_ms, max_ttl_ms, approvals_needed, state, decision, \
             break_glass, created_at, expires_at) \
             SELECT 'r' || i, 'user', 'u' || (i % 50), NULL, 'id' || (i % 50), 't' || (i % 8), \
             'ro', 'a reason', 'T-1', 900000, 3600000, CASE WHEN i % 3 = 0 THEN 1 ELSE 0 END, \
             'activated', 'p', 0, {from} + i * 8000, {from} + i * 8000 + 3600000 FROM n"
        ),
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) \
             INSERT INTO approvals (request_id, approver, comment, at) \
             SELECT 'r' || i, 'admin', 'ok', {from} + i * 8000 + 60000 FROM n WHERE i % 3 = 0"
        ),
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) \
             INSERT INTO grants (id, request_id, principal, target, role, login, state, created_at, \
             expires_at, revoke_reason, revoked_at, verified_at) \
             SELECT 'g' || i, 'r' || i, 'user:u' || (i % 50), 't' || (i % 8), 'ro', 'mf_' || i, \
             CASE WHEN i > 9900 THEN 'active' ELSE 'verified' END, {from} + i * 8000 + 70000, \
             {from} + i * 8000 + 970000, CASE WHEN i > 9900 THEN NULL ELSE 'expired' END, \
             CASE WHEN i > 9900 THEN NULL ELSE {from} + i * 8000 + 970000 + (i % 97) * 10 END, \
             CASE WHEN i > 9900 THEN NULL ELSE {from} + i * 8000 + 971000 + (i % 89) * 10 END FROM n"
        ),
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
             INSERT INTO audit_events (seq, at_ms, kind, body, hash) \
             SELECT 1000000 + i, {from} + i * 864 - 1, \
             CASE WHEN i % 20000 = 0 THEN 'sweep.orphan' WHEN i % 3 = 0 THEN 'grant.revoked' \
             ELSE 'grant.verified' END, '{body}', 'h' FROM n"
        ),
    ];
    for sql in seed {
        pool.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    }
    let query = PictureQuery {
        principal: None,
        from: at(from),
        to: at(now),
        bucket_ms: HOUR,
    };
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let rows = store.access_picture(&query).await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(rows.ttl_minutes.iter().map(|(_, n)| n).sum::<i64>(), 10_000);
        assert_eq!(rows.active_grants, 100);
        assert_eq!(
            rows.approval_waits.iter().map(|(_, _, n)| n).sum::<i64>(),
            3_333
        );
        assert_eq!(
            rows.revocation_lags.iter().map(|(_, _, n)| n).sum::<i64>(),
            9_900
        );
        assert!(
            rows.live_spans.len() <= 8 * 24 * 2,
            "{}",
            rows.live_spans.len()
        );
        assert_eq!(rows.orphans.iter().map(|(_, n)| n).sum::<i64>(), 5);
    }
    pool.close().await;
    times.sort_by(f64::total_cmp);
    times[2]
}
