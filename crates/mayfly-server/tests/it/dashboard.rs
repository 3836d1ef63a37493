//! The dashboard's picture of access (issue 21, "Pictures") from real grants on the machine's
//! PostgreSQL, with the broker's store on SQLite and on PostgreSQL: the counts, the series, who
//! sees what; and the page's counts against the JSON API's.

use std::time::Duration;

use mayfly_server::access::picture::{PictureScope, Window};
use mayfly_server::auth::Caller;
use mayfly_testkit::access::{POSTGRES_LOGIN, ask, grant_id, id};
use mayfly_testkit::postgres::ThrowawayDb;
use mayfly_testkit::{Options, TestBroker};
use serde_json::{Value, json};

const POLICY: &str = r#"
@id("readonly-quarter-hour")
@max_ttl("900")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/readonly");

@id("owner-needs-one")
@approvals("1")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"pg/owner");

@id("approvers")
permit (principal, action == Action::"approve", resource in Target::"pg")
when { principal in Group::"dev" };
"#;

/// The target `pg` on the machine's PostgreSQL (trust), two roles of an hour at most, the policy.
async fn setup(broker: &TestBroker) {
    broker
        .add_target(json!({"kind": "postgres", "name": "pg",
            "url": "postgres://127.0.0.1:5432/postgres",
            "admin_user": "postgres", "admin_password": "unused-with-trust"}))
        .await;
    for role in ["readonly", "owner"] {
        broker.add_role("pg", role, 3600, POSTGRES_LOGIN).await;
    }
    broker.set_policy(POLICY).await;
}

async fn caller(broker: &TestBroker, token: &str) -> Caller {
    let hash = mayfly_crypto::token::hash_token(token);
    let session = broker
        .broker
        .store()
        .session_by_hash(&hash)
        .await
        .unwrap()
        .expect("the session exists");
    Caller { session }
}

/// Alice's readonly grant of 10 minutes, expired, revoked and proven gone; bob's owner grant,
/// approved by alice 90 s after he asked, active; alice's owner request, pending.
async fn story(broker: &TestBroker) -> (String, String) {
    setup(broker).await;
    let alice = broker.login("alice").await;
    let bob = broker.login("bob").await;
    let credential = broker
        .grant(&alice, ask("pg", "readonly", 600, "INC-1 triage"))
        .await;
    let expiring = grant_id(&credential);

    let asked = broker
        .pending(&bob, ask("pg", "owner", 3000, "INC-2 migration"))
        .await;
    broker.clock.advance(Duration::from_secs(90));
    broker.approve(&alice, &id(&asked), "ok").await;
    broker.activate(&bob, &id(&asked)).await;

    broker
        .pending(&alice, ask("pg", "owner", 300, "INC-3 later"))
        .await;

    // Alice's grant expires (bob's has 3000 s from 90 s in): revoked and proven gone.
    broker.clock.advance(Duration::from_secs(511));
    broker.wait_for_grant(&alice, &expiring, "verified").await;
    (alice, bob)
}

async fn picture_story(broker: TestBroker) {
    let (alice, _bob) = story(&broker).await;
    let admin = caller(&broker, &broker.admin()).await;
    let b = &broker.broker;

    let all = b.access_picture(&admin, Window::DAY).await.unwrap();
    assert_eq!(all.scope, PictureScope::Everyone);
    assert_eq!(all.counts.active_grants, 1, "{:?}", all.counts);
    assert_eq!(all.counts.pending_requests, 1);
    assert_eq!(all.counts.standing_found, 0);
    assert_eq!(all.standing.iter().sum::<u64>(), 0);
    // Both grants on pg, at once, in the last bucket (the story takes minutes).
    assert_eq!(all.active.len(), 1, "{:?}", all.active);
    assert_eq!(all.active[0].target, "pg");
    assert_eq!(all.active[0].values.last(), Some(&2));
    assert_eq!(all.active[0].values.iter().sum::<u64>(), 2);
    // Lifetimes: 600 s and 3000 s; the policy's maxima, @max_ttl lowering readonly's hour.
    assert_eq!(all.lifetimes.counts.iter().sum::<u64>(), 2);
    let maxima: Vec<(String, u64)> = all
        .lifetimes
        .policy_max
        .iter()
        .map(|m| (format!("{}/{}", m.target, m.role), m.max_ms))
        .collect();
    assert_eq!(
        maxima,
        vec![
            ("pg/owner".to_owned(), 3_600_000),
            ("pg/readonly".to_owned(), 900_000)
        ]
    );
    // One revocation at expiry, proven within the engine's rounds after the clock moved.
    let lag: Vec<_> = all.revocation_lag.iter().filter(|p| p.n > 0).collect();
    assert_eq!(lag.len(), 1, "{:?}", all.revocation_lag);
    assert!(lag[0].p99_ms.unwrap() <= 11_000, "{lag:?}");
    assert_eq!(all.overdue, 0);
    // Bob's request waited 90 s for alice.
    let waits: Vec<_> = all.approval_time.iter().filter(|p| p.n > 0).collect();
    assert_eq!(waits.len(), 1);
    assert_eq!(waits[0].p50_ms, Some(90_000));

    // Alice sees her own: no active grant, her pending request, her one lifetime, nobody's wait.
    let mine = b
        .access_picture(&caller(&broker, &alice).await, Window::DAY)
        .await
        .unwrap();
    assert_eq!(mine.scope, PictureScope::Own);
    assert_eq!(
        (mine.counts.active_grants, mine.counts.pending_requests),
        (0, 1)
    );
    assert_eq!(mine.lifetimes.counts.iter().sum::<u64>(), 1);
    assert_eq!(mine.lifetimes.policy_max.len(), 1);
    assert!(mine.approval_time.iter().all(|p| p.n == 0));
    assert_eq!(mine.active[0].values.last(), Some(&1));
    broker.stop().await;
}

#[tokio::test]
async fn access_picture_from_real_grants_sqlite() {
    picture_story(TestBroker::ready().await).await;
}

#[tokio::test]
async fn access_picture_from_real_grants_postgres() {
    let db = ThrowawayDb::create().await;
    let broker = TestBroker::start(Options {
        store_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    picture_story(broker).await;
    db.drop_db().await;
}

/// The `data-value` of the element `id` in `html`.
fn data_value(html: &str, id: &str) -> u64 {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let rest = &html[at..];
    let value = rest
        .split("data-value=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .unwrap();
    value.parse().unwrap()
}

/// How many of a JSON listing's items are in `state`.
fn in_state(list: &Value, state: &str) -> u64 {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|item| item["state"] == state)
        .count() as u64
}

#[tokio::test]
async fn dashboard_counts_match_the_api() {
    let broker = TestBroker::ready().await;
    let (alice, _bob) = story(&broker).await;
    for token in [broker.admin(), alice] {
        let page = broker
            .raw()
            .await
            .get(format!("{}/ui/dashboard", broker.addr))
            .header("cookie", format!("mayfly_session={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        let (_, grants) = broker.call("GET", "/v1/grants", Some(&token), None).await;
        let (_, pending) = broker
            .call("GET", "/v1/requests?pending=true", Some(&token), None)
            .await;
        assert_eq!(
            data_value(&html, "count-active-grants"),
            in_state(&grants, "active")
        );
        assert_eq!(
            data_value(&html, "count-pending-requests"),
            in_state(&pending, "pending")
        );
        assert_eq!(data_value(&html, "count-standing"), 0);
        for figure in [
            "chart-active-grants",
            "chart-lifetimes",
            "chart-revocation-lag",
            "chart-approval-time",
            "chart-standing",
        ] {
            assert!(
                html.contains(&format!("<figure id=\"{figure}\"")),
                "{figure}"
            );
        }
    }
    broker.stop().await;
}
