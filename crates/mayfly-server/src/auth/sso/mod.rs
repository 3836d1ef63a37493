//! Single sign-on for people through OpenID Connect providers (Okta, Entra ID, Google, Keycloak…;
//! docs/sso.md). An admin saves a provider (issuer, client id, client secret sealed by the barrier,
//! the groups claim and its mapping to Mayfly groups); its endpoints are found by discovery when
//! it is saved, never at login.
//!
//! - `provider.rs`: the providers' administration and their stored form.
//! - `flow.rs`: the authorization-code flow with PKCE, `state` and `nonce` (start, callback, the
//!   CLI's loopback code and its exchange, re-authentication for step-up).
//! - `id_token.rs`: the checks of an ID token (signature by the issuer's JWKS, `iss`, `aud`,
//!   `azp`, `exp`, `iat`, `nonce`, `auth_time`).
//!
//! A person is bound to the provider's issuer and `sub`, never to a name or e-mail address the
//! provider lets change; the name of a user made at first login is never one a local user has.

pub mod flow;
pub mod id_token;
pub mod provider;
