//! The native HTTP API under `/v1/`: routes, the JSON extractor, errors, middleware, OpenAPI.

pub mod convert;
pub mod error;
pub mod json;
pub mod middleware;
pub mod openapi;
pub mod routes;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use crate::state::Broker;

pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/v1/openapi.json", get(routes::openapi))
        .route("/v1/sys/health", get(routes::health))
        .route("/v1/sys/seal-status", get(routes::seal_status))
        .route("/v1/sys/init", post(routes::init))
        .route("/v1/sys/unseal", post(routes::unseal))
        .route("/v1/sys/setup", post(routes::setup))
        .route("/v1/sys/audit/public-key", get(routes::audit_public_key))
        .route("/v1/sys/audit/verify", post(routes::audit_verify))
        .route("/v1/sys/audit/events", get(routes::audit_events))
        .route("/v1/auth/password/login", post(routes::password_login))
        .route("/v1/auth/jwt/login", post(routes::jwt_login))
        .route("/v1/auth/jwt/issuers/{name}", put(routes::put_jwt_issuer))
        .route("/v1/auth/jwt/roles/{name}", put(routes::put_jwt_role))
        .route("/v1/auth/token/lookup-self", get(routes::lookup_self))
        .route("/v1/auth/token/revoke-self", post(routes::revoke_self))
        .route(
            "/v1/users",
            post(routes::create_user).get(routes::list_users),
        )
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            broker.clone(),
            middleware::layer,
        ))
        .layer(DefaultBodyLimit::max(json::MAX_BODY_BYTES))
        .with_state(broker)
}
