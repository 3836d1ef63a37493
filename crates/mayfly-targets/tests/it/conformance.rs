//! One lifecycle every target must pass: after `issue` the login works; a second `issue` converges;
//! after `revoke` the login is refused and a live session is gone; `verify_revoked` returns a
//! proof; a second `revoke`, and a `revoke` of something that never existed, succeed.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use mayfly_core::{LoginName, Timestamp};
use mayfly_targets::{IssuePlan, RoleSpec, Target};
use secrecy::SecretString;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a test uses a credential on the real system.
pub trait Probe: Send + Sync {
    type Session: Send;
    /// Logs in; `Err` with the system's refusal.
    fn login<'a>(
        &'a self,
        login: &'a LoginName,
        secret: &'a SecretString,
    ) -> BoxFuture<'a, Result<Self::Session, String>>;
    /// Whether an open session still works.
    fn alive<'a>(&'a self, session: &'a mut Self::Session) -> BoxFuture<'a, bool>;
}

pub fn new_login() -> LoginName {
    LoginName::for_grant(&uuid::Uuid::now_v7())
}

pub fn new_secret() -> SecretString {
    SecretString::from(format!("Pw{}", uuid::Uuid::now_v7().simple()))
}

/// A fresh login with a fresh secret, issued on `target` for 15 minutes.
pub async fn issue_fresh(target: &dyn Target, role: &RoleSpec) -> (LoginName, SecretString) {
    let login = new_login();
    let secret = new_secret();
    target
        .issue(&IssuePlan {
            login: &login,
            secret: &secret,
            role,
            expires_at: in_minutes(15),
            public_key: None,
            issued_at: in_minutes(0),
        })
        .await
        .unwrap();
    (login, secret)
}

pub fn in_minutes(minutes: u64) -> Timestamp {
    let now = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap();
    Timestamp::from_unix_ms((now + Duration::from_secs(minutes * 60)).as_millis() as i64)
}

pub async fn lifecycle<P: Probe>(target: &dyn Target, role: &RoleSpec, probe: &P) {
    target.check_role(role).unwrap();
    let login = new_login();
    let secret = new_secret();
    let plan = IssuePlan {
        login: &login,
        secret: &secret,
        role,
        expires_at: in_minutes(15),
        public_key: None,
        issued_at: in_minutes(0),
    };
    target.issue(&plan).await.unwrap();
    let mut session = probe.login(&login, &secret).await.unwrap();
    assert!(probe.alive(&mut session).await);
    // A wrong secret is refused: the system checks what we set.
    assert!(probe.login(&login, &new_secret()).await.is_err());
    // Issue again (a retry after a crash): converges, still works.
    target.issue(&plan).await.unwrap();
    assert!(probe.login(&login, &secret).await.is_ok());
    assert!(target.managed_logins().await.unwrap().contains(&login));

    target.revoke(&login, Some(role)).await.unwrap();
    assert!(
        !probe.alive(&mut session).await,
        "the live session survived the revocation"
    );
    let refused = probe.login(&login, &secret).await;
    assert!(refused.is_err(), "a login after revocation worked");
    let proof = target.verify_revoked(&login, &secret).await.unwrap();
    assert!(proof.checks.len() >= 2, "{proof:?}");
    assert!(!target.managed_logins().await.unwrap().contains(&login));

    target.revoke(&login, Some(role)).await.unwrap();
    target.revoke(&new_login(), Some(role)).await.unwrap();

    // Two revocations of the same credential at once (a claim that timed out and was taken over
    // by another node) both succeed, and it is gone.
    for _ in 0..3 {
        let (login, secret) = issue_fresh(target, role).await;
        let (a, b) = tokio::join!(
            target.revoke(&login, Some(role)),
            target.revoke(&login, Some(role))
        );
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        assert!(probe.login(&login, &secret).await.is_err());
    }
}

/// The expiry engine's batch: several credentials revoked in one call, with a live session among
/// them and one that never existed; one answer per item, every credential refused after.
pub async fn batch<P: Probe>(target: &dyn Target, role: &RoleSpec, probe: &P) {
    let mut issued = Vec::new();
    for _ in 0..3 {
        let (login, secret) = issue_fresh(target, role).await;
        issued.push((login, secret));
    }
    let mut sessions = Vec::new();
    for (login, secret) in &issued[..2] {
        sessions.push(probe.login(login, secret).await.unwrap());
    }
    let mut items: Vec<(LoginName, Option<RoleSpec>)> = issued
        .iter()
        .map(|(login, _)| (login.clone(), Some(role.clone())))
        .collect();
    items.push((new_login(), Some(role.clone())));
    let results = target.revoke_many(&items).await;
    assert_eq!(results.len(), items.len());
    for result in &results {
        assert!(result.is_ok(), "{result:?}");
    }
    for session in &mut sessions {
        assert!(!probe.alive(session).await, "a live session survived");
    }
    let managed = target.managed_logins().await.unwrap();
    for (login, secret) in &issued {
        assert!(
            probe.login(login, secret).await.is_err(),
            "a login after revocation worked"
        );
        assert!(!managed.contains(login));
        target.verify_revoked(login, secret).await.unwrap();
    }
    // Again: all already gone, all fine.
    assert!(target.revoke_many(&items).await.iter().all(Result::is_ok));
}

/// The target cannot be reached at revoke time: the revocation fails as retryable (the engine
/// keeps it queued and reports it), and succeeds once the target is back, proven.
pub async fn unreachable_then_back<P: Probe>(
    target: &dyn Target,
    role: &RoleSpec,
    probe: &P,
    gate: &mayfly_testkit::gate::Gate,
) {
    let (login, secret) = issue_fresh(target, role).await;
    gate.close().await;
    let error = target.revoke(&login, Some(role)).await.unwrap_err();
    assert!(
        matches!(error, mayfly_targets::TargetError::Unavailable { .. }),
        "{error}"
    );
    assert!(error.is_retryable());
    let results = target
        .revoke_many(&[(login.clone(), Some(role.clone()))])
        .await;
    assert!(
        results.iter().all(|r| r
            .as_ref()
            .is_err_and(mayfly_targets::TargetError::is_retryable)),
        "{results:?}"
    );
    // Still there: nothing was revoked while the target was away.
    assert!(probe.login(&login, &secret).await.is_ok());
    gate.open();
    target.revoke(&login, Some(role)).await.unwrap();
    assert!(probe.login(&login, &secret).await.is_err());
    target.verify_revoked(&login, &secret).await.unwrap();
}
