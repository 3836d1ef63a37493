//! One lifecycle every target must pass: after `issue` the login works; a second `issue` converges;
//! after `revoke` the login is refused and a live session is gone; `verify_revoked` returns a
//! proof; a second `revoke`, and a `revoke` of something that never existed, succeed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::grant::{GrantEvent, GrantState, RequestState};
use mayfly_core::{LoginName, Principal, Timestamp};
use mayfly_server::clock::{Clock, SystemClock};
use mayfly_server::ssh::StoreList;
use mayfly_store::{
    Change, GrantRecord, GrantUpdate, RequestRecord, RoleRecord, SqlStore, Store, StoreError,
    TargetRecord, Write, WriteOutcome,
};
use mayfly_targets::{IssuePlan, RoleSpec, Target, TargetError, TargetKind};
use mayfly_testkit::gate::Gate;
use mayfly_testkit::postgres::ThrowawayDb;
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

/// Now, by the clock the broker reads (and the verifiers: they run on this machine).
pub fn now() -> Timestamp {
    SystemClock.now()
}

pub fn in_minutes(minutes: u64) -> Timestamp {
    now().saturating_add(Duration::from_secs(minutes * 60))
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
// on the system, so "revoke" is the grant's state in the broker's store, published as a list
// (KRL, CRL) the system loads. Everything on the broker's side is the real one: a `SqlStore` on a
// throwaway PostgreSQL database behind a gate, each certificate recorded as a grant the way the
// broker records it, revocations as the broker's state changes, the server's `StoreList` as what
// the target asks for its proof, and the server's own encoder making the list from the store.
// The same contract, in that shape: issued → the system accepts it; the wrong key → refused;
// issue twice → converges; revoked and the list published → refused, while the others still work;
// proof (and no proof while it is still valid); revoke twice → the second request and a stale
// round's record are refused by the store, and it stays revoked; requests and rounds at once →
// the store takes exactly one; nothing left on the system to sweep; past its expiry → refused by
// the system alone and dropped from the list; the store unreachable → a retryable error, proven
// once it is back.
// ---------------------------------------------------------------------------------------------

/// How a test uses a certificate on the real system.
pub trait CertificateProbe: Send + Sync {
    /// A fresh requester key: what `IssuePlan::public_key` carries (an OpenSSH public key line, a
    /// PEM CSR) and the private key.
    fn new_key(&self) -> (String, SecretString);
    /// Makes the broker's list (KRL, CRL) from the grants in `store` with the server's own code
    /// and hands it to the real system; `Err` when the list cannot be made (the store is away:
    /// the system keeps the last one).
    fn publish<'a>(&'a self, store: &'a dyn Store) -> BoxFuture<'a, Result<(), String>>;
    /// Presents a certificate with a private key to the real system; `Err` with its refusal.
    fn present<'a>(
        &'a self,
        certificate: &'a str,
        key: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The broker's side of a certificate target: a `SqlStore` on a throwaway PostgreSQL database,
/// reached through a gate (closed, the store is really unreachable), holding the target and its
/// role and each certificate's grant as the broker records them.
pub struct CertificateBroker {
    pub store: Arc<SqlStore>,
    pub gate: Gate,
    kind: TargetKind,
    target: String,
    role: RoleSpec,
    db: ThrowawayDb,
}

/// What the broker answered a holder's request to revoke a grant.
#[derive(Debug, PartialEq, Eq)]
pub enum RevokeRequest {
    /// The grant moved from `active` to `revoking`.
    Moved,
    /// Refused (409 in the broker): the grant is already in this state.
    Refused(GrantState),
}

impl CertificateBroker {
    /// A fresh store with the target `target` of `kind` at `url` and its role `role`, as an admin
    /// adds them.
    pub async fn start(
        kind: TargetKind,
        target: &str,
        url: &str,
        role: &RoleSpec,
    ) -> CertificateBroker {
        let db = ThrowawayDb::create().await;
        // postgres://[USER@]HOST:PORT/NAME: the same database, through the gate.
        let (server, name) = db.url.rsplit_once('/').unwrap();
        let authority = server.rfind('@').map_or("postgres://".len(), |at| at + 1);
        let (prefix, address) = server.split_at(authority);
        let upstream = tokio::net::lookup_host(address)
            .await
            .unwrap()
            .next()
            .unwrap();
        let gate = Gate::start(upstream).await;
        let store = mayfly_store::open(&format!("{prefix}127.0.0.1:{}/{name}", gate.port))
            .await
            .unwrap();
        let broker = CertificateBroker {
            store: Arc::new(store),
            gate,
            kind,
            target: target.to_owned(),
            role: role.clone(),
            db,
        };
        let record = TargetRecord {
            name: target.to_owned(),
            kind: kind.to_string(),
            url: url.to_owned(),
            created_at: now(),
        };
        // Certificate targets have no admin account: their admin secret is empty.
        let secret = (format!("targets/{target}/admin"), Vec::new());
        broker
            .commit(
                "target.put",
                Change::PutTarget {
                    target: record,
                    secret,
                    rotate_admin_every_ms: None,
                },
            )
            .await
            .unwrap();
        let role = RoleRecord {
            target: target.to_owned(),
            name: role.name.clone(),
            creation_sql: role.creation_sql.clone(),
            revocation_sql: role.revocation_sql.clone(),
            max_ttl_ms: i64::try_from(role.max_ttl.as_millis()).unwrap(),
        };
        broker
            .commit("role.put", Change::PutRole { role })
            .await
            .unwrap();
        broker
    }

    /// The server's `StoreList` over this store: what the target asks for its proof.
    pub fn list(&self) -> Arc<StoreList> {
        let store: Arc<dyn Store> = self.store.clone();
        let clock = Arc::new(SystemClock);
        Arc::new(match self.kind {
            TargetKind::Ssh | TargetKind::X509 => StoreList::new(&self.target, store, clock),
            other => panic!("`{other}` targets have no revocation list"),
        })
    }

    /// Commits one change with its audit event, as the broker's committer does; `Err` with the
    /// store's reason when the change conflicts with the state.
    async fn commit(&self, kind: &str, change: Change) -> Result<(), String> {
        let write = Write {
            change: Some(change),
            event: AuditDraft::new(now(), kind, Outcome::Ok),
        };
        match self.store.commit(vec![write]).await.unwrap().remove(0) {
            WriteOutcome::Applied { .. } => Ok(()),
            WriteOutcome::Conflict { reason, .. } => Err(reason),
        }
    }

    /// Records a signed certificate's grant as `Broker::issue_certificate` does before it hands
    /// the certificate out: the request (`activated`) and the grant (`active`, looked at next when
    /// it expires) in one commit. `issued_at` is the broker's "now" when it signed.
    pub async fn record(&self, grant_id: &uuid::Uuid, issued_at: Timestamp, expires_at: Timestamp) {
        let principal = Principal::User {
            id: "u1".into(),
            name: "alice".into(),
            groups: vec![],
        };
        let request = RequestRecord {
            id: uuid::Uuid::now_v7().to_string(),
            principal,
            target: self.target.clone(),
            role: self.role.name.clone(),
            reason: "conformance".into(),
            ticket: String::new(),
            ttl_ms: expires_at.unix_ms() - issued_at.unix_ms(),
            max_ttl_ms: i64::try_from(self.role.max_ttl.as_millis()).unwrap(),
            approvals_needed: 0,
            state: RequestState::Activated,
            decision: "allowed by conformance".into(),
            break_glass: false,
            created_at: issued_at,
            expires_at: issued_at,
            actors: Vec::new(),
        };
        let grant = GrantRecord {
            id: grant_id.to_string(),
            request_id: request.id.clone(),
            principal: "user:alice".into(),
            target: self.target.clone(),
            role: self.role.name.clone(),
            login: LoginName::for_grant(&test_namespace(), grant_id).to_string(),
            state: GrantState::Active,
            created_at: issued_at,
            expires_at,
            next_attempt_at: Some(expires_at),
            epoch: 0,
            n_attempts: 0,
            last_error: None,
            revoke_reason: None,
            revoked_at: None,
            verified_at: None,
            break_glass: false,
            reviewed_by: None,
            actors: Vec::new(),
        };
        let change = Change::IssueCertificate {
            request: Box::new(request),
            grant: Box::new(grant),
        };
        self.commit("access.certificate", change).await.unwrap();
    }

    /// The grant of `login` as the store holds it.
    pub async fn grant(&self, login: &LoginName) -> Result<GrantRecord, StoreError> {
        let grant = self.store.grant_by_login(login.as_str()).await?;
        Ok(grant.unwrap_or_else(|| panic!("no grant with login `{login}`")))
    }

    /// A holder's early revocation of `grant` as they read it, as `Broker::revoke_now` does it:
    /// refused unless it was `active` (or `issuing`); else moved to `revoking`, due now, on
    /// condition that the store still holds it in the state read, so of two callers who read it
    /// at once only one moves it.
    pub async fn request_revoke(&self, grant: &GrantRecord) -> Result<RevokeRequest, StoreError> {
        if !matches!(grant.state, GrantState::Active | GrantState::Issuing) {
            return Ok(RevokeRequest::Refused(grant.state));
        }
        let mut update = GrantUpdate::new(&grant.id, grant.state, GrantState::Revoking);
        update.next_attempt_at = Some(now());
        update.revoke_reason = Some("conformance".into());
        let write = Write {
            change: Some(Change::UpdateGrant { update }),
            event: AuditDraft::new(now(), "grant.revoke_requested", Outcome::Ok),
        };
        match self.store.commit(vec![write]).await?.remove(0) {
            WriteOutcome::Applied { .. } => Ok(RevokeRequest::Moved),
            WriteOutcome::Conflict { .. } => {
                let now_held = self.store.grant(&grant.id).await?.unwrap();
                Ok(RevokeRequest::Refused(now_held.state))
            }
        }
    }

    /// What the expiry engine records once the target's `revoke` answered `Ok` for a grant it
    /// took up as `claimed` (its `revoke_chunk`): from where the grant stood to `revoked`, through
    /// the core's transitions, conditional on that state and epoch. `false` if the store refused
    /// it: the grant moved meanwhile (another node's round recorded it first).
    pub async fn record_revoked(&self, claimed: &GrantRecord) -> bool {
        let events: &[GrantEvent] = match claimed.state {
            GrantState::Active | GrantState::Issuing => {
                &[GrantEvent::RevokeRequested, GrantEvent::Revoked]
            }
            GrantState::Failed => &[GrantEvent::Retry, GrantEvent::Revoked],
            GrantState::Revoking => &[GrantEvent::Revoked],
            // The engine proves these instead.
            GrantState::Revoked | GrantState::Verified => {
                panic!(
                    "the expiry engine does not revoke a grant in `{}`",
                    claimed.state
                )
            }
        };
        let mut to = claimed.state;
        for event in events {
            to = to.apply(*event).unwrap();
        }
        let mut update = GrantUpdate::new(&claimed.id, claimed.state, to);
        update.epoch = Some(claimed.epoch);
        update.next_attempt_at = Some(now());
        update.revoked_at = Some(now());
        self.commit("grant.revoked", Change::UpdateGrant { update })
            .await
            .is_ok()
    }

    /// One round of the expiry engine for a grant it took up as `claimed`: the target's
    /// `revoke`, then the record. Whether this round's record was the one the store took.
    pub async fn round(
        &self,
        target: &dyn Target,
        claimed: &GrantRecord,
        role: &RoleSpec,
    ) -> Result<bool, TargetError> {
        let login = LoginName::parse(&claimed.login).unwrap();
        target.revoke(&login, Some(role)).await?;
        Ok(self.record_revoked(claimed).await)
    }

    /// A whole early revocation: the holder reads the grant and requests it, then, if that moved
    /// the grant, the engine's round. What the request was answered.
    pub async fn revoke(
        &self,
        target: &dyn Target,
        login: &LoginName,
        role: &RoleSpec,
    ) -> RevokeRequest {
        let grant = self.grant(login).await.unwrap();
        let request = self.request_revoke(&grant).await.unwrap();
        if request == RevokeRequest::Moved {
            let claimed = self.grant(login).await.unwrap();
            let recorded = self.round(target, &claimed, role).await.unwrap();
            assert!(
                recorded,
                "the revocation of `{login}` could not be recorded"
            );
        }
        request
    }

    /// What the published list names now (the server's rule, in the store).
    pub async fn listed(&self) -> Vec<String> {
        self.store
            .revoked_certificate_logins(&self.target, now())
            .await
            .unwrap()
    }

    /// Closes the store and drops its database.
    pub async fn finish(self) {
        self.store.close().await;
        self.db.drop_db().await;
    }
}

/// A certificate for a fresh key of the probe's, recorded in the store as the broker does:
/// (login, certificate, key).
pub async fn certify<P: CertificateProbe>(
    target: &dyn Target,
    role: &RoleSpec,
    probe: &P,
    broker: &CertificateBroker,
    expires_at: Timestamp,
) -> (LoginName, String, SecretString) {
    let (public, private) = probe.new_key();
    let grant_id = uuid::Uuid::now_v7();
    let login = LoginName::for_grant(&test_namespace(), &grant_id);
    let issued_at = now();
    let connection = target
        .issue(&IssuePlan {
            login: &login,
            secret: &new_secret(),
            role,
            expires_at,
            issued_at,
            public_key: Some(&public),
        })
        .await
        .unwrap();
    broker.record(&grant_id, issued_at, expires_at).await;
    (login, connection.certificate.unwrap(), private)
}

pub async fn certificate_lifecycle<P: CertificateProbe>(
    target: &dyn Target,
    role: &RoleSpec,
    probe: &P,
    broker: &CertificateBroker,
) {
    target.check_role(role).unwrap();
    probe.publish(broker.store.as_ref()).await.unwrap();
    let (public, private) = probe.new_key();
    let grant_id = uuid::Uuid::now_v7();
    let login = LoginName::for_grant(&test_namespace(), &grant_id);
    let plan = IssuePlan {
        login: &login,
        secret: &new_secret(),
        role,
        expires_at: in_minutes(15),
        issued_at: now(),
        public_key: Some(&public),
    };
    let certificate = target.issue(&plan).await.unwrap().certificate.unwrap();
    broker
        .record(&grant_id, plan.issued_at, plan.expires_at)
        .await;
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
    // Nothing to sweep: the sweep revokes what the target reports with no live grant behind it;
    // the store holds a live grant for this certificate and the system holds nothing.
    let live = broker
        .store
        .live_logins(&[login.to_string()])
        .await
        .unwrap();
    assert!(live.contains(login.as_str()), "{live:?}");
    let managed = target.managed_logins().await.unwrap();
    assert!(managed.is_empty(), "left on the system: {managed:?}");
    // No proof while it is valid: the proof can fail.
    let unproven = target.verify_revoked(&login, &new_secret()).await;
    assert!(
        matches!(unproven, Err(TargetError::NotRevoked { .. })),
        "{unproven:?}"
    );

    let (bystander, bystander_certificate, bystander_key) =
        certify(target, role, probe, broker, in_minutes(15)).await;
    // The holder's request on the grant as read, then the expiry engine's round for what it
    // took up.
    let read_active = broker.grant(&login).await.unwrap();
    assert_eq!(
        broker.request_revoke(&read_active).await.unwrap(),
        RevokeRequest::Moved
    );
    let claimed = broker.grant(&login).await.unwrap();
    assert_eq!(claimed.state, GrantState::Revoking);
    assert!(broker.round(target, &claimed, role).await.unwrap());
    assert_eq!(
        broker.grant(&login).await.unwrap().state,
        GrantState::Revoked
    );
    assert_eq!(broker.listed().await, [login.to_string()]);
    probe.publish(broker.store.as_ref()).await.unwrap();
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
    let unproven = target.verify_revoked(&bystander, &new_secret()).await;
    assert!(
        matches!(unproven, Err(TargetError::NotRevoked { .. })),
        "{unproven:?}"
    );

    // Revoke twice. A second request is refused (it is already revoked: 409) and moves nothing,
    // also from a caller who read it while it was active: the store refuses that move. A second
    // round of the engine (a node whose claim timed out, holding the grant as it was at
    // `revoking`) revokes on the target again, fine, and the store refuses its record. The grant
    // stays revoked, listed, proven. And a revoke of what never existed is fine.
    let read_revoked = broker.grant(&login).await.unwrap();
    assert_eq!(
        broker.request_revoke(&read_revoked).await.unwrap(),
        RevokeRequest::Refused(GrantState::Revoked)
    );
    assert_eq!(
        broker.request_revoke(&read_active).await.unwrap(),
        RevokeRequest::Refused(GrantState::Revoked)
    );
    let again_recorded = broker.round(target, &claimed, role).await.unwrap();
    assert!(
        !again_recorded,
        "a stale round recorded the revocation again"
    );
    assert_eq!(
        broker.grant(&login).await.unwrap().state,
        GrantState::Revoked
    );
    assert_eq!(broker.listed().await, [login.to_string()]);
    target.verify_revoked(&login, &new_secret()).await.unwrap();
    target.revoke(&new_login(), Some(role)).await.unwrap();

    // Revocations at once. Two requests (the holder and an admin, who both read it active): the
    // store lets exactly one through. Two rounds of the engine on what they took up (a claim
    // taken over while the first still ran): both revoke on the target, fine, and the store
    // records exactly one. The grant ends revoked, listed, refused.
    let read_active = broker.grant(&bystander).await.unwrap();
    let (a, b) = tokio::join!(
        broker.request_revoke(&read_active),
        broker.request_revoke(&read_active)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        matches!(
            (&a, &b),
            (RevokeRequest::Moved, RevokeRequest::Refused(_))
                | (RevokeRequest::Refused(_), RevokeRequest::Moved)
        ),
        "{a:?} {b:?}"
    );
    let claimed = broker.grant(&bystander).await.unwrap();
    let (a, b) = tokio::join!(
        broker.round(target, &claimed, role),
        broker.round(target, &claimed, role)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let n_recorded = usize::from(a) + usize::from(b);
    assert_eq!(n_recorded, 1, "{n_recorded} of two rounds recorded it");
    assert_eq!(
        broker.grant(&bystander).await.unwrap().state,
        GrantState::Revoked
    );
    let mut both = vec![login.to_string(), bystander.to_string()];
    both.sort();
    assert_eq!(broker.listed().await, both);
    probe.publish(broker.store.as_ref()).await.unwrap();
    assert!(
        probe
            .present(&bystander_certificate, &bystander_key)
            .await
            .is_err(),
        "a revoked certificate was accepted"
    );
    target
        .verify_revoked(&bystander, &new_secret())
        .await
        .unwrap();

    expiry(target, role, probe, broker).await;
}

/// Expiry: the system refuses a certificate by itself, with no list naming it, and the list
/// drops a revoked grant once it has expired.
async fn expiry<P: CertificateProbe>(
    target: &dyn Target,
    role: &RoleSpec,
    probe: &P,
    broker: &CertificateBroker,
) {
    // The expiry is set from the moment of issue, with room to show the certificate accepted
    // first. A machine too slow to present it within that room gets a longer one; a refusal
    // before the expiry fails the test.
    let mut window_ms = 4_000;
    let (short, short_certificate, short_key, expires_at) = loop {
        // Whole seconds: that is what `valid_before` and `notAfter` hold.
        let expires_at =
            Timestamp::from_unix_ms((now().unix_ms() + window_ms) / 1000 * 1000 + 1000);
        let (login, certificate, key) = certify(target, role, probe, broker, expires_at).await;
        match probe.present(&certificate, &key).await {
            Ok(()) => break (login, certificate, key, expires_at),
            Err(refusal) => {
                assert!(
                    now() >= expires_at && window_ms < 60_000,
                    "a certificate was refused before its expiry: {refusal}"
                );
                window_ms *= 2;
            }
        }
    };
    // Wait for the expiry, then for the system's own refusal: a bounded poll, not a guess.
    let until_expiry = expires_at.unix_ms() - now().unix_ms();
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(until_expiry).unwrap_or(0),
    ))
    .await;
    let give_up_at = expires_at.unix_ms() + 30_000;
    while probe.present(&short_certificate, &short_key).await.is_ok() {
        assert!(
            now().unix_ms() < give_up_at,
            "a certificate was still accepted 30 s after its expiry"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Refused with no list naming it.
    assert!(!broker.listed().await.contains(&short.to_string()));
    probe.publish(broker.store.as_ref()).await.unwrap();
    assert!(
        probe.present(&short_certificate, &short_key).await.is_err(),
        "an expired certificate was accepted"
    );
    let proof = target.verify_revoked(&short, &new_secret()).await.unwrap();
    assert!(proof.checks[0].contains("past its"), "{proof:?}");
    // The expiry engine's round for it (straight from `active` to `revoked`): an expired grant
    // is not listed, so the list stays as short as the grants that could still be used.
    let claimed = broker.grant(&short).await.unwrap();
    assert!(broker.round(target, &claimed, role).await.unwrap());
    assert_eq!(
        broker.grant(&short).await.unwrap().state,
        GrantState::Revoked
    );
    assert!(!broker.listed().await.contains(&short.to_string()));
    let proof = target.verify_revoked(&short, &new_secret()).await.unwrap();
    assert!(proof.checks[0].contains("past its"), "{proof:?}");
}

/// The expiry engine's batch on a certificate target: the grants' revocations requested, one
/// `revoke_many` for all (and one that never existed), one answer per item, all fine, each
/// recorded and refused once listed.
pub async fn certificate_batch<P: CertificateProbe>(
    target: &dyn Target,
    role: &RoleSpec,
    probe: &P,
    broker: &CertificateBroker,
) {
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(certify(target, role, probe, broker, in_minutes(15)).await);
    }
    let mut claimed = Vec::new();
    for (login, _, _) in &issued {
        assert_eq!(
            broker
                .request_revoke(&broker.grant(login).await.unwrap())
                .await
                .unwrap(),
            RevokeRequest::Moved
        );
        claimed.push(broker.grant(login).await.unwrap());
    }
    let mut items: Vec<(LoginName, Option<RoleSpec>)> = issued
        .iter()
        .map(|(login, _, _)| (login.clone(), Some(role.clone())))
        .collect();
    items.push((new_login(), Some(role.clone())));
    let results = target.revoke_many(&items).await;
    assert_eq!(results.len(), items.len());
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for grant in &claimed {
        assert!(broker.record_revoked(grant).await);
    }
    probe.publish(broker.store.as_ref()).await.unwrap();
    for (login, certificate, key) in &issued {
        assert!(broker.listed().await.contains(&login.to_string()));
        assert!(probe.present(certificate, key).await.is_err());
        target.verify_revoked(login, &new_secret()).await.unwrap();
    }
    assert!(target.revoke_many(&items).await.iter().all(Result::is_ok));
}

/// The broker's store, where a certificate target's revocation lives, cannot be reached (the
/// gate in front of PostgreSQL is closed): the proof fails as retryable (the engine keeps the
/// grant queued and reports it), no revocation can be requested and no list made, the system
/// keeps refusing what the last list named; once the store is back, the proof is given and
/// nothing was half-done.
pub async fn certificate_unreachable_then_back<P: CertificateProbe>(
    target: &dyn Target,
    role: &RoleSpec,
    probe: &P,
    broker: &CertificateBroker,
) {
    let (login, certificate, key) = certify(target, role, probe, broker, in_minutes(15)).await;
    let (other, other_certificate, other_key) =
        certify(target, role, probe, broker, in_minutes(15)).await;
    assert_eq!(
        broker.revoke(target, &login, role).await,
        RevokeRequest::Moved
    );
    probe.publish(broker.store.as_ref()).await.unwrap();
    let read_active = broker.grant(&other).await.unwrap();

    broker.gate.close().await;
    let error = target
        .verify_revoked(&login, &new_secret())
        .await
        .unwrap_err();
    assert!(matches!(error, TargetError::Unavailable { .. }), "{error}");
    assert!(error.is_retryable(), "{error}");
    let error = broker.request_revoke(&read_active).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let unpublished = probe.publish(broker.store.as_ref()).await;
    assert!(unpublished.is_err(), "a list was made without the store");
    assert!(probe.present(&certificate, &key).await.is_err());
    probe.present(&other_certificate, &other_key).await.unwrap();

    broker.gate.open();
    target.verify_revoked(&login, &new_secret()).await.unwrap();
    assert_eq!(
        broker.grant(&other).await.unwrap().state,
        GrantState::Active
    );
    probe.publish(broker.store.as_ref()).await.unwrap();
    assert!(probe.present(&certificate, &key).await.is_err());
    probe.present(&other_certificate, &other_key).await.unwrap();
    assert_eq!(
        broker.revoke(target, &other, role).await,
        RevokeRequest::Moved
    );
    probe.publish(broker.store.as_ref()).await.unwrap();
    assert!(probe.present(&other_certificate, &other_key).await.is_err());
    target.verify_revoked(&other, &new_secret()).await.unwrap();
}

/// The namespace of the logins these tests make (a broker's comes from its seal id).
pub fn test_namespace() -> mayfly_core::Namespace {
    mayfly_core::Namespace::from_seal_id(b"conformance")
}
