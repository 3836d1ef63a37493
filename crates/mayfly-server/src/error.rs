//! [`BrokerError`]: what a broker operation answers when it does not do what was asked. Every
//! operation (access, users, seal, auth, certificates) returns it; the API maps each variant to
//! one HTTP status in `api/error.rs`, the only place a status code is chosen.
//!
//! A refusal the operation has already written to the audit log travels as [`AuditedError`], so
//! the audit middleware does not record it twice.

/// Why a broker operation did not happen. The text is the caller's to read: it never carries a
/// secret, and an unexpected failure ([`BrokerError::Internal`]) is logged, never shown.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The input is not acceptable; the message names the field and the problem.
    #[error("{0}")]
    BadRequest(String),
    /// A policy text Cedar refuses (it does not parse, or does not validate against the schema):
    /// the message names the field and each problem with its line; `problems` has each with its
    /// line and column, so an editor can show it at the line. Answered like
    /// [`BrokerError::BadRequest`].
    #[error("{message}")]
    InvalidPolicy {
        message: String,
        problems: Vec<PolicyProblem>,
    },
    #[error("the request body is larger than 1 MiB")]
    PayloadTooLarge,
    /// The caller is not authenticated (no, unknown, expired or revoked credentials).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but may not do this (policy, group, self-approval…).
    #[error("{0}")]
    Forbidden(String),
    /// The caller may do this, but only with a second factor proved within `window_secs`
    /// (`auth/step_up.rs`): `mayfly step-up`, then again.
    #[error(
        "{what} needs a second factor proved in the last {window_secs} s: run `mayfly step-up`, then try again"
    )]
    StepUpRequired { what: String, window_secs: u64 },
    #[error("{0}")]
    NotFound(String),
    /// The state moved on: already decided, already exists, revoked meanwhile…
    #[error("{0}")]
    Conflict(String),
    #[error("too many failed attempts: try again in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    /// A rate limit (the proxy's per route and per principal) is spent for now.
    #[error("rate limit reached: try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A body larger than its limit; the message says which limit.
    #[error("{0}")]
    TooLarge(String),
    /// An upstream the broker forwards to failed or answered unusably (never its URL or a secret).
    #[error("{0}")]
    BadGateway(String),
    /// An upstream did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    #[error("too many failed logins from this address: try again in {retry_after_secs} s")]
    TooManyFromSource { retry_after_secs: u64 },
    #[error("the broker is sealed: unseal it with `mayfly operator unseal`")]
    Sealed,
    #[error("the broker is not initialized: run `mayfly operator init`")]
    NotInitialized,
    /// A dependency (the store, a target) cannot be reached; nothing was done.
    #[error("{0}")]
    Unavailable(String),
    #[error("the broker is busy checking passwords: try again in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    /// An audit sink set to `on_failure = "block"` is failing: no new state change until it
    /// delivers again.
    #[error(
        "audit sink `{sink}` is failing and set to block: state changes are refused until it delivers again; try again in {retry_after_secs} s"
    )]
    SinkBlocked { sink: String, retry_after_secs: u64 },
    #[error("internal error")]
    Internal(String),
}

/// One problem of a refused policy text ([`BrokerError::InvalidPolicy`]), where an editor shows
/// it: 1-based line and column (in characters) of the start of what Cedar points at; a problem
/// of the whole text (no span: templates, a duplicate `@id`, a bad annotation) is put at line
/// 1, column 1. Also `crate::access::admin::PolicyProblem`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl From<mayfly_core::policy::PolicyProblem> for PolicyProblem {
    fn from(problem: mayfly_core::policy::PolicyProblem) -> PolicyProblem {
        PolicyProblem {
            line: problem.line.unwrap_or(1),
            column: problem.column.unwrap_or(1),
            message: problem.message,
        }
    }
}

impl BrokerError {
    /// The store or the audit log could not take the change: fail closed.
    pub fn store(error: &mayfly_store::StoreError) -> BrokerError {
        tracing::error!(error = %error, "store error");
        BrokerError::Unavailable("the store is unavailable; the action was not performed".into())
    }

    /// A target's answer to a check made before anything is saved: its refusal is the caller's
    /// to fix (naming `field`); an unreachable target is unavailable, and nothing was saved.
    pub fn target_refusal(field: &str, error: mayfly_targets::TargetError) -> BrokerError {
        use mayfly_targets::TargetError;
        match error {
            TargetError::Refused { reason, .. } => {
                BrokerError::BadRequest(format!("field `{field}`: {reason}"))
            }
            TargetError::Unavailable { target, source } => BrokerError::Unavailable(format!(
                "target `{target}` is unreachable ({source}): nothing was saved"
            )),
            other => BrokerError::BadRequest(format!("field `{field}`: {other}")),
        }
    }

    /// A policy text Cedar refused, as [`BrokerError::InvalidPolicy`].
    pub fn invalid_policy(error: &mayfly_core::policy::PolicyError) -> BrokerError {
        BrokerError::InvalidPolicy {
            message: format!("field `text`: {error}"),
            problems: error
                .problems()
                .into_iter()
                .map(PolicyProblem::from)
                .collect(),
        }
    }

    /// This refusal has been written to the audit log.
    pub fn audited(self) -> AuditedError {
        AuditedError {
            error: self,
            audited: true,
        }
    }
}

impl From<mayfly_store::StoreError> for BrokerError {
    fn from(error: mayfly_store::StoreError) -> Self {
        BrokerError::store(&error)
    }
}

impl From<mayfly_crypto::CryptoError> for BrokerError {
    fn from(error: mayfly_crypto::CryptoError) -> Self {
        BrokerError::Internal(format!("crypto: {error}"))
    }
}

/// A target that failed while the broker acted on it (not a check of the caller's input:
/// that is [`BrokerError::target_refusal`]).
impl From<mayfly_targets::TargetError> for BrokerError {
    fn from(error: mayfly_targets::TargetError) -> Self {
        use mayfly_targets::TargetError;
        match error {
            TargetError::Unavailable { target, .. } => {
                BrokerError::Unavailable(format!("target `{target}` is unreachable; try again"))
            }
            other => BrokerError::Conflict(other.to_string()),
        }
    }
}

/// An error answer, and whether its refusal was already audited by the code that made it.
#[derive(Debug)]
pub struct AuditedError {
    pub error: BrokerError,
    pub audited: bool,
}

impl From<BrokerError> for AuditedError {
    fn from(error: BrokerError) -> Self {
        AuditedError {
            error,
            audited: false,
        }
    }
}

impl From<mayfly_store::StoreError> for AuditedError {
    fn from(error: mayfly_store::StoreError) -> Self {
        BrokerError::from(error).into()
    }
}
