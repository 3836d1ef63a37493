//! The Redis target against the machine's Redis (127.0.0.1:6379, default user without a password).

use mayfly_core::LoginName;
use mayfly_targets::redis::RedisTarget;
use mayfly_targets::resp::{Reply, Resp};
use mayfly_targets::{RoleSpec, Target, TargetError};
use secrecy::{ExposeSecret, SecretString};

use crate::conformance::{self, BoxFuture, Probe};

const URL: &str = "redis://127.0.0.1:6379";

fn role() -> RoleSpec {
    RoleSpec {
        name: "reader".into(),
        creation_sql: "~mayfly-it:* +@read +ping".into(),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    }
}

/// Logs in to the machine's Redis as the credential would be used.
pub(crate) struct RedisProbe;

impl Probe for RedisProbe {
    type Session = Resp;

    fn login<'a>(
        &'a self,
        login: &'a LoginName,
        secret: &'a SecretString,
    ) -> BoxFuture<'a, Result<Resp, String>> {
        Box::pin(async move {
            let connection = Resp::connect("127.0.0.1", 6379)
                .await
                .map_err(|e| e.to_string())?;
            authenticate(connection, login, secret).await
        })
    }

    fn alive<'a>(&'a self, session: &'a mut Resp) -> BoxFuture<'a, bool> {
        alive(session)
    }
}

/// `AUTH` as `login` on an open connection (plain or TLS); `Err` with Redis's refusal.
pub(crate) async fn authenticate(
    mut connection: Resp,
    login: &LoginName,
    secret: &SecretString,
) -> Result<Resp, String> {
    connection
        .call(&[
            b"AUTH",
            login.as_str().as_bytes(),
            secret.expose_secret().as_bytes(),
        ])
        .await
        .map_err(|e| e.to_string())?
        .into_result()
        .map_err(|e| e.to_string())?;
    Ok(connection)
}

/// Whether a session still reads a key the roles allow.
pub(crate) fn alive(session: &mut Resp) -> BoxFuture<'_, bool> {
    Box::pin(async move {
        matches!(
            session.call(&[b"GET", b"mayfly-it:x"]).await,
            Ok(Reply::Bulk(_))
        )
    })
}

#[tokio::test]
async fn redis_lifecycle() {
    let target = RedisTarget::new("cache", URL, None).unwrap();
    conformance::lifecycle(&target, &role(), &RedisProbe).await;
    conformance::batch(&target, &role(), &RedisProbe).await;
}

#[tokio::test]
async fn redis_unreachable_then_back() {
    let gate = mayfly_testkit::gate::Gate::start("127.0.0.1:6379".parse().unwrap()).await;
    let target =
        RedisTarget::new("cache", &format!("redis://127.0.0.1:{}", gate.port), None).unwrap();
    conformance::unreachable_then_back(&target, &role(), &RedisProbe, &gate).await;
}

/// The role's rules are what the user gets, and nothing more: a key outside the pattern and a
/// write are refused by Redis itself. The password is stored only as its SHA-256, and only that
/// SHA-256 went over the wire: the target talks to Redis through a recording gate, whose log holds
/// every byte the target sent.
#[tokio::test]
async fn the_user_gets_exactly_the_roles_rules() {
    let gate = mayfly_testkit::gate::Gate::start_recording("127.0.0.1:6379".parse().unwrap()).await;
    let target =
        RedisTarget::new("cache", &format!("redis://127.0.0.1:{}", gate.port), None).unwrap();
    let (login, secret) = conformance::issue_fresh(&target, &role()).await;
    // The probe logs in straight to Redis, not through the gate: its AUTH carries the secret.
    let mut session = RedisProbe.login(&login, &secret).await.unwrap();
    assert!(matches!(
        session.call(&[b"GET", b"mayfly-it:a"]).await.unwrap(),
        Reply::Bulk(_)
    ));
    for command in [
        &[&b"GET"[..], b"other:a"][..],
        &[b"SET", b"mayfly-it:a", b"1"],
        &[b"ACL", b"LIST"],
        &[b"CONFIG", b"GET", b"*"],
    ] {
        let reply = session.call(command).await.unwrap();
        assert!(
            matches!(reply, Reply::Error(ref e) if e.starts_with("NOPERM")),
            "{reply:?}"
        );
    }

    let hash = sha256_hex(secret.expose_secret());
    let mut admin = Resp::connect("127.0.0.1", 6379).await.unwrap();
    let user = admin
        .call(&[b"ACL", b"GETUSER", login.as_str().as_bytes()])
        .await
        .unwrap();
    let user = getuser_fields(&user);
    assert_eq!(
        user["passwords"].strings(),
        std::slice::from_ref(&hash),
        "Redis must hold exactly the password's SHA-256"
    );
    assert!(user["flags"].strings().contains(&"on".to_owned()));
    assert_eq!(
        user["commands"].text().as_deref(),
        Some("-@all +@read +ping")
    );

    let sent = gate.sent();
    let sent_hash = format!("#{hash}");
    assert!(
        sent.iter()
            .any(|bytes| contains(bytes, sent_hash.as_bytes())),
        "the target's ACL SETUSER with #<sha256> did not go through the gate"
    );
    assert!(
        !sent
            .iter()
            .any(|bytes| contains(bytes, secret.expose_secret().as_bytes())),
        "the clear password went over the wire to Redis"
    );
    target.revoke(&login, None).await.unwrap();
}

/// The password's SHA-256 in lowercase hex, as `ACL GETUSER` shows it.
fn sha256_hex(secret: &str) -> String {
    mayfly_crypto::sha256(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `ACL GETUSER`'s reply, a flat list of name and value, by name.
fn getuser_fields(reply: &Reply) -> std::collections::HashMap<String, Reply> {
    let Reply::Array(Some(items)) = reply else {
        panic!("ACL GETUSER found no user: {reply:?}");
    };
    items
        .chunks(2)
        .map(|pair| (pair[0].text().unwrap(), pair[1].clone()))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Rules that would change the user's state, password or add users are refused before anything
/// reaches Redis, whatever their spacing; each rule is one argument, so none can smuggle another
/// command.
#[tokio::test]
async fn hostile_roles_are_refused() {
    let target = RedisTarget::new("cache", URL, None).unwrap();
    for rules in [
        "~* +@all nopass",
        "~* +@all >known-password",
        "+@all\r\nACL SETUSER evil on nopass +@all",
        "~* on",
        "~* resetpass",
        "#0123",
        "`~*`",
        "~'a b'",
        "",
    ] {
        let role = RoleSpec {
            creation_sql: rules.into(),
            ..role()
        };
        assert!(
            matches!(
                target.check_role(&role),
                Err(TargetError::InvalidRole { .. })
            ),
            "{rules:?}"
        );
    }
    let with_script = RoleSpec {
        revocation_sql: Some("FLUSHALL".into()),
        ..role()
    };
    assert!(target.check_role(&with_script).is_err());
    target.check_role(&role()).unwrap();
}
