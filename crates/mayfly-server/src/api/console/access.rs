//! "My access": the roles I may request, the request form, my requests and my grants with their
//! time left (counted down live by `app.js`), activation with the credential shown once, revoke
//! and renew. Each action is one broker operation, the same the API's handlers call.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};
use mayfly_api::{GrantInfo, RequestInfo};
use zeroize::Zeroizing;

use super::once::{CredentialView, OneTimeViews};
use super::session::{Nothing, Posted, Viewer};
use super::{PageResult, layout};
use crate::access::NewRequest;
use crate::auth::step_up::step_up_totp;
use crate::error::BrokerError;
use crate::state::Broker;

#[derive(Debug, Default, serde::Deserialize)]
pub struct Done {
    #[serde(default)]
    pub done: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
}

/// `GET /ui/access`.
pub async fn page(
    State(broker): State<Broker>,
    viewer: Viewer,
    Query(done): Query<Done>,
) -> PageResult {
    let roles = requestable(&broker, &viewer).await?;
    let (requests, grants) = broker.my_access(&viewer.caller).await?;
    let flash = layout::flash_text(done.done.as_deref(), done.id.as_deref());
    let body = html! {
        h1 { "My access" }
        p.lead { "Nothing is yours to keep: ask for a role when you need it, and it goes away at its time." }
        section aria-labelledby="request-title" {
            h2 #request-title { "Request access" }
            @if roles.is_empty() {
                p { "The policy lets you request no role at the moment." }
            } @else {
                form #request-form method="post" action="/ui/requests" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    label for="role" { "Role" }
                    select #role name="role" required {
                        @for role in &roles {
                            option value=(format!("{}/{}", role.target, role.role)) {
                                (role.target) " / " (role.role)
                                " (up to " (layout::duration(role.max_ttl_seconds as i64))
                                @if role.needs_approval { ", needs approval" }
                                ")"
                            }
                        }
                    }
                    label for="ttl" { "For how long (seconds)" }
                    input #ttl name="ttl_seconds" type="number" min="1" value="900" required;
                    label for="reason" { "Reason" }
                    input #reason name="reason" type="text" maxlength="500" required;
                    label for="ticket" { "Ticket (optional)" }
                    input #ticket name="ticket" type="text" maxlength="200";
                    button #request-submit type="submit" { "Request" }
                }
            }
        }
        section aria-labelledby="requests-title" {
            h2 #requests-title { "My requests" }
            (requests_table(&viewer, &requests))
        }
        section aria-labelledby="grants-title" {
            h2 #grants-title { "My grants" }
            (grants_table(&viewer, &grants))
        }
    };
    Ok(layout::page(Some(&viewer), "My access", flash.as_deref(), body).into_response())
}

/// A role offered in the request form.
struct RoleChoice {
    target: String,
    role: String,
    max_ttl_seconds: u64,
    needs_approval: bool,
}

/// The roles the policy lets the viewer request now (break-glass-only ones are not offered here).
async fn requestable(broker: &Broker, viewer: &Viewer) -> Result<Vec<RoleChoice>, BrokerError> {
    Ok(broker
        .requestable_roles(viewer.principal())
        .await?
        .into_iter()
        .filter(|role| !role.break_glass_only)
        .map(|role| RoleChoice {
            target: role.target,
            role: role.role,
            max_ttl_seconds: role.max_ttl.as_secs(),
            needs_approval: role.approvals > 0,
        })
        .collect())
}

fn requests_table(viewer: &Viewer, requests: &[RequestInfo]) -> Markup {
    html! {
        @if requests.is_empty() {
            p { "No requests yet." }
        } @else {
            div.scroll {
                table #requests {
                    caption.visually-hidden { "My requests" }
                    thead { tr {
                        th scope="col" { "Role" } th scope="col" { "State" } th scope="col" { "Reason" }
                        th scope="col" { "Asked" } th scope="col" { "Action" }
                    } }
                    tbody {
                        @for request in requests {
                            tr data-request-id=(request.id) data-state=(request.state) {
                                td { (request.target) " / " (request.role) }
                                td { span.state { (request.state) }
                                    @if request.state == "pending" {
                                        " (" (request.approvals_needed) " approval(s) needed)"
                                    }
                                }
                                td { (request.reason) }
                                td { (layout::when(request.created_at_ms)) }
                                td {
                                    @if request.state == "allowed" {
                                        form.activate method="post" action=(format!("/ui/requests/{}/activate", request.id)) {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            label.visually-hidden for=(format!("totp-{}", request.id)) { "Code (if asked)" }
                                            input.totp id=(format!("totp-{}", request.id)) name="totp" type="text"
                                                inputmode="numeric" autocomplete="one-time-code" placeholder="code if asked";
                                            button.activate-submit type="submit" { "Activate" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn grants_table(viewer: &Viewer, grants: &[GrantInfo]) -> Markup {
    html! {
        @if grants.is_empty() {
            p { "No live grants: you hold no access right now." }
        } @else {
            div.scroll {
                table #grants {
                    caption.visually-hidden { "My grants" }
                    thead { tr {
                        th scope="col" { "Role" } th scope="col" { "Login" } th scope="col" { "State" }
                        th scope="col" { "Time left" } th scope="col" { "Actions" }
                    } }
                    tbody {
                        @for grant in grants {
                            tr id=(format!("grant-{}", grant.id)) data-grant-id=(grant.id) data-state=(grant.state) {
                                td { (grant.target) " / " (grant.role) }
                                td { code { (grant.login) } }
                                td { (grant.state) }
                                td { span.time-left data-expires-at=(grant.expires_at_ms) { (layout::duration(grant.seconds_left)) } }
                                td {
                                    @if grant.state == "active" {
                                        form.renew method="post" action=(format!("/ui/grants/{}/renew", grant.id)) {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            label.visually-hidden for=(format!("renew-{}", grant.id)) { "Seconds to renew for" }
                                            input id=(format!("renew-{}", grant.id)) name="ttl_seconds" type="number" min="1" value="900";
                                            button.renew-submit type="submit" { "Renew" }
                                        }
                                        form.revoke method="post" action=(format!("/ui/grants/{}/revoke", grant.id)) {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            button.revoke-submit type="submit" { "Revoke now" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub struct RequestForm {
    #[serde(default)]
    role: String,
    #[serde(default)]
    ttl_seconds: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    ticket: String,
}

/// `POST /ui/requests`.
pub async fn create_request(
    State(broker): State<Broker>,
    Posted(viewer, form): Posted<RequestForm>,
) -> PageResult {
    let Some((target, role)) = form.role.split_once('/') else {
        return Err(
            BrokerError::BadRequest("field `role`: choose a role from the list".into()).into(),
        );
    };
    let ttl = form
        .ttl_seconds
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|ttl| *ttl > 0)
        .ok_or_else(|| {
            BrokerError::BadRequest(
                "field `ttl_seconds`: a whole number of seconds, at least 1".into(),
            )
        })?;
    let new = NewRequest {
        target: target.to_owned(),
        role: role.to_owned(),
        ttl: Duration::from_secs(ttl),
        reason: form.reason,
        ticket: form.ticket,
        break_glass: false,
    };
    let info = broker
        .create_request(
            &viewer.origin,
            viewer.principal(),
            viewer.caller.session.factor_at,
            new,
        )
        .await?;
    if info.state == "denied" {
        return Err(BrokerError::Forbidden(format!(
            "request {} denied: {}",
            info.id, info.decision
        ))
        .into());
    }
    let done = if info.state == "pending" {
        "pending"
    } else {
        "allowed"
    };
    Ok(Redirect::to(&format!("/ui/access?done={done}&id={}", info.id)).into_response())
}

#[derive(serde::Deserialize)]
pub struct ActivateForm {
    #[serde(default)]
    totp: String,
}

/// `POST /ui/requests/{id}/activate`: activates, keeps the credential for one view, and sends the
/// browser to it. A code in `totp` steps the session up first (for `@step_up` roles).
pub async fn activate(
    State(broker): State<Broker>,
    Extension(views): Extension<Arc<OneTimeViews>>,
    Path(id): Path<String>,
    Posted(viewer, form): Posted<ActivateForm>,
) -> PageResult {
    let mut factor_at = viewer.caller.session.factor_at;
    if !form.totp.trim().is_empty() {
        let stepped = step_up_totp(&broker, &viewer.origin, &viewer.caller, &form.totp).await?;
        factor_at = Some(stepped.factor_at);
    }
    let credential = broker
        .activate(&viewer.origin, viewer.principal(), factor_at, &id, None)
        .await?;
    // Moved, not copied: the only copies of the secrets are the view's, zeroized when dropped.
    let view = CredentialView {
        expires_at_ms: credential.grant.expires_at_ms,
        grant_id: credential.grant.id,
        kind: credential.kind,
        host: credential.host,
        port: credential.port,
        database: credential.database,
        username: credential.username,
        password: Zeroizing::new(credential.password),
        certificate: credential.certificate,
        private_key: credential.private_key.map(Zeroizing::new),
        totp_url: None,
    };
    let once = views.put(&viewer.caller.session.id, broker.now(), view)?;
    Ok(Redirect::to(&format!("/ui/credential/{once}")).into_response())
}

/// `GET /ui/credential/{once}`: the credential, once.
pub async fn credential(
    State(broker): State<Broker>,
    Extension(views): Extension<Arc<OneTimeViews>>,
    Path(once): Path<String>,
    viewer: Viewer,
) -> PageResult {
    let Some(view) = views.take(&once, &viewer.caller.session.id, broker.now()) else {
        let body = html! {
            h1 { "Credential" }
            p #credential-gone role="status" {
                "This credential was shown once and is gone. If you lost it, revoke the grant and request access again."
            }
            p { a href="/ui/access" { "Back to my access" } }
        };
        return Ok((
            StatusCode::GONE,
            layout::page(Some(&viewer), "Credential", None, body),
        )
            .into_response());
    };
    let dsn = dsn(&view);
    let body = html! {
        h1 { "Your credential" }
        section #credential aria-labelledby="credential-title" {
            h2 #credential-title { "Shown once" }
            @if view.kind == "user" {
                p.warning { "Hand these to the new user now: this page will not show them again." }
            } @else {
                p.warning { "Copy it now: this page will not show it again. It stops working "
                    (layout::when(view.expires_at_ms)) " or when you revoke it." }
            }
            dl {
                @if view.kind != "user" {
                    dt { "Grant" } dd { code { (view.grant_id) } }
                    dt { "Host" } dd { code { (view.host) ":" (view.port) } }
                }
                @if !view.database.is_empty() { dt { "Database" } dd { code { (view.database) } } }
                dt { "User name" } dd { code #cred-username { (view.username) } }
                @if !view.password.is_empty() {
                    dt { "Password" }
                    dd {
                        code #cred-password { (view.password.as_str()) }
                        " "
                        button #copy-password type="button" data-copy="cred-password" { "Copy password" }
                    }
                }
                @if let Some(dsn) = &dsn {
                    dt { "Connection URL" }
                    dd {
                        code #cred-dsn { (dsn.as_str()) }
                        " "
                        button #copy-dsn type="button" data-copy="cred-dsn" { "Copy URL" }
                    }
                }
                @if let Some(certificate) = &view.certificate {
                    dt { "Certificate" } dd { pre { code #cred-certificate { (certificate) } } }
                }
                @if let Some(url) = &view.totp_url {
                    dt { "TOTP enrolment (add it to an authenticator app)" }
                    dd { code #cred-totp { (url.as_str()) } }
                }
                @if let Some(key) = &view.private_key {
                    dt { "Private key" } dd { pre { code #cred-private-key { (key.as_str()) } } }
                }
            }
        }
        p { a href="/ui/access" { "Back to my access" } }
    };
    Ok(layout::page(Some(&viewer), "Credential", None, body).into_response())
}

/// A connection URL for the database kinds.
fn dsn(view: &CredentialView) -> Option<Zeroizing<String>> {
    let scheme = match view.kind.as_str() {
        "postgres" => "postgresql",
        "mysql" => "mysql",
        "redis" => "redis",
        _ => return None,
    };
    let mut url = Zeroizing::new(format!(
        "{scheme}://{}:{}@{}:{}",
        userinfo(&view.username).as_str(),
        userinfo(&view.password).as_str(),
        view.host,
        view.port
    ));
    if !view.database.is_empty() && scheme != "redis" {
        url.push('/');
        url.push_str(userinfo(&view.database).as_str());
    }
    Some(url)
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn userinfo(text: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `POST /ui/grants/{id}/revoke`.
pub async fn revoke(
    State(broker): State<Broker>,
    Path(id): Path<String>,
    Posted(viewer, Nothing {}): Posted<Nothing>,
) -> PageResult {
    let grant = broker
        .request_revoke(
            &viewer.origin,
            viewer.principal(),
            &id,
            "revoked early in the console",
        )
        .await?;
    Ok(Redirect::to(&format!("/ui/access?done=revoked&id={}", grant.id)).into_response())
}

#[derive(serde::Deserialize)]
pub struct RenewForm {
    #[serde(default)]
    ttl_seconds: String,
}

/// `POST /ui/grants/{id}/renew`.
pub async fn renew(
    State(broker): State<Broker>,
    Path(id): Path<String>,
    Posted(viewer, form): Posted<RenewForm>,
) -> PageResult {
    let ttl = form
        .ttl_seconds
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|ttl| *ttl > 0)
        .ok_or_else(|| {
            BrokerError::BadRequest(
                "field `ttl_seconds`: a whole number of seconds, at least 1".into(),
            )
        })?;
    let grant = broker
        .renew(
            &viewer.origin,
            viewer.principal(),
            &id,
            Duration::from_secs(ttl),
        )
        .await?;
    Ok(Redirect::to(&format!("/ui/access?done=renewed&id={}", grant.id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_urls_escape_what_they_carry() {
        let view = CredentialView {
            grant_id: "g".into(),
            kind: "postgres".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            database: "app db".into(),
            username: "mf_x".into(),
            password: Zeroizing::new("a@b:c/d".into()),
            certificate: None,
            private_key: None,
            totp_url: None,
            expires_at_ms: 0,
        };
        let url = dsn(&view).expect("a url");
        assert_eq!(
            url.as_str(),
            "postgresql://mf_x:a%40b%3Ac%2Fd@127.0.0.1:5432/app%20db"
        );
    }
}
