//! Admin pages: targets, roles (with a dry run of a role's creation SQL on its target), the
//! policy (edited with Cedar's validation messages shown at their line), users and their groups.
//! Each is an admin-only broker operation; the pages add nothing the API does not allow.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};
use mayfly_api::{CreateUserRequest, PolicyText, UpdateUserRequest};
use zeroize::Zeroizing;

use super::access::Done;
use super::once::{CredentialView, OneTimeViews};
use super::session::{Posted, Viewer};
use super::{PageResult, layout};
use crate::error::BrokerError;
use crate::state::Broker;

fn tabs(current: &str) -> Markup {
    html! {
        nav.tabs aria-label="Administration" {
            ul {
                @for (href, name) in [("/ui/admin/targets", "Targets"), ("/ui/admin/roles", "Roles"),
                    ("/ui/admin/policy", "Policy"), ("/ui/admin/users", "Users and groups")] {
                    li { a href=(href) aria-current=[(name == current).then_some("page")] { (name) } }
                }
            }
        }
    }
}

/// `GET /ui/admin/targets`.
pub async fn targets(State(broker): State<Broker>, viewer: Viewer) -> PageResult {
    viewer.caller.require_admin()?;
    let targets = broker.list_targets(&viewer.caller).await?;
    let body = html! {
        h1 { "Targets" }
        (tabs("Targets"))
        p.lead { "Add targets with " code { "mayfly target add" } ": the broker checks its admin access on the target first." }
        div.scroll {
            table #targets {
                caption.visually-hidden { "Targets" }
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Address" }
                    th scope="col" { "Admin secret set" } th scope="col" { "Rotation" }
                } }
                tbody {
                    @for target in &targets {
                        tr data-target=(target.name) {
                            td { (target.name) }
                            td { (target.kind) }
                            td { code { (target.url.as_deref().map(redact_url).unwrap_or_default()) } }
                            td { @if let Some(at) = target.admin_rotated_at_ms { (layout::when(at)) } }
                            td { @if let Some(every) = target.rotate_admin_every_seconds { "every " (layout::duration(every as i64)) } }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(Some(&viewer), "Targets", None, body).into_response())
}

/// A target's URL without any user information (a stored URL never holds the admin secret, but
/// a page shows no `user:pass@` whatever was typed).
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// `GET /ui/admin/roles`.
pub async fn roles(State(broker): State<Broker>, viewer: Viewer) -> PageResult {
    viewer.caller.require_admin()?;
    let roles = broker.list_roles(&viewer.caller).await?;
    let targets = broker.list_targets(&viewer.caller).await?;
    Ok(roles_page(&viewer, &roles, &targets, None, StatusCode::OK))
}

fn roles_page(
    viewer: &Viewer,
    roles: &[mayfly_api::RoleInfo],
    targets: &[mayfly_api::TargetInfo],
    dry_run: Option<(&DryRunForm, Result<String, String>)>,
    status: StatusCode,
) -> axum::response::Response {
    let (target, name, creation) = dry_run
        .as_ref()
        .map(|(form, _)| {
            (
                form.target.as_str(),
                form.name.as_str(),
                form.creation.as_str(),
            )
        })
        .unwrap_or(("", "", ""));
    let body = html! {
        h1 { "Roles" }
        (tabs("Roles"))
        div.scroll {
            table #roles {
                caption.visually-hidden { "Roles" }
                thead { tr { th scope="col" { "Target" } th scope="col" { "Role" } th scope="col" { "Longest grant" } } }
                tbody {
                    @for role in roles {
                        tr { td { (role.target) } td { (role.name) } td { (layout::duration(role.max_ttl_seconds as i64)) } }
                    }
                }
            }
        }
        h2 { "Dry run of a role's creation SQL" }
        p.hint { "Runs the statements on the target inside a transaction that is rolled back, with a throwaway login: nothing is kept. "
            "Use " code { "{{name}}" } ", " code { "{{password}}" } " and " code { "{{expiration}}" } "." }
        form #dry-run-form method="post" action="/ui/admin/roles/dry-run" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            label for="dry-target" { "Target" }
            select #dry-target name="target" required {
                @for t in targets {
                    option value=(t.name) selected[t.name == target] { (t.name) " (" (t.kind) ")" }
                }
            }
            label for="dry-name" { "Role name" }
            input #dry-name name="name" type="text" value=(name) required;
            label for="dry-creation" { "Creation SQL" }
            textarea #dry-creation.code name="creation" rows="6" required { (creation) }
            button #dry-run-submit type="submit" { "Dry run" }
        }
        @if let Some((_, result)) = &dry_run {
            @match result {
                Ok(text) => p #dry-run-result.ok role="status" data-ok="true" { (text) },
                Err(text) => p #dry-run-result.error role="alert" data-ok="false" { (text) },
            }
        }
    };
    (status, layout::page(Some(viewer), "Roles", None, body)).into_response()
}

#[derive(serde::Deserialize)]
pub struct DryRunForm {
    #[serde(default)]
    target: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    creation: String,
}

/// `POST /ui/admin/roles/dry-run`.
pub async fn dry_run(
    State(broker): State<Broker>,
    Posted(viewer, form): Posted<DryRunForm>,
) -> PageResult {
    viewer.caller.require_admin()?;
    let result = broker
        .dry_run_role(
            &viewer.origin,
            &viewer.caller,
            &form.target,
            &form.name,
            &form.creation,
        )
        .await;
    let (result, status) = match result {
        Ok(()) => (
            Ok("The statements ran on the target and were rolled back: the role works.".to_owned()),
            StatusCode::OK,
        ),
        Err(BrokerError::BadRequest(message)) => (Err(message), StatusCode::BAD_REQUEST),
        Err(other) => return Err(other.into()),
    };
    let roles = broker.list_roles(&viewer.caller).await?;
    let targets = broker.list_targets(&viewer.caller).await?;
    Ok(roles_page(
        &viewer,
        &roles,
        &targets,
        Some((&form, result)),
        status,
    ))
}

/// `GET /ui/admin/policy`.
pub async fn policy(
    State(broker): State<Broker>,
    viewer: Viewer,
    Query(done): Query<Done>,
) -> PageResult {
    viewer.caller.require_admin()?;
    let policy = broker.get_policy(&viewer.caller).await?;
    let flash = layout::flash_text(done.done.as_deref(), done.id.as_deref());
    Ok(policy_page(
        &viewer,
        &policy.text,
        Some(policy.version),
        &[],
        flash.as_deref(),
        StatusCode::OK,
    ))
}

fn policy_page(
    viewer: &Viewer,
    text: &str,
    version: Option<i64>,
    errors: &[crate::access::admin::PolicyProblem],
    flash: Option<&str>,
    status: StatusCode,
) -> axum::response::Response {
    let body = html! {
        h1 { "Policy" }
        (tabs("Policy"))
        @if let Some(version) = version { p.lead { "Version " (version) ". Cedar, validated strictly against the schema before it is saved." } }
        @if !errors.is_empty() {
            div #policy-problems role="alert" {
                p.error { "The policy was not saved: fix these and save again." }
                ol #policy-errors {
                    @for problem in errors {
                        li data-line=(problem.line) {
                            a href=(format!("#line-{}", problem.line)) { "Line " (problem.line) ", column " (problem.column) }
                            ": " (problem.message)
                        }
                    }
                }
            }
        }
        form #policy-form method="post" action="/ui/admin/policy" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            label for="policy" { "Policies" }
            textarea #policy.code name="policy" rows="24" spellcheck="false" { (text) }
            button #policy-submit type="submit" { "Validate and save" }
        }
        @if !errors.is_empty() {
            h2 { "The text, by line" }
            ol.numbered {
                @for (n, line) in text.lines().enumerate() {
                    li id=(format!("line-{}", n + 1)) class=[errors.iter().any(|p| p.line == n + 1).then_some("bad")] { code { (line) } }
                }
            }
        }
    };
    (status, layout::page(Some(viewer), "Policy", flash, body)).into_response()
}

#[derive(serde::Deserialize)]
pub struct PolicyForm {
    #[serde(default)]
    policy: String,
}

/// `POST /ui/admin/policy`: validated, then saved; a refusal shows each problem at its line and
/// keeps the text.
pub async fn put_policy(
    State(broker): State<Broker>,
    Posted(viewer, form): Posted<PolicyForm>,
) -> PageResult {
    viewer.caller.require_admin()?;
    let text = form.policy.replace("\r\n", "\n");
    match broker
        .put_policy(
            &viewer.origin,
            &viewer.caller,
            PolicyText { text: text.clone() },
        )
        .await
    {
        Ok(_) => Ok(Redirect::to("/ui/admin/policy?done=policy").into_response()),
        Err(BrokerError::InvalidPolicy { problems, .. }) => Ok(policy_page(
            &viewer,
            &text,
            None,
            &problems,
            None,
            StatusCode::BAD_REQUEST,
        )),
        Err(other) => Err(other.into()),
    }
}

/// `GET /ui/admin/users`.
pub async fn users(
    State(broker): State<Broker>,
    viewer: Viewer,
    Query(done): Query<Done>,
) -> PageResult {
    viewer.caller.require_admin()?;
    let users = broker.list_users(&viewer.caller).await?;
    let flash = layout::flash_text(done.done.as_deref(), done.id.as_deref());
    let body = html! {
        h1 { "Users and groups" }
        (tabs("Users and groups"))
        div.scroll {
            table #users {
                caption.visually-hidden { "Users" }
                thead { tr {
                    th scope="col" { "User" } th scope="col" { "Groups" } th scope="col" { "State" } th scope="col" { "Change" }
                } }
                tbody {
                    @for user in &users {
                        tr data-user=(user.username) {
                            td { (user.username) }
                            td { (user.groups.join(", ")) }
                            td { @if user.disabled { "disabled" } @else { "enabled" } }
                            td {
                                form.user-groups method="post" action="/ui/admin/users/update" {
                                    input type="hidden" name="csrf" value=(viewer.csrf);
                                    input type="hidden" name="username" value=(user.username);
                                    label.visually-hidden for=(format!("groups-{}", user.username)) { "Groups of " (user.username) }
                                    input id=(format!("groups-{}", user.username)) name="groups" type="text" value=(user.groups.join(", "));
                                    button type="submit" name="action" value="groups" { "Set groups" }
                                }
                                form.user-disable method="post" action="/ui/admin/users/update" {
                                    input type="hidden" name="csrf" value=(viewer.csrf);
                                    input type="hidden" name="username" value=(user.username);
                                    @if user.disabled {
                                        button type="submit" name="action" value="enable" { "Enable" }
                                    } @else {
                                        button.secondary type="submit" name="action" value="disable" { "Disable" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Add a user" }
        form #user-form method="post" action="/ui/admin/users" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            label for="new-username" { "User name" }
            input #new-username name="username" type="text" required;
            label for="new-groups" { "Groups (comma-separated)" }
            input #new-groups name="groups" type="text";
            p.hint { "The broker generates the password and the TOTP secret and shows them once, for you to hand over." }
            button #user-submit type="submit" { "Add user" }
        }
    };
    Ok(layout::page(Some(&viewer), "Users", flash.as_deref(), body).into_response())
}

fn groups_of(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(serde::Deserialize)]
pub struct NewUserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    groups: String,
}

/// `POST /ui/admin/users`: the new user's generated password and TOTP secret go to the one-time
/// view, as an activated credential does.
pub async fn create_user(
    State(broker): State<Broker>,
    Extension(views): Extension<Arc<OneTimeViews>>,
    Posted(viewer, form): Posted<NewUserForm>,
) -> PageResult {
    viewer.caller.require_admin()?;
    let created = crate::users::create(
        &broker,
        &viewer.origin,
        &viewer.principal().to_string(),
        CreateUserRequest {
            username: form.username,
            password: None,
            groups: groups_of(&form.groups),
        },
    )
    .await?;
    let view = CredentialView {
        grant_id: String::new(),
        kind: "user".into(),
        host: String::new(),
        port: 0,
        database: String::new(),
        username: created.username,
        password: Zeroizing::new(created.password.unwrap_or_default()),
        certificate: None,
        private_key: None,
        totp_url: Some(Zeroizing::new(created.totp.otpauth_url)),
        expires_at_ms: 0,
    };
    let once = views.put(&viewer.caller.session.id, broker.now(), view)?;
    Ok(Redirect::to(&format!("/ui/credential/{once}")).into_response())
}

#[derive(serde::Deserialize)]
pub struct UpdateUserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    action: String,
}

/// `POST /ui/admin/users/update`: set groups, disable or enable.
pub async fn update_user(
    State(broker): State<Broker>,
    Posted(viewer, form): Posted<UpdateUserForm>,
) -> PageResult {
    viewer.caller.require_admin()?;
    let request = match form.action.as_str() {
        "groups" => UpdateUserRequest {
            groups: Some(groups_of(&form.groups)),
            disabled: None,
        },
        "disable" => UpdateUserRequest {
            groups: None,
            disabled: Some(true),
        },
        "enable" => UpdateUserRequest {
            groups: None,
            disabled: Some(false),
        },
        _ => {
            return Err(BrokerError::BadRequest(
                "field `action`: `groups`, `disable` or `enable`".into(),
            )
            .into());
        }
    };
    crate::users::update(
        &broker,
        &viewer.origin,
        viewer.principal(),
        &form.username,
        request,
    )
    .await?;
    Ok(Redirect::to("/ui/admin/users?done=user").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_shown_carry_no_user_information() {
        assert_eq!(
            redact_url("postgres://admin:pw@db:5432/app"),
            "postgres://db:5432/app"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn groups_are_split_on_commas() {
        assert_eq!(groups_of(" dba, ops ,,"), vec!["dba", "ops"]);
    }
}
