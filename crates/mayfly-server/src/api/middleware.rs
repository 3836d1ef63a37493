//! Request middleware: a request id and the source address for every request, the sealed gate,
//! request metrics, and the audit of refused calls (any 4xx the handler did not audit itself is
//! recorded before the response leaves; if that fails the answer becomes 503).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mayfly_core::audit::{AuditDraft, Outcome};

use crate::api::error::ApiError;
use crate::auth::CallerName;
use crate::state::Broker;

/// Who and where a request came from, for audit events.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: String,
    pub source: Option<String>,
}

impl RequestMeta {
    pub fn fill(&self, event: &mut AuditDraft) {
        event.request_id = Some(self.request_id.clone());
        event.source = self.source.clone();
    }
}

/// Marks a response whose refusal the handler already audited.
#[derive(Clone, Copy, Debug)]
pub struct Audited;

/// Paths that answer while the broker is sealed.
fn open_while_sealed(path: &str) -> bool {
    matches!(
        path,
        "/v1/sys/health"
            | "/v1/sys/seal-status"
            | "/v1/sys/init"
            | "/v1/sys/unseal"
            | "/v1/openapi.json"
            | "/metrics"
            | "/healthz"
            | "/readyz"
            | "/v1/sys/audit/public-key"
    )
}

pub async fn layer(State(broker): State<Broker>, mut request: Request, next: Next) -> Response {
    let meta = RequestMeta {
        request_id: uuid::Uuid::now_v7().to_string(),
        source: request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string()),
    };
    request.extensions_mut().insert(meta.clone());
    let caller = CallerName::default();
    request.extensions_mut().insert(caller.clone());
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    if !open_while_sealed(&path) && broker.unsealed().await.is_none() {
        let initialized = broker
            .store()
            .seal()
            .await
            .map(|s| s.is_some())
            .unwrap_or(true);
        let error = if initialized {
            ApiError::Sealed
        } else {
            ApiError::NotInitialized
        };
        return with_request_id(error.into_response(), &meta);
    }

    let mut response = next.run(request).await;
    let status = response.status();
    metrics::counter!("mayfly_http_requests_total", "status" => status.as_u16().to_string())
        .increment(1);

    let refused = status.is_client_error()
        && (status != axum::http::StatusCode::NOT_FOUND || path.starts_with("/v1/"));
    if refused
        && response.extensions().get::<Audited>().is_none()
        && broker.unsealed().await.is_some()
    {
        let code = response
            .extensions()
            .get::<crate::api::error::ErrorCode>()
            .map_or("refused", |c| c.0);
        let mut event = AuditDraft::new(broker.now(), "http.refused", Outcome::Refused)
            .detail("method", method)
            .detail("path", truncate(&path, 256))
            .detail("status", status.as_u16())
            .detail("code", code);
        event.actor = caller.get();
        meta.fill(&mut event);
        if let Err(error) = broker.record(event).await {
            response = error.into_response();
        }
    }
    with_request_id(response, &meta)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn with_request_id(mut response: Response, meta: &RequestMeta) -> Response {
    if let Ok(value) = axum::http::HeaderValue::from_str(&meta.request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
