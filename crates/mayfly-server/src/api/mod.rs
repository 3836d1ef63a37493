//! The native HTTP API under `/v1/`: routes, the JSON extractor, errors, middleware, OpenAPI.

pub mod access_routes;
pub mod agent_routes;
pub mod approval_routes;
pub mod cluster_routes;
pub mod console;
pub mod error;
pub mod exchange_routes;
pub mod extract;
pub mod json;
pub mod mcp_routes;
pub mod middleware;
pub mod notification_routes;
pub mod openapi;
pub mod proxy_routes;
pub mod routes;
pub mod secret_routes;
pub mod sso_routes;
pub mod tls;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, patch, post, put};

use secret_routes as secrets;

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
        .route("/.well-known/jwks.json", get(routes::jwks))
        .route(
            "/.well-known/openid-configuration",
            get(routes::openid_configuration),
        )
        .route("/v1/sys/token-keys/rotate", post(routes::rotate_token_keys))
        .route("/v1/token/exchange", post(exchange_routes::exchange))
        .route("/v1/token/introspect", post(exchange_routes::introspect))
        .route("/v1/ssh/ca", get(routes::ssh_ca))
        .route("/v1/ssh/krl", get(routes::ssh_krl))
        .route("/v1/x509/ca", get(routes::x509_ca))
        .route("/v1/x509/crl", get(routes::x509_crl))
        .route("/v1/sys/audit/verify", post(routes::audit_verify))
        .route("/v1/sys/audit/events", get(routes::audit_events))
        .route("/v1/sys/audit/head", get(routes::audit_head))
        .route("/v1/sys/audit/sinks", get(routes::audit_sinks))
        .route("/v1/sys/cluster", get(cluster_routes::cluster_status))
        .route("/v1/auth/password/login", post(routes::password_login))
        .route("/v1/auth/jwt/login", post(routes::jwt_login))
        .route("/v1/auth/step-up", post(approval_routes::step_up))
        .route(
            "/v1/chat/slack/actions",
            post(approval_routes::slack_actions),
        )
        .route("/v1/chat/step-up", get(approval_routes::step_up_page))
        .route(
            "/v1/chat/slack/signing-secret",
            put(approval_routes::put_slack_signing_secret),
        )
        .route("/v1/users/{name}/slack", put(approval_routes::link_slack))
        .route("/v1/auth/jwt/issuers/{name}", put(routes::put_jwt_issuer))
        .route(
            "/v1/auth/jwt/roles/{name}",
            put(routes::put_jwt_role).delete(routes::delete_jwt_role),
        )
        .route("/v1/auth/token/lookup-self", get(routes::lookup_self))
        .route("/v1/auth/token/revoke-self", post(routes::revoke_self))
        .route("/v1/auth/token/revoke-all", post(routes::revoke_all))
        .route(
            "/v1/users",
            post(routes::create_user).get(routes::list_users),
        )
        .route("/v1/users/{name}", patch(routes::update_user))
        .route(
            "/v1/targets",
            post(access_routes::add_target).get(access_routes::list_targets),
        )
        .route(
            "/v1/targets/{name}/rotate-admin",
            post(access_routes::rotate_admin),
        )
        .route(
            "/v1/roles",
            post(access_routes::add_role).get(access_routes::list_roles),
        )
        .route("/v1/certificates", post(access_routes::issue_certificate))
        .route(
            "/v1/policy",
            put(access_routes::put_policy).get(access_routes::get_policy),
        )
        .route("/v1/policy/schema", get(access_routes::policy_schema))
        .route(
            "/v1/requests",
            post(access_routes::create_request).get(access_routes::list_requests),
        )
        .route("/v1/requests/{id}", get(access_routes::get_request))
        .route("/v1/requests/{id}/approve", post(access_routes::approve))
        .route("/v1/requests/{id}/deny", post(access_routes::deny))
        .route("/v1/requests/{id}/activate", post(access_routes::activate))
        .route("/v1/grants", get(access_routes::list_grants))
        .route("/v1/grants/{id}", get(access_routes::get_grant))
        .route("/v1/grants/{id}/revoke", post(access_routes::revoke_grant))
        .route("/v1/grants/{id}/renew", post(access_routes::renew_grant))
        .route("/v1/grants/{id}/review", post(access_routes::review_grant))
        .route("/v1/review", get(access_routes::review_queue))
        .route("/v1/agents", get(agent_routes::list_agents))
        .route(
            "/v1/agents/{name}/disable",
            post(agent_routes::disable_agent),
        )
        .route("/v1/agents/{name}/enable", post(agent_routes::enable_agent))
        .route(
            "/v1/notifications",
            get(notification_routes::list_notifications),
        )
        .route(
            "/v1/proxy-routes",
            post(proxy_routes::put_route).get(proxy_routes::list_routes),
        )
        .route(
            "/v1/proxy-routes/{name}",
            get(proxy_routes::get_route).delete(proxy_routes::delete_route),
        )
        .route("/v1/proxy/{route}", any(proxy_routes::call))
        .route("/v1/proxy/{route}/", any(proxy_routes::call))
        .route("/v1/proxy/{route}/{*path}", any(proxy_routes::call))
        .route(
            "/v1/secrets/{project}/{environment}",
            get(secrets::list_secrets),
        )
        .route(
            "/v1/secrets/{project}/{environment}/read-all",
            post(secrets::read_environment),
        )
        .route(
            "/v1/secrets/{project}/{environment}/{name}",
            put(secrets::put_secret)
                .get(secrets::get_secret)
                .delete(secrets::delete_secret),
        )
        .route(
            "/v1/secrets/{project}/{environment}/{name}/history",
            get(secrets::secret_history),
        )
        .route(
            "/v1/secrets/{project}/{environment}/{name}/undelete",
            post(secrets::undelete_secret),
        )
        .route(
            "/v1/secrets/{project}/{environment}/{name}/destroy",
            post(secrets::destroy_secret),
        )
        .route("/v1/sso/providers", get(sso_routes::list_providers))
        .route(
            "/v1/sso/providers/{name}",
            put(sso_routes::put_provider).delete(sso_routes::delete_provider),
        )
        .route("/v1/sso/start", post(sso_routes::start))
        .route("/v1/sso/step-up", post(sso_routes::step_up))
        .route(
            "/v1/sso/step-up/complete",
            post(sso_routes::step_up_complete),
        )
        .route("/v1/sso/callback", get(sso_routes::callback))
        .route("/v1/sso/token", post(sso_routes::token))
        .merge(mcp_routes::router(&broker))
        .nest("/ui", console::router())
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            broker.clone(),
            middleware::layer,
        ))
        .layer(DefaultBodyLimit::max(json::MAX_BODY_BYTES))
        .with_state(broker)
}
