//! Unauthenticated floods: argon2 runs on the bounded pool off the async workers and a full pool
//! answers 503 with `Retry-After`; each source address has a budget of failed logins; the
//! `login_failures` rows of names sprayed once do not stay; a thousand refused calls leave a
//! few events whose counts add up to a thousand.
//!
//! Calls come from several loopback addresses (`127.0.0.N`: the whole of 127/8 is the loopback)
//! where the broker must see several sources.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use mayfly_crypto::password::{
    Verifications, verifications_for_this_thread, verifications_on_this_thread,
};
use mayfly_testkit::TestBroker;
use serde_json::{Value, json};

/// A client whose calls come from loopback address number `n`: `127.0.0.N` for N up to 250,
/// then `127.0.1.1` and on.
pub(crate) fn client_from(n: u16) -> reqwest::Client {
    let [_, third] = (n / 250).to_be_bytes();
    let fourth = u8::try_from(n % 250).unwrap();
    let address = if n < 250 {
        Ipv4Addr::new(127, 0, 0, fourth)
    } else {
        Ipv4Addr::new(127, 0, third, fourth + 1)
    };
    reqwest::Client::builder()
        .local_address(IpAddr::V4(address))
        .build()
        .unwrap()
}

/// One answer: status, `Retry-After`, body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
}

/// A password login to the broker at `addr`.
pub(crate) async fn login_with(
    addr: &str,
    client: &reqwest::Client,
    username: &str,
    password: &str,
    totp: &str,
) -> Answer {
    let response = client
        .post(format!("{addr}/v1/auth/password/login"))
        .json(&json!({"username": username, "password": password, "totp": totp}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
    }
}

fn message(answer: &Answer) -> &str {
    answer.body["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn argon2_runs_off_the_async_workers_and_is_credited_to_the_caller() {
    let broker = TestBroker::ready().await;
    let (run_here, credited) = (
        verifications_on_this_thread(),
        verifications_for_this_thread(),
    );
    let answer = login_with(
        &broker.addr,
        &client_from(1),
        "mallory",
        "not a password",
        "000000",
    )
    .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    // The test's thread is the broker's only async worker: argon2 must not have run on it...
    assert_eq!(
        verifications_on_this_thread().since(run_here),
        Verifications::default(),
        "argon2 ran on the async worker"
    );
    // ... but it ran, once, on the pool, for this thread's call.
    assert_eq!(
        verifications_for_this_thread().since(credited),
        Verifications {
            n_stored: 0,
            n_dummy: 1
        }
    );
}

#[tokio::test]
async fn a_full_argon2_queue_answers_503_with_retry_after() {
    let broker = TestBroker::ready().await;
    let config = &broker.broker.inner.config;
    let n_places = config.argon2_threads + config.argon2_waiting;
    // Each from its own address and for its own name: neither the source budget nor the name
    // throttle stops any of them before the pool.
    let n_calls = 4 * n_places + 20;
    let before = verifications_for_this_thread();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..n_calls {
        let client = client_from(u16::try_from(n + 2).unwrap());
        let addr = broker.addr.clone();
        calls.spawn(async move {
            login_with(&addr, &client, &format!("nobody{n}"), "x", "000000").await
        });
    }
    let answers = calls.join_all().await;
    let cost = verifications_for_this_thread().since(before);
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    let refused = answers.iter().filter(|a| a.status == 401).count();
    assert!(
        !busy.is_empty(),
        "{n_calls} logins at once with {n_places} places in the argon2 pool: none was turned away"
    );
    assert_eq!(busy.len() + refused, n_calls, "{answers:?}");
    for answer in busy {
        assert_eq!(answer.body["error"]["code"], "busy", "{answer:?}");
        assert_eq!(answer.retry_after.as_deref(), Some("1"), "{answer:?}");
    }
    // Every 401 cost one (dummy) verification; a login turned away cost none.
    assert_eq!(
        cost,
        Verifications {
            n_stored: 0,
            n_dummy: u64::try_from(refused).unwrap()
        }
    );
}

#[tokio::test]
async fn each_source_address_has_a_budget_of_failed_logins() {
    let broker = TestBroker::ready().await;
    let burst = broker.broker.inner.config.login_source_burst;
    let refill = broker.broker.inner.config.login_source_refill;
    let (first, second, third) = (client_from(1), client_from(2), client_from(3));
    // Distinct names, so that no name is throttled: only the source's budget is at stake.
    for n in 0..burst {
        let answer = login_with(&broker.addr, &first, &format!("spray{n}"), "x", "000000").await;
        assert_eq!(answer.status, 401, "failure {n}: {answer:?}");
    }
    let before = verifications_for_this_thread();
    let limited = login_with(&broker.addr, &first, "spray-more", "x", "000000").await;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.body["error"]["code"], "too_many_requests");
    let refill_secs = refill.as_secs().to_string();
    assert_eq!(
        message(&limited),
        format!("too many failed logins from this address: try again in {refill_secs} s")
    );
    assert_eq!(limited.retry_after.as_deref(), Some(refill_secs.as_str()));
    assert_eq!(
        verifications_for_this_thread().since(before),
        Verifications::default(),
        "a limited login still ran argon2"
    );
    // Another address is not held up.
    let answer = login_with(&broker.addr, &second, "spray-other", "x", "000000").await;
    assert_eq!(answer.status, 401, "{answer:?}");
    // After one refill, one more failure from the first.
    broker.clock.advance(refill);
    let answer = login_with(&broker.addr, &first, "spray-later", "x", "000000").await;
    assert_eq!(answer.status, 401, "{answer:?}");
    let answer = login_with(&broker.addr, &first, "spray-later2", "x", "000000").await;
    assert_eq!(answer.status, 429, "{answer:?}");

    // Successes give their token back: a source's budget counts failures only.
    for n in 1..burst {
        let answer = login_with(&broker.addr, &third, &format!("other{n}"), "x", "000000").await;
        assert_eq!(answer.status, 401, "failure {n}: {answer:?}");
    }
    let alice = broker.user("alice");
    let answer = login_with(
        &broker.addr,
        &third,
        "alice",
        &alice.password,
        &broker.totp(&alice),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = login_with(&broker.addr, &third, "other-last", "x", "000000").await;
    assert_eq!(
        answer.status, 401,
        "the success used up the budget: {answer:?}"
    );
    let answer = login_with(&broker.addr, &third, "other-over", "x", "000000").await;
    assert_eq!(answer.status, 429, "{answer:?}");
}

#[tokio::test]
async fn names_sprayed_once_leave_no_rows_behind() {
    let broker = TestBroker::ready().await;
    let store = broker.broker.store();
    let burst = broker.broker.inner.config.login_source_burst;
    let mut sprayed = Vec::new();
    for source in 1..=2u16 {
        let client = client_from(source);
        for n in 0..burst {
            let name = format!("spray{source}x{n}");
            let answer = login_with(&broker.addr, &client, &name, "x", "000000").await;
            assert_eq!(answer.status, 401, "{answer:?}");
            sprayed.push(name);
        }
    }
    for name in &sprayed {
        assert!(store.throttle(name).await.unwrap().is_some(), "{name}");
    }
    // Two hours later the spray is forgotten: each new attempt deletes a few stale rows.
    broker.clock.advance(Duration::from_secs(2 * 3600));
    let client = client_from(3);
    for n in 0..3 {
        let answer = login_with(&broker.addr, &client, &format!("later{n}"), "x", "000000").await;
        assert_eq!(answer.status, 401, "{answer:?}");
    }
    let mut left = Vec::new();
    for name in &sprayed {
        if store.throttle(name).await.unwrap().is_some() {
            left.push(name.clone());
        }
    }
    assert!(
        left.is_empty(),
        "{} of {} sprayed names still have a login_failures row: {left:?}",
        left.len(),
        sprayed.len()
    );
    for n in 0..3 {
        let row = store.throttle(&format!("later{n}")).await.unwrap().unwrap();
        assert_eq!(row.n_failures, 1);
    }
}

/// The aggregate events' counts, and the full refusals, by kind of refusal.
fn refusals_by_kind(events: &[mayfly_store::StoredEvent], kind: &str) -> (usize, u64, usize) {
    let mut n_full = 0;
    let mut n_counted = 0;
    let mut n_aggregates = 0;
    for event in events {
        let body: Value = serde_json::from_str(&event.body).unwrap();
        if event.kind == kind {
            n_full += 1;
        }
        if event.kind == "auth.refused.aggregate" && body["details"]["refusal_kind"] == kind {
            n_aggregates += 1;
            n_counted += body["details"]["n_refused"].as_u64().unwrap();
        }
    }
    (n_full, n_counted, n_aggregates)
}

#[tokio::test]
async fn a_thousand_refused_calls_leave_few_events_that_count_them_all() {
    let broker = TestBroker::ready().await;
    let (n_no_token, n_not_found) = (600, 400);
    let client = client_from(7);
    let refuse = |n: u64| {
        let client = client.clone();
        let addr = broker.addr.clone();
        async move {
            let (path, expected) = if n < n_no_token {
                ("/v1/auth/token/lookup-self".to_owned(), 401)
            } else {
                (format!("/v1/no-such-thing/{n}"), 404)
            };
            let response = client.get(format!("{addr}{path}")).send().await.unwrap();
            assert_eq!(response.status().as_u16(), expected, "{path}");
        }
    };
    let started = std::time::Instant::now();
    // All but the last ten now, ...
    for n in 0..n_no_token + n_not_found - 10 {
        refuse(n).await;
    }
    let store = broker.broker.store();
    let n_written = |events: &[mayfly_store::StoredEvent]| {
        events
            .iter()
            .filter(|e| {
                ["auth.refused", "http.refused", "auth.refused.aggregate"]
                    .contains(&e.kind.as_str())
            })
            .count()
    };
    // Per window of 2 s: for each of the two kinds, the first refusal in full and one count.
    let n_windows = started.elapsed().as_secs() / 2 + 2;
    let at_most = usize::try_from(4 * n_windows).unwrap();
    let events = store.audit_events(0, 100_000).await.unwrap();
    assert!(
        n_written(&events) <= at_most,
        "{} audit events for 1000 refused calls (at most {at_most} expected)",
        n_written(&events)
    );
    // The counts are written every window, without waiting for the broker to stop.
    let mut waited = Duration::ZERO;
    loop {
        let events = store.audit_events(0, 100_000).await.unwrap();
        if events.iter().any(|e| e.kind == "auth.refused.aggregate") {
            break;
        }
        assert!(
            waited < Duration::from_secs(30),
            "no aggregate event after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    // ... and the last ten just after that window closed, so that their counts are left for
    // the flush at shutdown: none is lost.
    for n in n_no_token + n_not_found - 10..n_no_token + n_not_found {
        refuse(n).await;
    }
    let handle = broker.broker.clone();
    broker.stop().await;
    let events = handle.store().audit_events(0, 100_000).await.unwrap();
    let at_most = usize::try_from(4 * (started.elapsed().as_secs() / 2 + 2)).unwrap();
    assert!(
        n_written(&events) <= at_most,
        "{} audit events for 1000 refused calls (at most {at_most} expected)",
        n_written(&events)
    );
    let (full, counted, aggregates) = refusals_by_kind(&events, "auth.refused");
    assert!(aggregates >= 1);
    assert_eq!(
        u64::try_from(full).unwrap() + counted,
        n_no_token,
        "refused lookups: {full} in full + {counted} counted"
    );
    let (full, counted, _) = refusals_by_kind(&events, "http.refused");
    assert_eq!(
        u64::try_from(full).unwrap() + counted,
        n_not_found,
        "unknown paths: {full} in full + {counted} counted"
    );
    for event in events.iter().filter(|e| e.kind == "auth.refused.aggregate") {
        assert!(
            event.body.contains("\"source\":\"127.0.0.7\""),
            "{}",
            event.body
        );
    }
}
