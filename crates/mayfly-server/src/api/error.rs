//! `ApiError`: every error answer of the native API, with one status per variant, as
//! `{"error":{"code":"...","message":"..."}}`. Unexpected errors are logged here and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_api::{ErrorBody, ErrorDetail};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than 1 MiB")]
    PayloadTooLarge,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("too many failed attempts: try again in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("too many failed logins from this address: try again in {retry_after_secs} s")]
    TooManyFromSource { retry_after_secs: u64 },
    #[error("the broker is sealed: unseal it with `mayfly operator unseal`")]
    Sealed,
    #[error("the broker is not initialized: run `mayfly operator init`")]
    NotInitialized,
    #[error("{0}")]
    Unavailable(String),
    #[error("the broker is busy checking passwords: try again in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooManyRequests { .. } | ApiError::TooManyFromSource { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Sealed
            | ApiError::NotInitialized
            | ApiError::Unavailable(_)
            | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid_request",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooManyRequests { .. } | ApiError::TooManyFromSource { .. } => {
                "too_many_requests"
            }
            ApiError::Sealed => "sealed",
            ApiError::NotInitialized => "not_initialized",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Busy { .. } => "busy",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The store or the audit log could not take the change: fail closed.
    pub fn store(error: &mayfly_store::StoreError) -> ApiError {
        tracing::error!(error = %error, "store error");
        ApiError::Unavailable("the store is unavailable; the action was not performed".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(detail = %detail, "internal error");
        }
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after_secs }
        | ApiError::TooManyFromSource { retry_after_secs }
        | ApiError::Busy { retry_after_secs } = self
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

/// Marks an error response with its code, for the audit middleware.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// An error answer, and whether its refusal was already audited by the code that made it (so the
/// audit middleware does not record it twice).
#[derive(Debug)]
pub struct AuditedError {
    pub error: ApiError,
    pub audited: bool,
}

impl ApiError {
    /// This refusal has been written to the audit log.
    pub fn audited(self) -> AuditedError {
        AuditedError {
            error: self,
            audited: true,
        }
    }
}

impl From<ApiError> for AuditedError {
    fn from(error: ApiError) -> Self {
        AuditedError {
            error,
            audited: false,
        }
    }
}

impl IntoResponse for AuditedError {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        if self.audited {
            response
                .extensions_mut()
                .insert(crate::api::middleware::Audited);
        }
        response
    }
}
