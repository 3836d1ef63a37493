//! Request middleware: a request id and the source address for every request, the sealed gate,
//! request metrics, and the audit of refused calls (any 4xx the handler did not audit itself is
//! recorded before the response leaves; if that fails the answer becomes 503).
//!
//! Refusals of unauthenticated calls are aggregated ([`crate::audit::refused::audit_refusal`], [`crate::audit::refusals::Refusals`]): the first
//! of a kind, for one reason, from one source in a window is written in full, durable before
//! its answer leaves; the others are counted in memory and their count is written as one
//! `auth.refused.aggregate` event when the window closes (`flush_refusals_every`, every
//! `refusal_window` and at shutdown). A flood of refused calls thus writes a few events per
//! source and window instead of one each, and every refusal is in some event's count.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mayfly_core::audit::{AuditDraft, Outcome};

use crate::api::error::Audited;
use crate::api::extract::CallerName;
use crate::audit::refused::audit_refusal;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

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
    let meta = Origin {
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
            BrokerError::Sealed
        } else {
            BrokerError::NotInitialized
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
        let audited = match event.actor {
            Some(_) => broker.record(event).await.map(|_| ()),
            None => audit_refusal(&broker, event).await,
        };
        if let Err(error) = audited {
            response = error.into_response();
        }
    }
    with_request_id(response, &meta)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn with_request_id(mut response: Response, meta: &Origin) -> Response {
    if let Ok(value) = axum::http::HeaderValue::from_str(&meta.request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
