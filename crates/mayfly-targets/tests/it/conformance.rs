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
    LoginName::for_grant(&test_namespace(), &uuid::Uuid::now_v7())
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

// ---------------------------------------------------------------------------------------------
// Certificate targets (SSH, X.509). Their credential is a certificate for the requester's key,
// checked by the system itself (sshd, a TLS service) against the broker's CA; nothing is created
// on the system, so "revoke" is the grant's state in the broker, published as a list (KRL, CRL)
// the system loads. The same contract, in that shape: issued → the system accepts it; the wrong
// key → refused; issue twice → converges; revoked and the list published → refused, while the
// others still work; proof (and no proof while it is still valid); revoke twice, revoke of the
// unknown, concurrent revokes → fine; past its expiry → refused by the system alone; the list's
// source unreachable → a retryable error, proven once it is back.
// ---------------------------------------------------------------------------------------------

/// How a test uses a certificate on the real system.
pub trait CertificateProbe: Send + Sync {
    /// A fresh requester key: what `IssuePlan::public_key` carries (an OpenSSH public key line, a
    /// PEM CSR) and the private key.
    fn new_key(&self) -> (String, SecretString);
    /// Makes the broker's list (KRL, CRL) naming these logins and hands it to the real system.
    fn publish<'a>(&'a self, revoked: &'a [String]) -> BoxFuture<'a, ()>;
    /// Presents a certificate with a private key to the real system; `Err` with its refusal.
    fn present<'a>(
        &'a self,
        certificate: &'a str,
        key: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The broker's side of a certificate target, in memory: which grants were revoked and when each
/// certificate expires (the store, for the server's `StoreList`), and whether it can be reached.
#[derive(Default)]
pub struct MemoryList {
    revoked: std::sync::Mutex<std::collections::HashSet<String>>,
    expiry: std::sync::Mutex<std::collections::HashMap<String, Timestamp>>,
    unreachable: std::sync::atomic::AtomicBool,
}

impl MemoryList {
    /// What the broker records when it issues.
    pub fn record(&self, login: &LoginName, expires_at: Timestamp) {
        self.expiry
            .lock()
            .unwrap()
            .insert(login.to_string(), expires_at);
    }

    /// What the broker records when it revokes: the grant's state.
    pub fn revoke(&self, login: &LoginName) {
        self.revoked.lock().unwrap().insert(login.to_string());
    }

    /// What the published list names: revoked and not yet expired.
    pub fn listed(&self) -> Vec<String> {
        let now = in_minutes(0);
        let expiry = self.expiry.lock().unwrap();
        let mut listed: Vec<String> = self
            .revoked
            .lock()
            .unwrap()
            .iter()
            .filter(|login| expiry.get(*login).is_none_or(|at| *at > now))
            .cloned()
            .collect();
        listed.sort();
        listed
    }

    pub fn set_reachable(&self, reachable: bool) {
        self.unreachable
            .store(!reachable, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl mayfly_targets::RevocationList for MemoryList {
    async fn status(
        &self,
        key_id: &str,
    ) -> Result<mayfly_targets::ListStatus, mayfly_targets::TargetError> {
        use mayfly_targets::ListStatus;
        if self.unreachable.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(mayfly_targets::TargetError::Unavailable {
                target: "store".into(),
                source: "the store cannot be reached".into(),
            });
        }
        let expired = self
            .expiry
            .lock()
            .unwrap()
            .get(key_id)
            .is_some_and(|at| *at <= in_minutes(0));
        Ok(if expired {
            ListStatus::Expired
        } else if self.revoked.lock().unwrap().contains(key_id) {
            ListStatus::Listed
        } else {
            ListStatus::Valid
        })
    }
}

/// A certificate for a fresh key of the probe's, recorded in the list: (login, certificate, key).
pub async fn certify<P: CertificateProbe>(
    target: &dyn Target,
    role: &RoleSpec,
    probe: &P,
    list: &MemoryList,
    expires_at: Timestamp,
) -> (LoginName, String, SecretString) {
    let (public, private) = probe.new_key();
    let login = new_login();
    let connection = target
        .issue(&IssuePlan {
            login: &login,
            secret: &new_secret(),
            role,
            expires_at,
            issued_at: in_minutes(0),
            public_key: Some(&public),
        })
        .await
        .unwrap();
    list.record(&login, expires_at);
    (login, connection.certificate.unwrap(), private)
}

pub async fn certificate_lifecycle<P: CertificateProbe>(
    target: &dyn Target,
    role: &RoleSpec,
    probe: &P,
    list: &MemoryList,
) {
    target.check_role(role).unwrap();
    probe.publish(&list.listed()).await;
    let (public, private) = probe.new_key();
    let login = new_login();
    let plan = IssuePlan {
        login: &login,
        secret: &new_secret(),
        role,
        expires_at: in_minutes(15),
        issued_at: in_minutes(0),
        public_key: Some(&public),
    };
    let certificate = target.issue(&plan).await.unwrap().certificate.unwrap();
    list.record(&login, plan.expires_at);
    probe.present(&certificate, &private).await.unwrap();
    // The system checks possession: the certificate with another key is refused.
    let (_, other_key) = probe.new_key();
    assert!(
        probe.present(&certificate, &other_key).await.is_err(),
        "a certificate was accepted with a key it does not certify"
    );
    // Issue again (a retry after a crash): converges, the new certificate works too.
    let again = target.issue(&plan).await.unwrap().certificate.unwrap();
    probe.present(&again, &private).await.unwrap();
    // Nothing is left on the system to sweep.
    assert!(target.managed_logins().await.unwrap().is_empty());
    // No proof while it is valid: the proof can fail.
    let unproven = target.verify_revoked(&login, &new_secret()).await;
    assert!(
        matches!(
            unproven,
            Err(mayfly_targets::TargetError::NotRevoked { .. })
        ),
        "{unproven:?}"
    );

    let (bystander, bystander_certificate, bystander_key) =
        certify(target, role, probe, list, in_minutes(15)).await;
    target.revoke(&login, Some(role)).await.unwrap();
    list.revoke(&login);
    probe.publish(&list.listed()).await;
    for revoked in [&certificate, &again] {
        let refused = probe.present(revoked, &private).await;
        assert!(refused.is_err(), "a revoked certificate was accepted");
    }
    // The list names that one only.
    probe
        .present(&bystander_certificate, &bystander_key)
        .await
        .unwrap();
    let proof = target.verify_revoked(&login, &new_secret()).await.unwrap();
    assert!(proof.checks.len() >= 2, "{proof:?}");
    assert!(proof.checks[0].contains(login.as_str()), "{proof:?}");
    assert!(
        target
            .verify_revoked(&bystander, &new_secret())
            .await
            .is_err()
    );

    target.revoke(&login, Some(role)).await.unwrap();
    target.revoke(&new_login(), Some(role)).await.unwrap();
    let (a, b) = tokio::join!(
        target.revoke(&bystander, Some(role)),
        target.revoke(&bystander, Some(role))
    );
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");

    // Expiry: the system refuses the certificate by itself, with no list naming it.
    let expires_at = Timestamp::from_unix_ms((in_minutes(0).unix_ms() / 1000 + 3) * 1000);
    let (short, short_certificate, short_key) =
        certify(target, role, probe, list, expires_at).await;
    probe.present(&short_certificate, &short_key).await.unwrap();
    let wait = expires_at.unix_ms() - in_minutes(0).unix_ms() + 1500;
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
    probe.publish(&list.listed()).await;
    assert!(!list.listed().contains(&short.to_string()));
    assert!(
        probe.present(&short_certificate, &short_key).await.is_err(),
        "an expired certificate was accepted"
    );
    let proof = target.verify_revoked(&short, &new_secret()).await.unwrap();
    assert!(proof.checks[0].contains("past its"), "{proof:?}");
}

/// The expiry engine's batch on a certificate target: one answer per item, all fine, each
/// refused once listed.
pub async fn certificate_batch<P: CertificateProbe>(
    target: &dyn Target,
    role: &RoleSpec,
    probe: &P,
    list: &MemoryList,
) {
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(certify(target, role, probe, list, in_minutes(15)).await);
    }
    let mut items: Vec<(LoginName, Option<RoleSpec>)> = issued
        .iter()
        .map(|(login, _, _)| (login.clone(), Some(role.clone())))
        .collect();
    items.push((new_login(), Some(role.clone())));
    let results = target.revoke_many(&items).await;
    assert_eq!(results.len(), items.len());
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for (login, _, _) in &issued {
        list.revoke(login);
    }
    probe.publish(&list.listed()).await;
    for (login, certificate, key) in &issued {
        assert!(probe.present(certificate, key).await.is_err());
        target.verify_revoked(login, &new_secret()).await.unwrap();
    }
    assert!(target.revoke_many(&items).await.iter().all(Result::is_ok));
}

/// Where a certificate target's revocation lives (the broker's store) cannot be reached: the proof
/// fails as retryable (the engine keeps the grant queued and reports it), and succeeds once back.
pub async fn certificate_unreachable_then_back<P: CertificateProbe>(
    target: &dyn Target,
    role: &RoleSpec,
    probe: &P,
    list: &MemoryList,
) {
    let (login, certificate, key) = certify(target, role, probe, list, in_minutes(15)).await;
    target.revoke(&login, Some(role)).await.unwrap();
    list.revoke(&login);
    list.set_reachable(false);
    let error = target
        .verify_revoked(&login, &new_secret())
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    list.set_reachable(true);
    probe.publish(&list.listed()).await;
    assert!(probe.present(&certificate, &key).await.is_err());
    target.verify_revoked(&login, &new_secret()).await.unwrap();
}

/// The namespace of the logins these tests make (a broker's comes from its seal id).
pub fn test_namespace() -> mayfly_core::Namespace {
    mayfly_core::Namespace::from_seal_id(b"conformance")
}
