//! Core and store types to wire types (`mayfly_api`), by hand, so the domain does not shape the
//! wire. The broker operations answer in these types; no HTTP here.

use mayfly_api::{LoginResponse, PrincipalInfo, TokenInfo, UserSummary};
use mayfly_core::Principal;
use mayfly_crypto::{ExposeSecret, SecretString};
use mayfly_store::{SessionRecord, UserRecord};

pub fn principal(principal: &Principal) -> PrincipalInfo {
    match principal {
        Principal::User { name, groups, .. } => PrincipalInfo {
            kind: "user".into(),
            name: name.clone(),
            groups: groups.clone(),
            role: None,
        },
        Principal::Workload { role, name } => PrincipalInfo {
            kind: "workload".into(),
            name: name.clone(),
            groups: Vec::new(),
            role: Some(role.clone()),
        },
        Principal::Agent { name } => PrincipalInfo {
            kind: "agent".into(),
            name: name.clone(),
            groups: Vec::new(),
            role: Some(name.clone()),
        },
    }
}

/// A user as the API lists it: no password hash, no TOTP state.
pub fn user_summary(user: UserRecord) -> UserSummary {
    UserSummary {
        username: user.username,
        groups: user.groups,
        disabled: user.disabled,
        created_at_ms: user.created_at.unix_ms(),
    }
}

pub fn token_info(session: &SessionRecord) -> TokenInfo {
    TokenInfo {
        id: session.id.clone(),
        principal: principal(&session.principal),
        created_at_ms: session.created_at.unix_ms(),
        expires_at_ms: session.expires_at.unix_ms(),
    }
}

pub fn login_response(token: &SecretString, session: &SessionRecord) -> LoginResponse {
    LoginResponse {
        token: token.expose_secret().to_owned(),
        session: token_info(session),
    }
}
