//! The OpenAPI document served at `/v1/openapi.json`, generated from the handlers' annotations.

use utoipa::OpenApi;

use crate::api::{
    access_routes, approval_routes, exchange_routes, proxy_routes, routes, secret_routes,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mayfly",
        description = "Zero standing privileges: just-in-time access broker. Native API."
    ),
    paths(
        routes::health,
        routes::seal_status,
        routes::init,
        routes::unseal,
        routes::setup,
        routes::password_login,
        routes::jwt_login,
        approval_routes::step_up,
        approval_routes::slack_actions,
        approval_routes::step_up_page,
        approval_routes::put_slack_signing_secret,
        approval_routes::link_slack,
        routes::lookup_self,
        routes::revoke_self,
        routes::create_user,
        routes::list_users,
        routes::update_user,
        routes::put_jwt_issuer,
        routes::put_jwt_role,
        routes::delete_jwt_role,
        routes::audit_public_key,
        routes::jwks,
        routes::openid_configuration,
        routes::rotate_token_keys,
        routes::ssh_ca,
        routes::ssh_krl,
        routes::x509_ca,
        routes::x509_crl,
        routes::audit_verify,
        routes::audit_events,
        routes::audit_head,
        access_routes::add_target,
        access_routes::list_targets,
        access_routes::rotate_admin,
        access_routes::add_role,
        access_routes::list_roles,
        access_routes::put_policy,
        access_routes::get_policy,
        access_routes::policy_schema,
        access_routes::create_request,
        access_routes::list_requests,
        access_routes::get_request,
        access_routes::approve,
        access_routes::deny,
        access_routes::activate,
        access_routes::issue_certificate,
        access_routes::list_grants,
        access_routes::get_grant,
        access_routes::revoke_grant,
        access_routes::renew_grant,
        access_routes::review_queue,
        access_routes::review_grant,
        exchange_routes::exchange,
        exchange_routes::introspect,
        proxy_routes::put_route,
        proxy_routes::list_routes,
        proxy_routes::get_route,
        proxy_routes::delete_route,
        proxy_routes::call,
        secret_routes::put_secret,
        secret_routes::get_secret,
        secret_routes::list_secrets,
        secret_routes::read_environment,
        secret_routes::secret_history,
        secret_routes::delete_secret,
        secret_routes::undelete_secret,
        secret_routes::destroy_secret,
    ),
    components(schemas(mayfly_api::ErrorBody, mayfly_api::ErrorDetail))
)]
pub struct ApiDoc;

pub fn document() -> String {
    ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".into())
}
