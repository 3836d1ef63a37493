//! Init, seal and unseal: 3 of 5 shares unseal, 2 do not, wrong or corrupted shares are refused
//! clearly and never become a wrong key; a sealed broker answers 503 to everything but the seal.

use mayfly_testkit::TestBroker;
use serde_json::json;

#[tokio::test]
async fn sealed_broker_refuses_work_and_unseals_with_three_of_five() {
    let broker = TestBroker::uninitialized().await;
    let (status, body) = broker.call("GET", "/v1/sys/seal-status", None, None).await;
    assert_eq!(
        (status, body["initialized"].clone(), body["sealed"].clone()),
        (200, json!(false), json!(true))
    );
    let (status, body) = broker
        .call("GET", "/v1/auth/token/lookup-self", Some("x"), None)
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_initialized");

    let (status, init) = broker
        .call(
            "POST",
            "/v1/sys/init",
            None,
            Some(json!({"shares": 5, "threshold": 3})),
        )
        .await;
    assert_eq!(status, 200, "{init}");
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shares.len(), 5);
    assert!(init["setup_code"].as_str().unwrap().len() >= 16);

    // A second init is refused.
    let (status, _) = broker
        .call(
            "POST",
            "/v1/sys/init",
            None,
            Some(json!({"shares": 5, "threshold": 3})),
        )
        .await;
    assert_eq!(status, 409);

    // Sealed: work is refused with 503, health and seal status answer.
    let (status, body) = broker
        .call(
            "POST",
            "/v1/auth/password/login",
            None,
            Some(json!({"username": "a", "password": "b", "totp": "1"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("sealed"))
    );
    let (status, health) = broker.call("GET", "/v1/sys/health", None, None).await;
    assert_eq!((status, health["sealed"].clone()), (200, json!(true)));

    // Two shares are not enough.
    for share in &shares[..2] {
        let (status, body) = broker
            .call(
                "POST",
                "/v1/sys/unseal",
                None,
                Some(json!({"share": share})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sealed"], true);
    }
    let (_, body) = broker.call("GET", "/v1/sys/seal-status", None, None).await;
    assert_eq!(
        (body["progress"].clone(), body["sealed"].clone()),
        (json!(2), json!(true))
    );
    let (status, _) = broker
        .call("GET", "/v1/sys/audit/public-key", None, None)
        .await;
    assert_eq!(status, 503);

    // The same share twice is refused and does not count.
    let (status, body) = broker
        .call(
            "POST",
            "/v1/sys/unseal",
            None,
            Some(json!({"share": shares[1]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // The third (a different one) unseals.
    let (status, body) = broker
        .call(
            "POST",
            "/v1/sys/unseal",
            None,
            Some(json!({"share": shares[4]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sealed"], false);
    let (status, _) = broker
        .call("GET", "/v1/sys/audit/public-key", None, None)
        .await;
    assert_eq!(status, 200);

    // The first admin, with the one-time setup code; a second use is refused.
    let setup = json!({"setup_code": init["setup_code"], "username": "root", "password": "a long enough password"});
    let (status, user) = broker
        .call("POST", "/v1/sys/setup", None, Some(setup.clone()))
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["groups"], json!(["admins"]));
    let setup2 = json!({"setup_code": init["setup_code"], "username": "root2", "password": "a long enough password"});
    let (status, _) = broker
        .call("POST", "/v1/sys/setup", None, Some(setup2))
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn corrupted_and_foreign_shares_are_refused_clearly() {
    let broker = TestBroker::uninitialized().await;
    let (_, init) = broker
        .call(
            "POST",
            "/v1/sys/init",
            None,
            Some(json!({"shares": 5, "threshold": 3})),
        )
        .await;
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();

    // One character changed: refused on its own, before it can take part in a combination.
    let mut corrupted = shares[0].clone().into_bytes();
    let last = corrupted.len() - 3;
    corrupted[last] = if corrupted[last] == b'A' { b'B' } else { b'A' };
    let corrupted = String::from_utf8(corrupted).unwrap();
    let (status, body) = broker
        .call(
            "POST",
            "/v1/sys/unseal",
            None,
            Some(json!({"share": corrupted})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("share"),
        "{body}"
    );

    // A share of another broker.
    let other = TestBroker::uninitialized().await;
    let (_, other_init) = other
        .call(
            "POST",
            "/v1/sys/init",
            None,
            Some(json!({"shares": 3, "threshold": 2})),
        )
        .await;
    let (status, body) = broker
        .call(
            "POST",
            "/v1/sys/unseal",
            None,
            Some(json!({"share": other_init["shares"][0]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Garbage.
    let (status, body) = broker
        .call(
            "POST",
            "/v1/sys/unseal",
            None,
            Some(json!({"share": "hello"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (_, status_body) = broker.call("GET", "/v1/sys/seal-status", None, None).await;
    assert_eq!(status_body["progress"], 0);
    assert_eq!(status_body["sealed"], true);

    // The right shares still work afterwards.
    for share in &shares[2..5] {
        let (status, _) = broker
            .call(
                "POST",
                "/v1/sys/unseal",
                None,
                Some(json!({"share": share})),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (_, status_body) = broker.call("GET", "/v1/sys/seal-status", None, None).await;
    assert_eq!(status_body["sealed"], false);
}

#[tokio::test]
async fn the_unseal_attempt_is_audited_without_the_share() {
    let broker = TestBroker::uninitialized().await;
    let (_, init) = broker
        .call(
            "POST",
            "/v1/sys/init",
            None,
            Some(json!({"shares": 3, "threshold": 2})),
        )
        .await;
    let share = init["shares"][0].as_str().unwrap().to_owned();
    broker
        .call(
            "POST",
            "/v1/sys/unseal",
            None,
            Some(json!({"share": share})),
        )
        .await;
    broker
        .call(
            "POST",
            "/v1/sys/unseal",
            None,
            Some(json!({"share": init["shares"][1]})),
        )
        .await;
    let events = broker.broker.store().audit_events(0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds[0], "sys.init");
    assert!(
        kinds.iter().filter(|k| **k == "sys.unseal").count() >= 2,
        "{kinds:?}"
    );
    for event in &events {
        assert!(
            !event.body.contains(&share),
            "a share leaked into the audit log"
        );
        assert!(
            !event.body.contains(init["setup_code"].as_str().unwrap()),
            "the setup code leaked"
        );
    }
}
