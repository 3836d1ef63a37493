//! Approvals: the pending requests I may approve, and one request's page (the link a
//! notification carries) with who asks for what, why, and which policy wants an approval; approve
//! or deny with a comment, behind step-up (a TOTP code in the same form moves the session's
//! second factor first). The link carries no power: the page asks the broker, which decides who
//! may see and approve the request. Agents' tool calls waiting for a person are listed first,
//! each linking to its page (`calls.rs`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::html;
use mayfly_api::RequestInfo;

use super::access::Done;
use super::session::{Posted, Viewer};
use super::{PageResult, layout};
use crate::access::admin::ListQuery;
use crate::auth::step_up::step_up_totp;
use crate::error::BrokerError;
use crate::state::Broker;

/// `GET /ui/approvals`.
pub async fn list(
    State(broker): State<Broker>,
    viewer: Viewer,
    Query(done): Query<Done>,
) -> PageResult {
    let me = viewer.principal().to_string();
    let pending: Vec<RequestInfo> = broker
        .list_requests(
            &viewer.caller,
            ListQuery {
                pending: true,
                failing: false,
                all: false,
            },
        )
        .await?
        .into_iter()
        .filter(|r| r.state == "pending" && r.principal != me)
        .collect();
    let flash = layout::flash_text(done.done.as_deref(), done.id.as_deref());
    let calls = super::calls::waiting_table(&broker, &viewer).await?;
    let body = html! {
        h1 { "Approvals" }
        (calls)
        @if !calls_empty(&calls) { h2 { "Requests" } }
        @if pending.is_empty() {
            p #no-approvals { "Nothing waits for you." }
        } @else {
            div.scroll {
                table #approvals {
                    caption.visually-hidden { "Requests waiting for your approval" }
                    thead { tr {
                        th scope="col" { "Request" } th scope="col" { "Who" } th scope="col" { "Role" }
                        th scope="col" { "For" } th scope="col" { "Reason" } th scope="col" { "Asked" }
                    } }
                    tbody {
                        @for request in &pending {
                            tr data-request-id=(request.id) {
                                td { a href=(format!("/ui/approvals/{}", request.id)) { "Open " (short(&request.id)) } }
                                td { (request.principal) }
                                td { (request.target) " / " (request.role) }
                                td { (layout::duration(request.ttl_seconds as i64)) }
                                td { (request.reason) }
                                td { (layout::when(request.created_at_ms)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(Some(&viewer), "Approvals", flash.as_deref(), body).into_response())
}

/// Whether the calls' table rendered to nothing (no call waits for the viewer).
fn calls_empty(calls: &maud::Markup) -> bool {
    calls.0.is_empty()
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

/// `GET /ui/approvals/{id}`.
pub async fn detail(
    State(broker): State<Broker>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let request = broker.get_request(&viewer.caller, id).await?;
    Ok(render(&viewer, &request, None, "", StatusCode::OK))
}

fn render(
    viewer: &Viewer,
    request: &RequestInfo,
    error: Option<&str>,
    comment: &str,
    status: StatusCode,
) -> axum::response::Response {
    let mine = request.principal == viewer.principal().to_string();
    let body = html! {
        h1 { "Request " (short(&request.id)) }
        @if let Some(error) = error {
            p #error role="alert" { (error) }
        }
        dl.request {
            dt { "Requester" } dd #requester { (request.principal) }
            dt { "Role" } dd #role { (request.target) " / " (request.role) }
            dt { "For" } dd #ttl { (layout::duration(request.ttl_seconds as i64)) }
            dt { "Reason" } dd #reason { (request.reason) }
            dt { "Ticket" } dd #ticket { @if request.ticket.is_empty() { "none" } @else { (request.ticket) } }
            dt { "State" } dd #state { (request.state)
                @if request.state == "pending" { " (" (request.approvals_needed) " approval(s) needed)" } }
            dt { "Decided by" } dd #policy { code { (request.decision) } }
            @if request.break_glass { dt { "Break-glass" } dd { "yes" } }
            dt { "Asked" } dd { (layout::when(request.created_at_ms)) }
            dt { "Expires unanswered" } dd { (layout::when(request.expires_at_ms)) }
        }
        @if request.state == "pending" && !mine {
            form #decide-form method="post" action=(format!("/ui/approvals/{}", request.id)) {
                input type="hidden" name="csrf" value=(viewer.csrf);
                label for="comment" { "Comment" }
                textarea #comment name="comment" rows="3" maxlength="500" { (comment) }
                label for="totp" { "Code from your authenticator app (step-up)" }
                input #totp name="totp" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6,8}";
                p.hint { "Approving and denying need a second factor proved recently; give a code unless you just did." }
                div.buttons {
                    button #approve type="submit" name="decision" value="approve" { "Approve" }
                    button #deny type="submit" name="decision" value="deny" { "Deny" }
                }
            }
        } @else if mine {
            p { "This is your own request: someone else approves it." }
        }
        p { a href="/ui/approvals" { "Back to approvals" } }
    };
    (status, layout::page(Some(viewer), "Request", None, body)).into_response()
}

#[derive(serde::Deserialize)]
pub struct DecideForm {
    #[serde(default)]
    comment: String,
    #[serde(default)]
    totp: String,
    #[serde(default)]
    decision: String,
}

/// `POST /ui/approvals/{id}`: approve or deny. Without a fresh second factor the page comes back
/// with the comment kept and asks for the code.
pub async fn decide(
    State(broker): State<Broker>,
    Path(id): Path<String>,
    Posted(viewer, form): Posted<DecideForm>,
) -> PageResult {
    let approve = match form.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return Err(
                BrokerError::BadRequest("field `decision`: `approve` or `deny`".into()).into(),
            );
        }
    };
    let mut factor_at = viewer.caller.session.factor_at;
    if !form.totp.trim().is_empty() {
        let stepped = step_up_totp(&broker, &viewer.origin, &viewer.caller, &form.totp).await?;
        factor_at = Some(stepped.factor_at);
    }
    let decided = if approve {
        broker
            .approve(
                &viewer.origin,
                viewer.principal(),
                factor_at,
                &id,
                &form.comment,
            )
            .await
    } else {
        broker
            .deny(
                &viewer.origin,
                viewer.principal(),
                factor_at,
                &id,
                &form.comment,
            )
            .await
    };
    match decided {
        Ok(request) => {
            let done = if approve { "approved" } else { "denied" };
            Ok(
                Redirect::to(&format!("/ui/approvals?done={done}&id={}", request.id))
                    .into_response(),
            )
        }
        Err(error @ BrokerError::StepUpRequired { .. }) => {
            let request = broker.get_request(&viewer.caller, id).await?;
            let message =
                format!("{error}. Enter the code from your authenticator app and send again.");
            let mut page = render(
                &viewer,
                &request,
                Some(&message),
                &form.comment,
                StatusCode::UNAUTHORIZED,
            );
            page.extensions_mut()
                .insert(crate::api::error::ErrorCode("step_up_required"));
            Ok(page)
        }
        Err(error) => Err(error.into()),
    }
}
