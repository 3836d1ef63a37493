//! Plain records the store reads and writes, the changes it applies and what became of them. They
//! carry ciphertext and hashes, never secrets.

use std::time::Duration;

use mayfly_core::audit::AuditDraft;
use mayfly_core::{Principal, SecretPath, Timestamp};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealRecord {
    pub seal_id: Vec<u8>,
    pub n_shares: i64,
    pub threshold: i64,
    /// AEAD of a constant under the root key: tells a wrong root key from a right one.
    pub kcv: Vec<u8>,
    /// The data key, wrapped by the root key.
    pub wrapped_keyring: Vec<u8>,
    /// SHA-256 of the one-time setup code for the first admin; `None` once used.
    pub setup_code_hash: Option<Vec<u8>>,
    pub created_at: Timestamp,
}

/// The root key wrapped under one key-encryption key (auto-unseal, migration 0017).
#[derive(Clone)]
pub struct SealWrapRecord {
    /// Which key: `pkcs11:SERIAL:LABEL` or `file:FINGERPRINT`.
    pub key_id: String,
    /// `pkcs11` or `file`.
    pub kind: String,
    /// Version ‖ nonce ‖ AES-256-GCM ciphertext and tag.
    pub wrapped: Vec<u8>,
    pub created_at: Timestamp,
}

impl std::fmt::Debug for SealWrapRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealWrapRecord")
            .field("key_id", &self.key_id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub groups: Vec<String>,
    pub disabled: bool,
    /// The last TOTP time step accepted, so a code is never accepted twice.
    pub totp_last_step: Option<i64>,
    pub created_at: Timestamp,
}

/// A name's failed logins in a row. `throttled_until` is the end of its throttle, or the time of
/// its last attempt while it has none (whichever is later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleRecord {
    pub username: String,
    pub n_failures: i64,
    pub throttled_until: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    /// SHA-256 of the token; the token itself is never stored.
    pub token_hash: Vec<u8>,
    pub principal: Principal,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// When this session last proved a second factor (login with TOTP, a step-up); `None`:
    /// never (a workload's session).
    pub factor_at: Option<Timestamp>,
}

/// A token issued by token exchange: its `jti`, the session it derives from and its lifetime.
/// The token itself is never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangedTokenRecord {
    pub jti: String,
    pub session_id: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A route of the secure proxy: its name and its configuration as JSON the server validates
/// (the upstream, the injections by secret path, the limits). Never a secret value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRouteRecord {
    pub name: String,
    pub config: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One version of a stored secret, without its value: what history and listings show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvVersionRecord {
    pub version: i64,
    pub created_at: Timestamp,
    /// The principal that wrote it (`user:alice`).
    pub created_by: String,
    /// Soft-deleted: hidden, its ciphertext kept (undelete restores it).
    pub deleted_at: Option<Timestamp>,
    /// Destroyed: its ciphertext is gone for good.
    pub destroyed_at: Option<Timestamp>,
}

impl KvVersionRecord {
    /// Neither deleted nor destroyed.
    pub fn is_live(&self) -> bool {
        self.deleted_at.is_none() && self.destroyed_at.is_none()
    }
}

/// A version of a stored secret and its ciphertext (`None` once destroyed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvSecretRecord {
    pub path: SecretPath,
    pub meta: KvVersionRecord,
    pub blob: Option<Vec<u8>>,
}

/// JWT login configuration (an issuer or a role), kept as JSON the server validates.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtConfigRecord {
    pub name: String,
    pub config: serde_json::Value,
}

/// A single sign-on login in progress, used once: a flow (`kind` `flow`, keyed by SHA-256 of its
/// `state`) or the CLI's one-time code (`code`). `blob` is what it carries, sealed by the barrier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsoPendingRecord {
    pub key_hash: Vec<u8>,
    pub kind: String,
    pub blob: Vec<u8>,
    pub expires_at: Timestamp,
}

/// An audit event as stored: the canonical body and its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub kind: String,
    pub body: String,
    pub hash: String,
}

/// What the audit search looks for (`Store::audit_search`): every given condition holds. The
/// server validates the values; the store only binds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// The event's search principal (`user:alice`), exactly.
    pub principal: Option<String>,
    /// The event's target, exactly.
    pub target: Option<String>,
    /// The kind: exactly, or every kind that starts with it when `kind_prefix`.
    pub kind: Option<String>,
    pub kind_prefix: bool,
    /// Events at or after `from`, and before `to`.
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// Events with `seq < before_seq` (the next page of a newest-first listing).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// An audit event found by the search: its indexed columns and the event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: Timestamp,
    pub kind: String,
    pub principal: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<String>,
    /// The canonical body and its hash, as chained.
    pub body: String,
    pub hash: String,
}

/// A change of state. Each is applied atomically with its audit event.
#[derive(Clone, Debug)]
pub enum Change {
    /// Creates the seal and the broker's first secrets. Conflicts if already initialized.
    Initialize {
        seal: SealRecord,
        secrets: Vec<(String, Vec<u8>)>,
    },
    /// Writes (or replaces) the root key's wrap under one key-encryption key. Conflicts if the
    /// broker is not initialized.
    PutSealWrap {
        wrap: SealWrapRecord,
    },
    /// Writes (or replaces) one encrypted secret.
    PutSecret {
        path: String,
        blob: Vec<u8>,
        at: Timestamp,
    },
    /// Stores a secret that must not be replaced once made (a CA key). Conflicts if the path is
    /// taken: two nodes making the first one at once both end up with the one stored first.
    CreateSecret {
        path: String,
        blob: Vec<u8>,
        at: Timestamp,
    },
    /// Uses the one-time setup code and creates the first admin. Conflicts if the code does not
    /// match or was used.
    SetupFirstAdmin {
        code_hash: Vec<u8>,
        user: UserRecord,
        secrets: Vec<(String, Vec<u8>)>,
    },
    /// Creates a user with its encrypted secrets. Conflicts if the name is taken.
    CreateUser {
        user: UserRecord,
        secrets: Vec<(String, Vec<u8>)>,
    },
    /// A successful login: uses TOTP step `totp_step` (conflicts if a step at or after it was
    /// already used), clears the failure count and creates the session.
    LoginSucceeded {
        user_id: String,
        username: String,
        totp_step: i64,
        session: SessionRecord,
    },
    /// A failed login: counts it and throttles the name until `throttled_until`. (The broker
    /// counts with [`Change::ReserveLoginAttempt`], before the check, instead.)
    LoginFailed {
        username: String,
        throttled_until: Timestamp,
    },
    /// Counts a login attempt on `username` before its credentials are checked: the attempt is a
    /// failure until a [`Change::LoginSucceeded`] clears the count. Conflicts, counting nothing,
    /// if the name is throttled at `at`. One statement increments the count and returns it, so
    /// attempts count one by one however many run at once, in one batch or on several nodes.
    /// The count after the first `n_free` throttles the name for `first_delay`, doubling with
    /// each further failure up to `max_delay`. A name left alone for `forget_after` after its
    /// last attempt or throttle starts again from nothing: its row is stale, and each
    /// reservation deletes a few stale rows, so names tried once do not stay forever.
    ReserveLoginAttempt {
        username: String,
        at: Timestamp,
        n_free: i64,
        first_delay: Duration,
        max_delay: Duration,
        forget_after: Duration,
    },
    /// Records a second factor proved by session `session_id` at `at` (a step-up): its
    /// `factor_at` moves forward (never back). With `totp`, the TOTP step is used as a login uses
    /// it (conflicts if a step at or after it was already used) and the name's failure count is
    /// cleared. Conflicts if the session is revoked or unknown.
    RecordSecondFactor {
        session_id: String,
        at: Timestamp,
        totp: Option<TotpStep>,
    },
    /// Links the Slack user `slack_user_id` to the user `username` (`None` unlinks). Conflicts if
    /// the user is unknown or the Slack user is linked to another user.
    LinkSlackUser {
        username: String,
        slack_user_id: Option<String>,
    },
    /// Creates a session (workload login).
    CreateSession {
        session: SessionRecord,
    },
    /// Revokes a session. Conflicts if it is already revoked or unknown.
    RevokeSession {
        id: String,
        at: Timestamp,
    },
    /// Revokes every live session of the user `user_id` (logout everywhere), the caller's own
    /// included. Conflicts if it has none.
    RevokeUserSessions {
        user_id: String,
        at: Timestamp,
    },
    PutJwtIssuer {
        name: String,
        config: serde_json::Value,
    },
    PutJwtRole {
        name: String,
        config: serde_json::Value,
    },
    /// Removes a workload binding and deletes the sessions of that role, so that a binding made
    /// again under the same name starts with none. Conflicts if unknown.
    DeleteJwtRole {
        name: String,
    },
    /// Changes a user's groups and/or disables or enables the user. Disabling deletes the user's
    /// sessions in the same commit, so enabling the user again revives none. Conflicts if the
    /// user is unknown.
    UpdateUser {
        username: String,
        groups: Option<Vec<String>>,
        disabled: Option<bool>,
    },
    /// Adds or replaces a target and its encrypted admin secret; the schedule of its rotation
    /// (`rotate_admin_every_ms`, `None`: on demand only) starts from now. A rotation under way is
    /// kept, pending password and all: the target may have it already.
    PutTarget {
        target: TargetRecord,
        secret: (String, Vec<u8>),
        rotate_admin_every_ms: Option<i64>,
    },
    /// Records the intent of a rotation of a target's admin secret, before the target is
    /// touched: the new password (`pending`, sealed under the path `targets/<name>/admin-pending`),
    /// held by this node until `claimed_until`. Conflicts if a rotation is under way, or, with
    /// `due_by`, if none is due by then (a scheduled rotation another node just did).
    BeginAdminRotation {
        target: String,
        rotation_id: String,
        pending: Vec<u8>,
        claimed_until: Timestamp,
        due_by: Option<Timestamp>,
    },
    /// Takes over the rotation `rotation_id` until `claimed_until` (to finish it). Conflicts
    /// unless its holder's claim ended by `held_before` (a node that died), or if it is finished.
    ClaimAdminRotation {
        target: String,
        rotation_id: String,
        claimed_until: Timestamp,
        held_before: Timestamp,
    },
    /// The rotation `rotation_id` is done: `secret` (the target's admin secret, sealed) becomes
    /// current, the intent is cleared, the next scheduled rotation is set. Conflicts if that
    /// intent is no longer there. `previous`: where the password the target takes after a
    /// restart is kept, and that password (sealed) when the target holds the new one in memory
    /// only (Redis without an ACL or configuration file to write). A password kept there already
    /// stays (it is older: the one the target restarts with); `None`: the target keeps the new
    /// one durably, and no previous one is kept any more.
    CompleteAdminRotation {
        target: String,
        rotation_id: String,
        secret: (String, Vec<u8>),
        previous: (String, Option<Vec<u8>>),
        at: Timestamp,
    },
    /// The rotation `rotation_id` failed: the intent stays (the target may have the new password
    /// or the old one), and it is tried again at `retry_at`. Conflicts if it is no longer there.
    AdminRotationFailed {
        target: String,
        rotation_id: String,
        error: String,
        retry_at: Timestamp,
    },
    /// Adds or replaces a role. Conflicts if its target does not exist.
    PutRole {
        role: RoleRecord,
    },
    /// Replaces the policy set.
    PutPolicies {
        text: String,
        at: Timestamp,
    },
    CreateRequest {
        request: RequestRecord,
    },
    /// Records an approval; the request becomes `allowed` once it has enough. Conflicts if the
    /// request is not pending or this approver already approved.
    Approve {
        approval: ApprovalRecord,
    },
    /// Conflicts if the request is not pending.
    DenyRequest {
        request_id: String,
    },
    /// A pending or allowed request that policy no longer allows (decided again at activation,
    /// or after a change of policies or of its principal) becomes `denied`. Conflicts if it is
    /// neither pending nor allowed any more.
    WithdrawRequest {
        request_id: String,
    },
    /// Pending requests whose window has passed become `expired`.
    ExpireRequests {
        before: Timestamp,
    },
    /// The intent: the grant row in `issuing` with its login and encrypted secret, and the request
    /// marked `activated`, before anything is created on the target. Conflicts if the request is
    /// not `allowed`. The grant's `next_attempt_at` is its issue deadline: past it, the expiry
    /// engine takes the intent over and revokes whatever was made. With an `issuer` (the node
    /// doing the issue, on a shared store), the intent is that node's claim until the deadline,
    /// due at once: if the node dies, the others take it over as soon as its lease ends, not at
    /// the deadline.
    RecordIntent {
        grant: GrantRecord,
        secret: (String, Vec<u8>),
        issuer: Option<crate::Claimant>,
    },
    /// A request allowed without approvals and its certificate grant, already `active`, in one
    /// go: the one-call signing path (`POST /v1/ssh/sign`). The request is recorded `activated`.
    IssueCertificate {
        request: Box<RequestRecord>,
        grant: Box<GrantRecord>,
    },
    /// Moves a grant between states. Conflicts if it is not in `from` (or no longer at `epoch`).
    UpdateGrant {
        update: GrantUpdate,
    },
    /// Marks a break-glass grant as reviewed.
    ReviewGrant {
        id: String,
        reviewer: String,
    },
    /// Records a token issued by token exchange, and `agents` (names) as seen now. Conflicts if
    /// its `jti` is taken, or if one of `agents` is disabled.
    RecordExchangedToken {
        token: ExchangedTokenRecord,
        agents: Vec<String>,
    },
    /// Records an approval of one tool call, `pending`. Conflicts if a pending one of the same
    /// key is there already (two retries at once share the first).
    CreateCallApproval {
        approval: CallApprovalRecord,
    },
    /// A person's answer: `approved` (usable once until `usable_until`) or `refused`. Conflicts
    /// unless the approval is pending and not expired at `at`.
    AnswerCallApproval {
        id: String,
        approve: bool,
        by: String,
        at: Timestamp,
        usable_until: Timestamp,
    },
    /// Uses an approved approval, once. Conflicts unless it is `approved` and usable at `at`.
    UseCallApproval {
        id: String,
        at: Timestamp,
    },
    /// A pending approval past its `expires_at`, or an approved one past `usable_until`, becomes
    /// `expired`. Conflicts otherwise.
    ExpireCallApproval {
        id: String,
        at: Timestamp,
    },
    /// The kill switch of the agent `name`: marks it disabled, revokes the sessions of its JWT
    /// logins and refuses (answered by `by`) every pending call approval whose subject or act
    /// chain holds it. Conflicts if it is disabled already.
    DisableAgent {
        name: String,
        by: String,
        at: Timestamp,
    },
    /// Lifts the kill switch of the agent `name`. Nothing it had comes back. Conflicts unless it
    /// is disabled.
    EnableAgent {
        name: String,
    },
    /// Adds a proxy route or replaces its configuration.
    PutProxyRoute {
        route: ProxyRouteRecord,
    },
    /// Deletes a proxy route. Conflicts if there is none by that name.
    DeleteProxyRoute {
        name: String,
    },
    /// Writes `version` of a stored secret (its ciphertext). Conflicts, naming the current
    /// version, unless `version` is one more than the highest version ever written of `path`
    /// (0 if none): check-and-set, safe when several writers (or nodes) race.
    PutKvSecret {
        path: SecretPath,
        version: i64,
        blob: Vec<u8>,
        created_by: String,
        at: Timestamp,
    },
    /// Soft-deletes a version. Conflicts if it does not exist, is deleted already or destroyed.
    DeleteKvSecret {
        path: SecretPath,
        version: i64,
        at: Timestamp,
    },
    /// Restores a soft-deleted version. Conflicts if it does not exist, is not deleted or is
    /// destroyed.
    UndeleteKvSecret {
        path: SecretPath,
        version: i64,
    },
    /// `change` (if any) and, only if it applies (and `only_if` holds after it), the
    /// notifications it causes, written to the outbox in the same transaction: a notification
    /// exists exactly when its cause does. A notification with a `dedup_key` already in the outbox
    /// for its channel is not written again (once per subject, across restarts and nodes).
    Notify {
        change: Option<Box<Change>>,
        notifications: Vec<NotificationRecord>,
        only_if: Option<NotifyCondition>,
    },
    /// `inner` (if any), only while the single-doer lease `lease` is still held by the holder
    /// and epoch it names, checked in the same transaction (the lease row is locked until it
    /// ends). A lost lease is a conflict and nothing is applied; the write's event is then
    /// recorded as `lease.lost` instead of its own kind (a checkpoint refused this way is no
    /// checkpoint in the log).
    Fenced {
        lease: LeaseFence,
        inner: Option<Box<Change>>,
    },
    /// Removes the ciphertext of versions for good. Conflicts if one of them does not exist
    /// (then none is destroyed); destroying a destroyed version again changes nothing.
    DestroyKvSecret {
        path: SecretPath,
        versions: Vec<i64>,
        at: Timestamp,
    },
    /// Adds or replaces a single sign-on provider (`config`: JSON the server validates) and its
    /// client secret, sealed (`secret`: path and ciphertext).
    PutSsoProvider {
        name: String,
        config: serde_json::Value,
        secret: (String, Vec<u8>),
        at: Timestamp,
    },
    /// Removes a single sign-on provider and its client secret. Conflicts if unknown. The users
    /// it made stay (disable them to stop them).
    DeleteSsoProvider {
        name: String,
        secret_path: String,
    },
    /// Stores a login in progress; deletes those expired before `purge_before`.
    PutSsoPending {
        pending: SsoPendingRecord,
        purge_before: Timestamp,
    },
    /// Uses a login in progress once (deletes it), and creates `session` if given (refused if
    /// its user is disabled). Conflicts if it was already used.
    ConsumeSsoPending {
        key_hash: Vec<u8>,
        kind: String,
        session: Option<SessionRecord>,
    },
    /// A single sign-on login: uses the flow `key_hash` once; with `new_user`, creates `user`
    /// and binds it to (`issuer`, `subject`) (conflicts if the name is taken: a local user is
    /// never taken over), else sets the bound user's groups (conflicts if it is disabled or not
    /// bound to that identity); then creates `session` and/or the CLI's one-time `code`.
    SsoSignIn {
        key_hash: Vec<u8>,
        issuer: String,
        subject: String,
        user: UserRecord,
        new_user: bool,
        session: Option<SessionRecord>,
        code: Option<SsoPendingRecord>,
    },
}

impl Change {
    /// Whether applying it only inserts rows under ids made for it (so it cannot conflict).
    pub fn only_inserts(&self) -> bool {
        self.inserted_rows().is_some()
    }

    /// The rows an insert-only change adds: its request, and its grant if it has one. `None` for
    /// any other change.
    pub fn inserted_rows(&self) -> Option<(&RequestRecord, Option<&GrantRecord>)> {
        match self {
            Change::IssueCertificate { request, grant } => Some((request, Some(grant))),
            Change::CreateRequest { request } => Some((request, None)),
            _ => None,
        }
    }
}

impl Change {
    /// This change with `notifications` written alongside it ([`Change::Notify`]); the change
    /// itself when there are none, so that a broker with no channel keeps the fast paths.
    pub fn notifying(self, notifications: Vec<NotificationRecord>) -> Change {
        if notifications.is_empty() {
            return self;
        }
        Change::Notify {
            change: Some(Box::new(self)),
            notifications,
            only_if: None,
        }
    }
}

impl Change {
    /// This change (if any) done only under the lease `lease` ([`Change::Fenced`]).
    pub fn fenced(lease: LeaseFence, inner: Option<Change>) -> Change {
        Change::Fenced {
            lease,
            inner: inner.map(Box::new),
        }
    }
}

/// A single-doer lease as its holder acquired it: the work it guards is committed only if the
/// lease still has this holder (node and generation) and epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFence {
    /// What the lease guards (`checkpoint`, `sweep`, `admin-rotation`).
    pub name: String,
    /// The holder's node name and generation.
    pub holder: String,
    pub generation: i64,
    /// The fencing token: bumped whenever the holder changes.
    pub epoch: i64,
}

/// One notification for one channel, in the outbox until it is delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationRecord {
    /// Also the delivery id the receiver deduplicates on: the same on every attempt.
    pub id: String,
    pub channel: String,
    /// What happened (`request.pending`, `grant.activated`, ...).
    pub kind: String,
    /// Written once per `(dedup_key, channel)`.
    pub dedup_key: Option<String>,
    /// The facts, as JSON (never a secret); rendered for the channel at delivery.
    pub payload: String,
    pub created_at: Timestamp,
    /// When it is due (`None`: delivered).
    pub next_attempt_at: Option<Timestamp>,
    pub n_attempts: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<Timestamp>,
    /// Fencing token: bumped by every claim.
    pub epoch: i64,
}

/// What must hold after a [`Change::Notify`]'s change for its notifications to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyCondition {
    /// The request is in this state (an approval that was the last one needed).
    RequestIs {
        id: String,
        state: mayfly_core::grant::RequestState,
    },
}

/// The outbox per channel, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub channel: String,
    /// Not delivered yet.
    pub n_pending: i64,
    /// Not delivered after at least the failing threshold of attempts.
    pub n_failing: i64,
    /// When the oldest notification not delivered yet was written.
    pub oldest_pending_at: Option<Timestamp>,
}

/// The throttle after `n_failures` failures in a row: none for the first `n_free`, then
/// `first_delay`, doubling, at most `max_delay`.
pub(crate) fn throttle_delay(
    n_failures: i64,
    n_free: i64,
    first_delay: Duration,
    max_delay: Duration,
) -> Duration {
    if n_failures <= n_free {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(n_failures.saturating_sub(n_free).saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    first_delay
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(max_delay)
}

/// The rotation of a database target's admin secret: its schedule, when the secret was last
/// set, the rotation under way and how its last attempts failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRotationRecord {
    pub target: String,
    /// Rotated every so often (`None`: on demand only).
    pub every_ms: Option<i64>,
    /// When the admin secret was last set (by a rotation, or by an admin putting the target).
    pub rotated_at: Option<Timestamp>,
    /// When the next scheduled rotation, or the next attempt of a failing one, is due.
    pub due_at: Option<Timestamp>,
    pub pending: Option<PendingRotation>,
    /// Failed attempts in a row.
    pub n_failures: i64,
    pub last_error: Option<String>,
}

/// A rotation under way: its intent.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingRotation {
    pub id: String,
    /// The new password, sealed by the barrier.
    pub blob: Vec<u8>,
    /// The node that holds it holds it until then.
    pub claimed_until: Timestamp,
}

impl std::fmt::Debug for PendingRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRotation")
            .field("id", &self.id)
            .field("claimed_until", &self.claimed_until)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRecord {
    pub name: String,
    pub kind: String,
    /// Connection URL without the admin password (which is in the barrier).
    pub url: String,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRecord {
    pub target: String,
    pub name: String,
    pub creation_sql: String,
    pub revocation_sql: Option<String>,
    pub max_ttl_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub id: String,
    pub principal: Principal,
    pub target: String,
    pub role: String,
    pub reason: String,
    pub ticket: String,
    pub ttl_ms: i64,
    /// min(policy max, role max), fixed at decision time.
    pub max_ttl_ms: i64,
    pub approvals_needed: i64,
    pub state: mayfly_core::grant::RequestState,
    /// Why it was decided as it was (the policies, or the denial).
    pub decision: String,
    pub break_glass: bool,
    pub created_at: Timestamp,
    /// A pending request expires unanswered at this time.
    pub expires_at: Timestamp,
    /// The act chain: who asked for the principal, nearest actor first (principal keys:
    /// `agent:claude`); empty when the principal asked itself.
    pub actors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub request_id: String,
    pub approver: String,
    pub comment: String,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    pub id: String,
    pub request_id: String,
    /// The principal, as `user:alice` / `workload:role:name`.
    pub principal: String,
    pub target: String,
    pub role: String,
    pub login: String,
    pub state: mayfly_core::grant::GrantState,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// When the expiry engine should look at it next (`None`: never, it is done).
    pub next_attempt_at: Option<Timestamp>,
    /// Fencing token: bumped by every claim; a write carries the epoch it was claimed with.
    pub epoch: i64,
    pub n_attempts: i64,
    pub last_error: Option<String>,
    pub revoke_reason: Option<String>,
    pub revoked_at: Option<Timestamp>,
    pub verified_at: Option<Timestamp>,
    pub break_glass: bool,
    pub reviewed_by: Option<String>,
    /// The act chain of the request it was made from (nearest actor first).
    pub actors: Vec<String>,
}

/// A conditional move of a grant from one state to another.
#[derive(Clone, Debug)]
pub struct GrantUpdate {
    pub id: String,
    pub from: mayfly_core::grant::GrantState,
    pub to: mayfly_core::grant::GrantState,
    /// Only if the grant still carries this epoch (a claimed piece of work); `None` for a user's
    /// action, which also bumps the epoch so any in-flight claim loses.
    pub epoch: Option<i64>,
    pub next_attempt_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub revoke_reason: Option<String>,
    pub revoked_at: Option<Timestamp>,
    pub verified_at: Option<Timestamp>,
    pub count_attempt: bool,
}

impl GrantUpdate {
    pub fn new(
        id: &str,
        from: mayfly_core::grant::GrantState,
        to: mayfly_core::grant::GrantState,
    ) -> GrantUpdate {
        GrantUpdate {
            id: id.to_owned(),
            from,
            to,
            epoch: None,
            next_attempt_at: None,
            expires_at: None,
            last_error: None,
            revoke_reason: None,
            revoked_at: None,
            verified_at: None,
            count_attempt: false,
        }
    }
}

/// A TOTP step used by a [`Change::RecordSecondFactor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotpStep {
    pub user_id: String,
    pub username: String,
    pub step: i64,
}

/// One change and the audit event that records it. A write with no change records a fact only
/// (a refused call, a login failure that changes nothing).
#[derive(Debug)]
pub struct Write {
    pub change: Option<Change>,
    pub event: AuditDraft,
}

/// What became of one write in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The change is applied and its event is in the chain at `seq`.
    Applied { seq: i64 },
    /// The change conflicted with the state (for example a name already taken, a TOTP step
    /// already used). Nothing changed; the event is in the chain at `seq`, marked `refused`.
    Conflict { seq: i64, reason: String },
}

/// What applying one change did, inside its transaction: the store's side of [`WriteOutcome`].
pub(crate) enum Applied {
    Done,
    /// The change conflicted with the state; the caller rolls it back.
    Conflict(String),
    /// A [`Change::Fenced`]'s lease is no longer the writer's: rolled back, and the write's
    /// event is recorded as `lease.lost`.
    LeaseLost(String),
}

/// Which grants to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantFilter {
    All,
    /// The credential may exist on the target.
    Live,
    Active,
    /// Revocations that failed and are being retried.
    Failing,
    /// Break-glass grants nobody has reviewed yet.
    Unreviewed,
}

/// Whose grants to walk (principal keys: `user:alice`, `workload:ROLE:NAME`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principals<'a> {
    All,
    Exactly(&'a str),
    /// Keys starting with this (every workload of one binding: `workload:ROLE:`).
    StartingWith(&'a str),
    /// The grants whose principal is this key or whose act chain holds it (an agent's:
    /// `agent:NAME`, whoever it acted for).
    Acting(&'a str),
}

/// An approval of one exact tool call (issue 22): what was asked, by whom and for whom, and
/// what became of it. `summary` is what the approver is shown (never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallApprovalRecord {
    pub id: String,
    /// SHA-256 (hex) of the call's key: tool, arguments' digest, subject and act chain.
    pub key_hash: String,
    pub tool: String,
    pub args_sha256: String,
    /// The principal key the call is made for.
    pub subject: String,
    /// The act chain, nearest actor first.
    pub actors: Vec<String>,
    pub summary: String,
    /// The `@step_up` policies that asked for it.
    pub policies: Vec<String>,
    pub state: CallApprovalState,
    pub created_at: Timestamp,
    /// Pending until then.
    pub expires_at: Timestamp,
    pub answered_by: Option<String>,
    pub answered_at: Option<Timestamp>,
    /// An approved call may be made once, until then.
    pub usable_until: Option<Timestamp>,
    pub used_at: Option<Timestamp>,
}

/// Where an approval of one tool call is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallApprovalState {
    Pending,
    Approved,
    Refused,
    Used,
    Expired,
}

impl CallApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallApprovalState::Pending => "pending",
            CallApprovalState::Approved => "approved",
            CallApprovalState::Refused => "refused",
            CallApprovalState::Used => "used",
            CallApprovalState::Expired => "expired",
        }
    }
}

impl std::str::FromStr for CallApprovalState {
    type Err = String;

    fn from_str(text: &str) -> Result<CallApprovalState, String> {
        Ok(match text {
            "pending" => CallApprovalState::Pending,
            "approved" => CallApprovalState::Approved,
            "refused" => CallApprovalState::Refused,
            "used" => CallApprovalState::Used,
            "expired" => CallApprovalState::Expired,
            other => return Err(format!("unknown call approval state `{other}`")),
        })
    }
}

/// An agent the broker knows: seen (a JWT login, a token exchange naming it) or disabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    pub name: String,
    /// Set while the kill switch is on.
    pub disabled_at: Option<Timestamp>,
    pub disabled_by: Option<String>,
    pub last_seen_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_grows_then_caps() {
        let delay = |n| throttle_delay(n, 4, Duration::from_secs(5), Duration::from_secs(15 * 60));
        assert_eq!(delay(1), Duration::ZERO);
        assert_eq!(delay(4), Duration::ZERO);
        assert_eq!(delay(5), Duration::from_secs(5));
        assert_eq!(delay(6), Duration::from_secs(10));
        assert_eq!(delay(9), Duration::from_secs(80));
        assert_eq!(delay(40), Duration::from_secs(900));
        assert_eq!(delay(i64::MAX), Duration::from_secs(900));
    }
}
