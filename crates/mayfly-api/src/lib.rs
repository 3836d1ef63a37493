//! Wire types of the native HTTP API, shared by the server and the CLI. Serde + OpenAPI schemas,
//! no logic. Times are unix milliseconds (`*_at_ms`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod cluster;
pub use cluster::{ClusterLease, ClusterNode, ClusterStatus};

/// Every error answer: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `invalid_request`, `unauthorized`, `sealed`.
    pub code: String,
    /// What went wrong, for people. Never contains a secret.
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub initialized: bool,
    pub sealed: bool,
    pub version: String,
    /// Live grants past due (their expiry or next revocation attempt is at or before now): what
    /// nobody revokes while the broker is sealed. Counted in the store, so every node sharing it
    /// says the same.
    #[serde(default)]
    pub past_due_grants: u64,
    /// This node's auto-unseal, when configured (`[auto_unseal]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_unseal: Option<AutoUnsealStatus>,
}

/// How this node's auto-unseal stands. Never holds key material.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AutoUnsealStatus {
    /// `pkcs11` or `file`.
    pub kind: String,
    /// The key-encryption key's id (`pkcs11:SERIAL:LABEL`, `file:FINGERPRINT`), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `unsealed` (this node unsealed itself), `waiting` (not tried yet, or no wrap yet: it
    /// tries again), `failed` (see `error`).
    pub state: String,
    /// What went wrong last, and what to do. The node stays sealed meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    /// Shares needed to unseal.
    pub threshold: u8,
    pub n_shares: u8,
    /// Shares given so far in this unseal attempt.
    pub progress: u8,
    /// This node's auto-unseal, when configured (`[auto_unseal]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_unseal: Option<AutoUnsealStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    pub shares: u8,
    pub threshold: u8,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct InitResponse {
    /// Shown once. Give one to each key holder.
    pub shares: Vec<String>,
    pub threshold: u8,
    /// Shown once: creates the first admin with `mayfly operator setup`.
    pub setup_code: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    #[serde(default)]
    pub share: Option<String>,
    /// Forget the shares given so far.
    #[serde(default)]
    pub reset: bool,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    pub setup_code: String,
    pub username: String,
    pub password: String,
}

/// A new user's TOTP enrollment, shown once.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct TotpEnrollment {
    pub otpauth_url: String,
    pub secret_base32: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct UserCreated {
    pub username: String,
    pub groups: Vec<String>,
    /// Present when the server generated the password; shown once.
    pub password: Option<String>,
    pub totp: TotpEnrollment,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub username: String,
    /// Omit to have the server generate a strong one.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A change to a user's binding. Whatever is omitted stays as it is. Grants that the user's new
/// groups (or being disabled) no longer allow are revoked at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// The user's groups from now on (replaces the list).
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// `true` disables the user: no login, every session and grant ends now.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// A user after a change, and how many active grants it cost.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserUpdated {
    pub user: UserSummary,
    pub grants_revoked: u64,
}

/// After a workload binding was removed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BindingRemoved {
    pub name: String,
    pub grants_revoked: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserSummary {
    pub username: String,
    pub groups: Vec<String>,
    pub disabled: bool,
    pub created_at_ms: i64,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordLoginRequest {
    pub username: String,
    pub password: String,
    pub totp: String,
}

/// `POST /v1/auth/step-up`: a TOTP code proves a second factor for the caller's session now.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpRequest {
    pub totp: String,
}

/// When the session's second factor was recorded, and until when it counts for the broker's
/// step-up window (a `@step_up("SECONDS")` role may ask for a shorter one).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepUpResponse {
    pub factor_at_ms: i64,
    pub fresh_until_ms: i64,
}

/// `PUT /v1/chat/slack/signing-secret` (admins): the Slack app's signing secret, sealed by the
/// barrier, never shown again.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackSigningSecretRequest {
    pub signing_secret: String,
}

/// `PUT /v1/users/{name}/slack` (admins): links a Slack user id (`U…`/`W…`) to the user, or
/// unlinks with `null`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkSlackRequest {
    pub slack_user_id: Option<String>,
}

/// As Vault's JWT login takes it.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtLoginRequest {
    pub role: String,
    pub jwt: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// The session token; shown once, send it as `Authorization: Bearer …`.
    pub token: String,
    pub session: TokenInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// The session id (an accessor: names the session without being able to use it).
    pub id: String,
    pub principal: PrincipalInfo,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PrincipalInfo {
    /// `user`, `workload` or `agent`.
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// For a workload: the JWT role it logged in with.
    #[serde(default)]
    pub role: Option<String>,
}

/// A trusted JWT issuer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// The exact `iss` claim.
    pub issuer: String,
    /// Where to fetch its keys (JWKS). Give this, `public_keys` or `discover`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Find the JWKS URL through `<issuer>/.well-known/openid-configuration` (OpenID Connect
    /// Discovery) when the issuer is saved; the broker stores the `jwks_uri` it found as
    /// `jwks_url`. Discovery happens only then: save the issuer again to discover again.
    #[serde(default)]
    pub discover: bool,
    #[serde(default)]
    pub public_keys: Vec<JwtPublicKey>,
    /// Clock skew allowed on `exp`/`nbf`, at most 60.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
}

fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtPublicKey {
    #[serde(default)]
    pub kid: Option<String>,
    /// `-----BEGIN PUBLIC KEY-----` PEM (RSA, EC P-256/P-384 or Ed25519).
    pub pem: String,
}

/// A JWT login role: which tokens of which issuer map to which Workload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtRoleConfig {
    /// Name of a configured issuer.
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Claims that must match exactly (string claims; a list means any of them).
    #[serde(default)]
    pub bound_claims: std::collections::BTreeMap<String, ClaimMatch>,
    /// The claim whose value names the workload (e.g. `sub`).
    #[serde(default = "default_name_claim")]
    pub workload_name_claim: String,
    /// Session lifetime for this role, at most one hour.
    #[serde(default = "default_role_ttl")]
    pub token_ttl_seconds: u64,
    /// The role is an AI agent's: its logins are the agent `agent:<role name>` (whatever the
    /// name claim says, which is only audited), subject to `mayfly agent disable`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent: bool,
}

fn default_name_claim() -> String {
    "sub".into()
}

fn default_role_ttl() -> u64 {
    900
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum ClaimMatch {
    One(String),
    Any(Vec<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPublicKey {
    /// Ed25519 public key that signs audit checkpoints, base64 (standard, padded).
    pub public_key: String,
    pub key_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerifyReport {
    pub ok: bool,
    /// The first problem found, naming the event.
    pub error: Option<String>,
    pub n_events: u64,
    pub n_checkpoints: u64,
    pub n_signatures_checked: u64,
    pub last_seq: i64,
    pub n_unsigned_tail: u64,
}

/// The chain's head: the last event written and its hash. `mayfly audit head` prints it as
/// `SEQ:HASH`, which `mayfly audit verify --file … --expect-head SEQ:HASH` checks a copy against.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditHead {
    pub seq: i64,
    /// SHA-256 of the event's canonical body, hex.
    pub hash: String,
}

/// The audit forwarding sinks (syslog, webhook) and how far each has delivered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditSinks {
    /// The chain's head when asked.
    pub head: i64,
    pub sinks: Vec<AuditSinkStatus>,
}

/// One forwarding sink's state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditSinkStatus {
    pub name: String,
    /// `syslog-tls`, `syslog-udp` or `webhook`.
    pub kind: String,
    /// `alarm` or `block`.
    pub on_failure: String,
    /// `delivering`, `failing` or `blocking` (failing, and state changes are refused).
    pub state: String,
    /// The last event delivered (the durable cursor).
    pub cursor: i64,
    /// Events behind the head.
    pub lag_events: i64,
    /// Age of the oldest event not yet delivered, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Failed attempts since start.
    pub n_failures: u64,
    /// Since when it fails (unix ms), and why (never a secret).
    pub failing_since_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// A page of audit events as file lines (canonical JSON with `hash`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEventsPage {
    pub lines: Vec<String>,
    pub next_after: i64,
}

/// Adds a target.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetRequest {
    /// `postgres`, `mysql` (MariaDB), `redis`, `ssh` or `x509`.
    pub kind: String,
    pub name: String,
    /// `postgres://HOST:PORT/DB`, `mysql://HOST:PORT`, `rediss://HOST:PORT`, `ssh://HOST:PORT`
    /// or `tls://HOST:PORT`, without credentials.
    /// A host other than this machine needs verified TLS: `?ca=` and the target's CA certificate
    /// (PEM, in base64url); `redis://` and no CA are for a server on this machine only.
    pub url: String,
    pub admin_user: String,
    /// Stored through the barrier; never shown again.
    pub admin_password: String,
    /// Database targets: the broker rotates its admin password this often (seconds, at least
    /// 3600), so that only the broker knows it. Absent: on demand only
    /// (`POST /v1/targets/{name}/rotate-admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_admin_every_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TargetInfo {
    pub name: String,
    /// `postgres`, `mysql` (MariaDB), `redis`, `ssh` or `x509`.
    pub kind: String,
    /// Where the broker reaches it: shown to admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Database targets, admins only: when the broker's admin secret on it was last set (a
    /// rotation, or the target put), unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_rotated_at_ms: Option<i64>,
    /// Database targets, admins only: the schedule of rotations of the admin secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_admin_every_seconds: Option<u64>,
    /// Database targets, admins only: why the last attempts to rotate the admin secret failed
    /// (it is retried with backoff); absent when none failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_rotation_error: Option<String>,
}

/// The answer to `POST /v1/targets/{name}/rotate-admin`: the target's admin secret is a fresh
/// password only the broker knows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminRotated {
    pub target: String,
    /// Unix ms.
    pub admin_rotated_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleRequest {
    pub target: String,
    pub name: String,
    /// SQL with `{{name}}`, `{{password}}`, `{{expiration}}`.
    pub creation_sql: String,
    #[serde(default)]
    pub revocation_sql: Option<String>,
    pub max_ttl_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoleInfo {
    pub target: String,
    pub name: String,
    pub max_ttl_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    /// Cedar policies.
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyInfo {
    pub text: String,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    pub target: String,
    pub role: String,
    pub ttl_seconds: u64,
    pub reason: String,
    #[serde(default)]
    pub ticket: Option<String>,
    /// Emergency access where a policy permits `break_glass`: issued at once, notified, reviewed.
    #[serde(default)]
    pub break_glass: bool,
}

/// One call for a certificate role (SSH, X.509) that needs no approval: decided, issued and
/// recorded at once (`POST /v1/certificates`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    pub target: String,
    pub role: String,
    pub ttl_seconds: u64,
    pub reason: String,
    #[serde(default)]
    pub ticket: Option<String>,
    /// For an SSH role: the public key to certify, as in `authorized_keys`.
    #[serde(default)]
    pub public_key: Option<String>,
    /// For an X.509 role: a PEM certificate request for your own key (else the broker makes a
    /// P-256 key and returns it once).
    #[serde(default)]
    pub csr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestInfo {
    pub id: String,
    pub principal: String,
    pub target: String,
    pub role: String,
    pub reason: String,
    pub ticket: String,
    pub ttl_seconds: u64,
    /// `pending`, `allowed`, `denied`, `expired` or `activated`.
    pub state: String,
    pub approvals_needed: i64,
    pub approvers: Vec<String>,
    /// The policies that decided, or why it was denied.
    pub decision: String,
    pub break_glass: bool,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The act chain: the agents (principal keys) that asked for the principal, nearest first;
    /// absent when the principal asked itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub act: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantInfo {
    pub id: String,
    pub request_id: String,
    pub principal: String,
    pub target: String,
    pub role: String,
    pub login: String,
    /// `issuing`, `active`, `revoking`, `revoked`, `verified` or `failed`.
    pub state: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub seconds_left: i64,
    pub n_attempts: i64,
    pub last_error: Option<String>,
    pub revoke_reason: Option<String>,
    pub break_glass: bool,
    /// The act chain of the request it was made from, nearest actor first; absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub act: Vec<String>,
}

/// The credential of an activated grant, shown once.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct Credential {
    pub grant: GrantInfo,
    /// The target's kind: `postgres`, `mysql` (MariaDB), `redis`, `ssh` or `x509`.
    #[serde(default)]
    pub kind: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: String,
    /// For an SSH grant the user certificate (`…-cert-v01@openssh.com …`); for an X.509 grant the
    /// client certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// For an X.509 grant without a CSR: the private key the broker made (PEM), shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

/// Optional body of an activation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// For an SSH role: the public key to certify, as in `authorized_keys`.
    #[serde(default)]
    pub public_key: Option<String>,
    /// For an X.509 role: a PEM certificate request for your own key (else the broker makes a
    /// P-256 key and returns it once).
    #[serde(default)]
    pub csr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// More time from now, capped at the request's maximum counted from the grant's creation.
    pub ttl_seconds: u64,
}

/// `Debug` for the types that carry a secret (a password, a share, a token, a key): the type's name
/// only, so no `{:?}` can ever print one.
macro_rules! redacted_debug {
    ($($name:ident),* $(,)?) => {
        $(
            impl std::fmt::Debug for $name {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.debug_struct(stringify!($name)).finish_non_exhaustive()
                }
            }
        )*
    };
}

redacted_debug!(
    InitResponse,
    UnsealRequest,
    SetupRequest,
    TotpEnrollment,
    UserCreated,
    CreateUserRequest,
    PasswordLoginRequest,
    JwtLoginRequest,
    LoginResponse,
    StepUpRequest,
    SlackSigningSecretRequest,
    TargetRequest,
    Credential,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let request = TargetRequest {
            kind: "postgres".into(),
            name: "db".into(),
            url: "postgres://h:5432/db".into(),
            admin_user: "admin".into(),
            admin_password: "hunter2-secret".into(),
            rotate_admin_every_seconds: None,
        };
        let login = PasswordLoginRequest {
            username: "alice".into(),
            password: "hunter2-secret".into(),
            totp: "123456".into(),
        };
        for text in [format!("{request:?}"), format!("{login:?}")] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("123456"), "{text}");
        }
    }
}

/// One public key of the broker's token signing keys (RFC 7517; OKP keys per RFC 8037).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Jwk {
    /// `OKP` (Ed25519) or `EC` (P-256).
    pub kty: String,
    /// `Ed25519` or `P-256`.
    pub crv: String,
    /// The public key (base64url, no padding): the Ed25519 key, or the P-256 point's x.
    pub x: String,
    /// The P-256 point's y (base64url, no padding); absent for Ed25519.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// The key id: the RFC 7638 thumbprint of the key.
    pub kid: String,
    /// `EdDSA` or `ES256`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// `GET /.well-known/jwks.json`: the public keys that verify the tokens the broker signs, those
/// that sign now and those replaced less than the longest token lifetime ago.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// `GET /.well-known/openid-configuration`: the discovery document, with what is true of this
/// broker (it issues tokens but is not an OpenID provider: no authorization endpoint).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OpenIdConfiguration {
    /// The `iss` of the tokens the broker signs: its public URL.
    pub issuer: String,
    /// Where the JWKS is.
    pub jwks_uri: String,
}

/// A token signing key, by id and algorithm.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyInfo {
    pub kid: String,
    pub alg: String,
}

/// The answer to `POST /v1/sys/token-keys/rotate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SigningKeysRotated {
    /// The new generation of keys, which signs from now on.
    pub generation: String,
    pub keys: Vec<SigningKeyInfo>,
    /// The keys that signed until now.
    pub previous: Vec<SigningKeyInfo>,
    /// Until when the previous keys stay in the JWKS (unix ms): every token they signed has
    /// expired by then.
    pub previous_published_until_ms: i64,
}

/// A rate: `per_second` requests on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyRate {
    /// Requests per second on average (may be fractional: `0.5` is one every two seconds).
    pub per_second: f64,
    /// Requests allowed at once before the rate applies.
    pub burst: u32,
}

/// Adds (or replaces) a route of the secure proxy (`POST /v1/proxy-routes`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyRouteRequest {
    /// `[a-z0-9][a-z0-9-]{0,62}`: the route is called at `/v1/proxy/<name>/…`.
    pub name: String,
    /// `https://HOST[:PORT][/PREFIX]` (plain `http://` only to a loopback address or `localhost`).
    pub upstream: String,
    /// Credentials to inject: `header:NAME=VALUE`, `basic:USER=PASSWORD` or `query:NAME=VALUE`,
    /// values naming secrets as `{{secret:PROJECT/ENV/NAME}}`.
    pub inject: Vec<String>,
    /// Per principal on this route (default 10/s, burst 20).
    #[serde(default)]
    pub per_principal: Option<ProxyRate>,
    /// For the whole route (default 100/s, burst 200).
    #[serde(default)]
    pub per_route: Option<ProxyRate>,
    /// Origins (`https://app.example`) whose browsers may call the route (CORS); none by default.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// The largest request body forwarded (default 1 MiB, at most 16 MiB).
    #[serde(default)]
    pub max_request_bytes: Option<u64>,
    /// The largest answer body passed back (default 10 MiB, at most 1 GiB).
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
    /// How long the upstream has to answer, whole body included (default 30 s, at most 300 s).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A route of the secure proxy, as stored (secret paths, never values).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProxyRouteInfo {
    pub name: String,
    pub upstream: String,
    pub inject: Vec<String>,
    pub per_principal: ProxyRate,
    pub per_route: ProxyRate,
    pub cors_origins: Vec<String>,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub timeout_ms: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// `PUT /v1/secrets/{project}/{environment}/{name}`: a new version of a stored secret. Its
/// `Debug` never shows the value.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretPut {
    /// The value (UTF-8, at most 64 KiB).
    pub value: String,
    /// Check-and-set: the version the writer expects to be the current one (the highest ever
    /// written); `0`: the secret must not exist yet. A mismatch answers 409 naming the current
    /// version.
    #[serde(default)]
    pub cas: Option<i64>,
}

impl std::fmt::Debug for SecretPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretPut")
            .field("value", &"[REDACTED]")
            .field("cas", &self.cas)
            .finish()
    }
}

/// A version written (or changed) of a stored secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretWritten {
    /// `project/environment/NAME`.
    pub path: String,
    pub version: i64,
}

/// A stored secret's value, as `GET /v1/secrets/{project}/{environment}/{name}` answers it
/// (with `Cache-Control: no-store`). Its `Debug` never shows the value.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretValue {
    pub path: String,
    pub version: i64,
    pub value: String,
    pub created_at_ms: i64,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("value", &"[REDACTED]")
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

/// One secret in a listing: its name and its current version, never its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretListed {
    pub name: String,
    pub version: i64,
    pub created_at_ms: i64,
    /// How old the current version is, in seconds.
    pub age_secs: i64,
}

/// `GET /v1/secrets/{project}/{environment}`: the secrets of an environment the caller may read.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    /// `project/environment`.
    pub environment: String,
    pub secrets: Vec<SecretListed>,
}

/// One version in a secret's history, never its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretVersionInfo {
    pub version: i64,
    pub created_at_ms: i64,
    /// The principal that wrote it.
    pub created_by: String,
    pub deleted_at_ms: Option<i64>,
    pub destroyed_at_ms: Option<i64>,
}

/// `GET /v1/secrets/{project}/{environment}/{name}/history`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretHistory {
    pub path: String,
    pub versions: Vec<SecretVersionInfo>,
}

/// `POST /v1/secrets/{project}/{environment}/{name}/destroy`: the versions whose value is removed
/// for good.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretDestroy {
    pub versions: Vec<i64>,
}

/// What delete, undelete and destroy changed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretVersionsChanged {
    pub path: String,
    pub versions: Vec<i64>,
}

/// `POST /v1/secrets/{project}/{environment}/read-all`: the current values of the secrets of an
/// environment that the caller may read (`read_secret` decided per secret); the others are left
/// out and only counted.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretEnvironment {
    pub environment: String,
    pub secrets: Vec<SecretValue>,
    /// How many live secrets of the environment the caller may not read (left out).
    pub n_refused: u64,
}

impl std::fmt::Debug for SecretEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretEnvironment")
            .field("environment", &self.environment)
            .field("secrets", &self.secrets)
            .field("n_refused", &self.n_refused)
            .finish()
    }
}

/// A notification in the outbox (`GET /v1/notifications`): where it goes, what it is about,
/// and how its delivery went. Never its payload's secrets: it has none, and is not shown.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationInfo {
    /// The delivery id (`X-Mayfly-Delivery`).
    pub id: String,
    pub channel: String,
    /// `request.pending`, `request.approved`, `request.denied`, `grant.activated`,
    /// `break_glass.used`, `revocation.failing` or `grant.expiring`.
    pub kind: String,
    pub created_at_ms: i64,
    pub n_attempts: i64,
    pub last_error: Option<String>,
    /// When it is tried next (`None`: delivered).
    pub next_attempt_at_ms: Option<i64>,
    pub delivered_at_ms: Option<i64>,
    /// It failed at least the configured number of attempts (and is still retried).
    pub failing: bool,
}

/// `PUT /v1/sso/providers/{name}`: an OpenID Connect provider people log in with (docs/sso.md).
/// Its endpoints are found by discovery (`<issuer>/.well-known/openid-configuration`) when it is
/// saved.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoProviderRequest {
    /// The issuer, exactly as the provider's `iss` claim says it.
    pub issuer: String,
    pub client_id: String,
    /// Kept sealed by the barrier; never shown again.
    pub client_secret: String,
    /// The ID token claim that lists the person's groups at the provider (e.g. `groups`).
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Provider group → Mayfly group. Groups not named here are ignored.
    #[serde(default)]
    pub group_map: std::collections::BTreeMap<String, String>,
    /// The claim that names a user made at first login (default `preferred_username`).
    #[serde(default)]
    pub username_claim: Option<String>,
    /// Extra scopes besides `openid` (default `profile email`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `acr_values` sent when a session re-authenticates (step-up).
    #[serde(default)]
    pub step_up_acr_values: Option<String>,
}

impl std::fmt::Debug for SsoProviderRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoProviderRequest")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A configured provider as the broker shows it (never its client secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoProviderInfo {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub groups_claim: Option<String>,
    pub group_map: std::collections::BTreeMap<String, String>,
    pub username_claim: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    /// The redirect URI to register at the provider.
    pub redirect_uri: String,
}

/// A configured provider as anyone may see it (a login page needs it): no client id, claims,
/// group map or endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoProviderPublic {
    pub name: String,
    pub issuer: String,
    /// The redirect URI to register at the provider.
    pub redirect_uri: String,
}

/// `GET /v1/sso/providers`: the full view for an admin, the public one for anyone else.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SsoProviderList {
    Full(Vec<SsoProviderInfo>),
    Public(Vec<SsoProviderPublic>),
}

impl SsoProviderList {
    /// The providers' names.
    pub fn names(&self) -> Vec<&str> {
        match self {
            SsoProviderList::Full(list) => list.iter().map(|p| p.name.as_str()).collect(),
            SsoProviderList::Public(list) => list.iter().map(|p| p.name.as_str()).collect(),
        }
    }
}

/// `POST /v1/sso/start` (login) and `POST /v1/sso/step-up` (re-authentication of the caller's
/// session; `code_challenge` is required there, `redirect_uri` optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoStartRequest {
    pub provider: String,
    /// The CLI's loopback address (`http://127.0.0.1:<port>/…` or `http://[::1]:<port>/…`): the
    /// broker's callback sends the browser there with a one-time code instead of answering the
    /// session itself. Needs `code_challenge`.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// The CLI's PKCE challenge (S256, base64url of SHA-256 of its verifier), which the one-time
    /// code is bound to.
    #[serde(default)]
    pub code_challenge: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoStarted {
    /// Where to send the browser.
    pub authorization_url: String,
    pub expires_at_ms: i64,
}

/// `POST /v1/sso/token`: the CLI trades the one-time code the broker's callback gave its loopback
/// listener, and the verifier of its challenge, for a session.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoTokenRequest {
    pub code: String,
    pub code_verifier: String,
}

impl std::fmt::Debug for SsoTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SsoTokenRequest(<redacted>)")
    }
}

/// The answer of the callback of a step-up flow started without a loopback `redirect_uri`: the
/// one-time step-up code ([`SsoTokenRequest`] to `POST /v1/sso/step-up/complete`, with the
/// verifier of the step-up's challenge, by the session that started it). The callback records
/// no factor itself: who re-authenticated must not be able to lend it to a session they did not
/// start the step-up from.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoStepUpCode {
    pub code: String,
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for SsoStepUpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SsoStepUpCode(<redacted>)")
    }
}

/// The answer of `POST /v1/sso/step-up/complete`: the session re-authenticated at `auth_time`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SsoSteppedUp {
    pub session_id: String,
    pub auth_time_ms: i64,
}

/// An AI agent the broker knows (issue 22): an agent JWT role, or an agent seen acting for
/// someone by token exchange, or one disabled.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentInfo {
    pub name: String,
    /// Whether the kill switch is on (`mayfly agent disable`).
    pub disabled: bool,
    pub disabled_at_ms: Option<i64>,
    pub disabled_by: Option<String>,
    /// When it last logged in or was named as actor in a token exchange.
    pub last_seen_at_ms: Option<i64>,
    /// Whether a JWT role of this name (an agent role) lets it log in on its own.
    pub jwt_role: bool,
}

/// What `mayfly agent disable` did at once. Its sessions and its pending call approvals ended in
/// the same commit as the switch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentDisabled {
    pub name: String,
    /// Grants whose principal or act chain held the agent, now being revoked.
    pub grants_revoked: u64,
    /// Open requests (pending or allowed) it made or acted in, withdrawn.
    pub requests_withdrawn: u64,
}
