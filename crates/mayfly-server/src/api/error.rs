//! How a [`BrokerError`] becomes an HTTP answer: the one place a status code is chosen, one per
//! variant, with the body `{"error":{"code":"...","message":"..."}}`. Unexpected errors are
//! logged here and never sent.
//!
//! A 503 says when to try again (`Retry-After`, seconds): a busy pool, a blocking sink and the
//! rate limits give their own wait; a dependency that cannot be reached (the store during a
//! failover to its promoted standby, a target) `1`, as the store finds its new primary within
//! seconds and the call was not done (docs/store.md).
//!
//! A missing step-up (`step_up_required`) is a 401 as RFC 9470 has it: the token is valid but its
//! authentication is not recent enough, said by `WWW-Authenticate: Bearer
//! error="insufficient_user_authentication", max_age=<window seconds>`. Clients tell it from a
//! bad token by the code (the CLI says to run `mayfly step-up`, not `mayfly login`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_api::{ErrorBody, ErrorDetail};

use crate::error::{AuditedError, BrokerError};

/// `Retry-After` of a 503 for a dependency that cannot be reached ([`BrokerError::Unavailable`]).
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

/// The status and code of each error, for the API only.
pub trait HttpError {
    fn status(&self) -> StatusCode;
    fn code(&self) -> &'static str;
}

impl HttpError for BrokerError {
    fn status(&self) -> StatusCode {
        match self {
            BrokerError::BadRequest(_) | BrokerError::InvalidPolicy { .. } => {
                StatusCode::BAD_REQUEST
            }
            BrokerError::PayloadTooLarge | BrokerError::TooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            BrokerError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            BrokerError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            BrokerError::Unauthorized(_) | BrokerError::StepUpRequired { .. } => {
                StatusCode::UNAUTHORIZED
            }
            BrokerError::Forbidden(_) => StatusCode::FORBIDDEN,
            BrokerError::NotFound(_) => StatusCode::NOT_FOUND,
            BrokerError::Conflict(_) => StatusCode::CONFLICT,
            BrokerError::TooManyRequests { .. }
            | BrokerError::TooManyFromSource { .. }
            | BrokerError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            BrokerError::Sealed
            | BrokerError::NotInitialized
            | BrokerError::Unavailable(_)
            | BrokerError::Busy { .. }
            | BrokerError::SinkBlocked { .. } => StatusCode::SERVICE_UNAVAILABLE,
            BrokerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            BrokerError::BadRequest(_) | BrokerError::InvalidPolicy { .. } => "invalid_request",
            BrokerError::PayloadTooLarge | BrokerError::TooLarge(_) => "payload_too_large",
            BrokerError::BadGateway(_) => "bad_gateway",
            BrokerError::GatewayTimeout(_) => "gateway_timeout",
            BrokerError::RateLimited { .. } => "rate_limited",
            BrokerError::Unauthorized(_) => "unauthorized",
            BrokerError::StepUpRequired { .. } => "step_up_required",
            BrokerError::Forbidden(_) => "forbidden",
            BrokerError::NotFound(_) => "not_found",
            BrokerError::Conflict(_) => "conflict",
            BrokerError::TooManyRequests { .. } | BrokerError::TooManyFromSource { .. } => {
                "too_many_requests"
            }
            BrokerError::Sealed => "sealed",
            BrokerError::NotInitialized => "not_initialized",
            BrokerError::Unavailable(_) => "unavailable",
            BrokerError::Busy { .. } => "busy",
            BrokerError::SinkBlocked { .. } => "audit_sink_blocked",
            BrokerError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for BrokerError {
    fn into_response(self) -> Response {
        if let BrokerError::Internal(detail) = &self {
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
        let retry_after_secs = match &self {
            BrokerError::TooManyRequests { retry_after_secs }
            | BrokerError::TooManyFromSource { retry_after_secs }
            | BrokerError::RateLimited { retry_after_secs }
            | BrokerError::Busy { retry_after_secs }
            | BrokerError::SinkBlocked {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            BrokerError::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            _ => None,
        };
        if let Some(secs) = retry_after_secs
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        // RFC 9470's challenge: the token is good, its authentication is not recent enough.
        if let BrokerError::StepUpRequired { window_secs, .. } = self
            && let Ok(value) = HeaderValue::from_str(&format!(
                "Bearer error=\"insufficient_user_authentication\", \
                 error_description=\"a second factor is needed: run mayfly step-up\", \
                 max_age={window_secs}"
            ))
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

/// Marks a response whose refusal the handler already audited.
#[derive(Clone, Copy, Debug)]
pub struct Audited;

/// Marks an error response with its code, for the audit middleware.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for AuditedError {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        if self.audited {
            response.extensions_mut().insert(Audited);
        }
        response
    }
}
