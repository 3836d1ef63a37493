//! The rotation of the broker's own admin secrets (issue 19, point 6): `POST
//! /v1/targets/{name}/rotate-admin` sets a fresh random password on the real target that only the
//! broker knows: the old one is refused by the server, grants still work, the new one is nowhere
//! in the store or the audit file in clear. Admins only; hostile names and certificate targets are
//! refused; a schedule rotates when due; the age is in `/metrics` and the target listing.

use std::time::Duration;

use mayfly_crypto::ExposeSecret as _;
use mayfly_targets::resp::Resp;
use mayfly_testkit::TestBroker;
use mayfly_testkit::access::ask;
use serde_json::json;

fn redis_cli(args: &[&str]) {
    let output = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// Whether Redis takes `password` for `user`.
async fn redis_auth(user: &str, password: &str) -> bool {
    let mut session = Resp::connect("127.0.0.1", 6379).await.unwrap();
    session
        .call(&[b"AUTH", user.as_bytes(), password.as_bytes()])
        .await
        .unwrap()
        .into_result()
        .is_ok()
}

/// Every file under `dir`, searched for `needle`'s bytes.
fn found_in_files(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn redis_admin_rotation_refuses_the_old_password_and_grants_still_work() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin();
    let user = format!(
        "mayfly_rot_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let old = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let secret = format!(">{old}");
    redis_cli(&[
        "ACL", "SETUSER", &user, "reset", "on", &secret, "~*", "&*", "+@all",
    ]);
    let name = "cache-rot";
    let added = broker
        .expect(
            200,
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(
                json!({"kind": "redis", "name": name, "url": "redis://127.0.0.1:6379",
                "admin_user": user, "admin_password": old, "rotate_admin_every_seconds": 3600}),
            ),
        )
        .await;
    assert_eq!(added["rotate_admin_every_seconds"], 3600);
    broker
        .add_role(name, "reader", 3600, "~rot:* +@read +ping")
        .await;
    broker
        .set_policy(&format!("@id(\"admins\") permit (principal in Group::\"admins\", action == Action::\"request\", resource in Target::\"{name}\");"))
        .await;
    broker
        .grant(&admin, ask(name, "reader", 600, "before"))
        .await;

    // Not an admin, a hostile or unknown name, a certificate target: refused, nothing rotated.
    let alice = broker.login("alice").await;
    broker
        .expect(
            403,
            "POST",
            &format!("/v1/targets/{name}/rotate-admin"),
            Some(&alice),
            None,
        )
        .await;
    broker
        .expect(
            401,
            "POST",
            &format!("/v1/targets/{name}/rotate-admin"),
            None,
            None,
        )
        .await;
    for bad in ["..%2F..%2Fetc", "a%0Ab", &"x".repeat(300)] {
        broker
            .expect(
                400,
                "POST",
                &format!("/v1/targets/{bad}/rotate-admin"),
                Some(&admin),
                None,
            )
            .await;
    }
    broker
        .expect(
            404,
            "POST",
            "/v1/targets/nope/rotate-admin",
            Some(&admin),
            None,
        )
        .await;
    assert!(redis_auth(&user, &old).await, "nothing was rotated yet");

    let rotated = broker
        .expect(
            200,
            "POST",
            &format!("/v1/targets/{name}/rotate-admin"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(rotated["target"], name);
    assert!(
        !redis_auth(&user, &old).await,
        "the old admin password still works"
    );
    let new = broker.broker.admin_secret(name).await.unwrap();
    assert_ne!(new.expose_secret(), old);
    assert!(new.expose_secret().len() >= 43);
    assert!(redis_auth(&user, new.expose_secret()).await);
    // Grants still work, with the new admin secret (a fresh client of the target).
    broker
        .grant(&admin, ask(name, "reader", 600, "after"))
        .await;

    // The new password is nowhere in clear: not in the store's files, not in the audit file.
    // The file sink follows the store's chain a little later: wait for it (bounded).
    let mut events = String::new();
    for _ in 0..100 {
        events = std::fs::read_to_string(broker.audit_file()).unwrap_or_default();
        if events.contains("target.admin_rotated") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(events.contains("target.admin_rotated"), "not audited");
    let found = found_in_files(broker.dir.path(), new.expose_secret().as_bytes());
    assert!(found.is_empty(), "the admin password in clear in {found:?}");

    // Listed with its age, and in /metrics.
    let targets = broker
        .expect(200, "GET", "/v1/targets", Some(&admin), None)
        .await;
    let listed = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap()
        .clone();
    assert_eq!(
        listed["admin_rotated_at_ms"],
        rotated["admin_rotated_at_ms"]
    );
    assert!(listed.get("admin_rotation_error").is_none(), "{listed}");

    // The schedule: an hour later it is due, and the task rotates it again.
    broker.clock.advance(Duration::from_secs(3601));
    let now = broker.broker.now();
    assert!(broker.broker.rotate_due_admins(now).await.unwrap() >= 1);
    let newer = broker.broker.admin_secret(name).await.unwrap();
    assert_ne!(newer.expose_secret(), new.expose_secret());
    assert!(!redis_auth(&user, new.expose_secret()).await);
    assert!(redis_auth(&user, newer.expose_secret()).await);
    let metrics = broker
        .raw()
        .await
        .get(format!("{}/metrics", broker.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "mayfly_target_admin_secret_age_seconds{{target=\"{name}\"}}"
        )),
        "{metrics}"
    );
    redis_cli(&["ACL", "DELUSER", &user]);
}

#[tokio::test]
async fn schedules_are_bounded_and_certificate_targets_have_no_admin_secret() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin();
    for every in [0, 59, 3599, 400 * 86_400] {
        let answer = broker
            .expect(
                400,
                "POST",
                "/v1/targets",
                Some(&admin),
                Some(json!({"kind": "redis", "name": "c", "url": "redis://127.0.0.1:6379",
                    "admin_user": "default", "admin_password": "", "rotate_admin_every_seconds": every})),
            )
            .await;
        assert!(
            answer.to_string().contains("rotate_admin_every_seconds"),
            "{answer}"
        );
    }
    broker
        .expect(
            200,
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(
                json!({"kind": "ssh", "name": "hosts", "url": "ssh://127.0.0.1:22",
                "admin_user": "", "admin_password": ""}),
            ),
        )
        .await;
    let answer = broker
        .expect(
            400,
            "POST",
            "/v1/targets/hosts/rotate-admin",
            Some(&admin),
            None,
        )
        .await;
    assert!(answer.to_string().contains("no admin secret"), "{answer}");
}

/// Deletes a Redis ACL user when dropped (even when the test fails).
struct RedisUser(String);

impl Drop for RedisUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", "6379", "ACL", "DELUSER", &self.0])
            .output();
    }
}

/// The machine's Redis has neither an ACL file nor a configuration file: a rotated password
/// lives in its memory only, and a restart brings the old one back. The broker keeps that old
/// password (sealed, as `admin-previous`, the oldest one across rotations); when the target
/// refuses the current one and takes the previous one, the broker sets the current one back.
#[tokio::test]
async fn redis_rotation_in_memory_keeps_the_previous_password() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin();
    let user = RedisUser(format!(
        "mayfly_prev_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    ));
    let old = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let restart = || {
        // What a restart of this Redis does to the user: its password from before the rotations.
        redis_cli(&["ACL", "SETUSER", &user.0, "resetpass", &format!(">{old}")]);
    };
    restart();
    redis_cli(&["ACL", "SETUSER", &user.0, "on", "~*", "&*", "+@all"]);
    let name = "cache-prev";
    broker
        .expect(
            200,
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(
                json!({"kind": "redis", "name": name, "url": "redis://127.0.0.1:6379",
                "admin_user": user.0, "admin_password": old}),
            ),
        )
        .await;
    broker
        .add_role(name, "reader", 3600, "~prev:* +@read +ping")
        .await;
    broker
        .set_policy(&format!("@id(\"admins\") permit (principal in Group::\"admins\", action == Action::\"request\", resource in Target::\"{name}\");"))
        .await;
    let previous_path = format!("targets/{name}/admin-previous");
    assert!(
        broker
            .broker
            .store()
            .secret(&previous_path)
            .await
            .unwrap()
            .is_none()
    );

    for round in 0..2 {
        broker
            .expect(
                200,
                "POST",
                &format!("/v1/targets/{name}/rotate-admin"),
                Some(&admin),
                None,
            )
            .await;
        let current = broker.broker.admin_secret(name).await.unwrap();
        assert!(redis_auth(&user.0, current.expose_secret()).await);
        assert!(!redis_auth(&user.0, &old).await);
        let kept = broker
            .broker
            .store()
            .secret(&previous_path)
            .await
            .unwrap()
            .expect("the previous password is not kept");
        assert!(
            !kept.windows(old.len()).any(|w| w == old.as_bytes()),
            "the previous password in clear"
        );
        let rotated = broker
            .broker
            .store()
            .stored_audit_events(0, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .rev()
            .find(|e| e.kind == "target.admin_rotated")
            .map(|e| serde_json::from_str::<serde_json::Value>(&e.body).unwrap())
            .unwrap();
        assert_eq!(rotated["details"]["previous_kept"], true, "{rotated}");

        // Redis restarts: it takes the old password only. The broker's next client of the target
        // is refused the current one, logs in with the previous one and sets the current back.
        restart();
        assert!(!redis_auth(&user.0, current.expose_secret()).await);
        broker
            .broker
            .target_failed(
                name,
                &mayfly_targets::TargetError::AdminLogin {
                    target: name.into(),
                    reason: "WRONGPASS".into(),
                },
            )
            .await;
        broker
            .grant(
                &admin,
                ask(name, "reader", 600, &format!("after restart {round}")),
            )
            .await;
        assert!(
            redis_auth(&user.0, current.expose_secret()).await,
            "the current password was not set back (round {round})"
        );
        assert!(!redis_auth(&user.0, &old).await);
        let events = broker
            .broker
            .store()
            .stored_audit_events(0, 1_000_000)
            .await
            .unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| e.kind == "target.admin_secret.reapplied")
                .count(),
            round + 1
        );
        assert!(
            events
                .iter()
                .all(|e| !e.body.contains(&old) && !e.body.contains(current.expose_secret()))
        );
    }
}

async fn mariadb_login(user: &str, password: &str) -> Result<sqlx::MySqlConnection, sqlx::Error> {
    use sqlx::ConnectOptions as _;
    let mut options = sqlx::mysql::MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(3306)
        .username(user)
        .log_statements(tracing::log::LevelFilter::Off);
    if !password.is_empty() {
        options = options.password(password);
    }
    options.connect().await
}

/// MariaDB: the least-privileged admin of docs/targets/mysql.md changes its own password on the
/// real server (`SET PASSWORD = <hash>`): the old one is
/// refused afterwards, the new one logs in, grants go on working.
#[tokio::test]
async fn mariadb_admin_rotation_refuses_the_old_password_and_grants_still_work() {
    let broker = TestBroker::ready().await;
    let admin = broker.admin();
    let user = format!(
        "mayfly_rot_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let old = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let mut root = mariadb_login("root", "").await.unwrap();
    // Names and passwords made by this test (hex), nothing from outside.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE IF NOT EXISTS mayfly_rot;
         CREATE USER '{user}'@'%' IDENTIFIED BY '{old}';
         GRANT CREATE USER, PROCESS, CONNECTION ADMIN, RELOAD ON *.* TO '{user}'@'%';
         GRANT SELECT ON mysql.* TO '{user}'@'%';
         GRANT SELECT ON mayfly_rot.* TO '{user}'@'%' WITH GRANT OPTION;"
    )))
    .execute(&mut root)
    .await
    .unwrap();
    let name = "maria-rot";
    broker
        .expect(
            200,
            "POST",
            "/v1/targets",
            Some(&admin),
            Some(
                json!({"kind": "mysql", "name": name, "url": "mysql://127.0.0.1:3306",
                "admin_user": user, "admin_password": old}),
            ),
        )
        .await;
    broker
        .add_role(
            name,
            "reader",
            3600,
            "GRANT SELECT ON mayfly_rot.* TO {{name}};",
        )
        .await;
    broker
        .set_policy(&format!("@id(\"admins\") permit (principal in Group::\"admins\", action == Action::\"request\", resource in Target::\"{name}\");"))
        .await;
    broker
        .grant(&admin, ask(name, "reader", 600, "before"))
        .await;
    assert!(
        mariadb_login(&user, &old).await.is_ok(),
        "nothing rotated yet"
    );

    broker
        .expect(
            200,
            "POST",
            &format!("/v1/targets/{name}/rotate-admin"),
            Some(&admin),
            None,
        )
        .await;
    let new = broker.broker.admin_secret(name).await.unwrap();
    assert_ne!(new.expose_secret(), old);
    let refused = mariadb_login(&user, &old).await;
    let new_works = mariadb_login(&user, new.expose_secret()).await;
    let (status, after) = broker
        .call(
            "POST",
            "/v1/requests",
            Some(&admin),
            Some(json!({"target": name, "role": "reader", "ttl_seconds": 600, "reason": "after"})),
        )
        .await;
    assert_eq!(status, 200, "{after}");
    let id = after["id"].as_str().unwrap_or_default().to_owned();
    let (activated, credential) = broker
        .call(
            "POST",
            &format!("/v1/requests/{id}/activate"),
            Some(&admin),
            None,
        )
        .await;
    let found = found_in_files(broker.dir.path(), new.expose_secret().as_bytes());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP USER IF EXISTS '{user}'@'%'"
    )))
    .execute(&mut root)
    .await
    .unwrap();
    assert!(
        refused.is_err(),
        "the old admin password still logs in (the new one: {:?})",
        new_works.as_ref().err()
    );
    assert!(new_works.is_ok(), "{:?}", new_works.err());
    assert_eq!(activated, 200, "a grant after the rotation: {credential}");
    let login = mariadb_login(
        credential["username"].as_str().unwrap_or_default(),
        credential["password"].as_str().unwrap_or_default(),
    )
    .await;
    assert!(login.is_ok(), "the grant's credential: {:?}", login.err());
    assert!(found.is_empty(), "the admin password in clear in {found:?}");
}
