//! Call approvals (issue 22): one tool call an agent wants to make, waiting for a person — the
//! page the agent's "approve at this URL" answer opens. It shows the tool, the arguments as the
//! front end summarized them (canonical JSON, never a secret), the subject, the act chain, the
//! deciding policies and the expiry; approve or refuse behind step-up (a TOTP code in the same
//! form moves the session's second factor first). The link carries no power: the broker decides
//! who may see and answer (`Broker::answer_call`: a person of the `call_approvers` group, never
//! the subject or anyone in the chain).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::{Markup, html};
use mayfly_store::{CallApprovalRecord, CallApprovalState};

use super::session::{Posted, Viewer};
use super::{PageResult, layout};
use crate::auth::step_up::step_up_totp;
use crate::error::BrokerError;
use crate::state::Broker;

/// The pending calls `viewer` may answer, as the approvals page lists them (nothing when none).
pub async fn waiting_table(broker: &Broker, viewer: &Viewer) -> Result<Markup, BrokerError> {
    let calls = broker.calls_to_answer(viewer.principal()).await?;
    Ok(html! {
        @if !calls.is_empty() {
            h2 #calls-heading { "Agent calls waiting" }
            div.scroll {
                table #calls {
                    caption.visually-hidden { "Tool calls waiting for your approval" }
                    thead { tr {
                        th scope="col" { "Call" } th scope="col" { "Tool" } th scope="col" { "For" }
                        th scope="col" { "Through" } th scope="col" { "Expires" }
                    } }
                    tbody {
                        @for call in &calls {
                            tr data-call-id=(call.id) {
                                td { a href=(format!("/ui/calls/{}", call.id)) { "Open " (short(&call.id)) } }
                                td { code { (call.tool) } }
                                td { (call.subject) }
                                td { (chain_text(&call.actors)) }
                                td { (layout::when(call.expires_at.unix_ms())) }
                            }
                        }
                    }
                }
            }
        }
    })
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

fn chain_text(actors: &[String]) -> String {
    if actors.is_empty() {
        return "nobody".into();
    }
    actors.join(" ← ")
}

/// `GET /ui/calls/{id}`.
pub async fn detail(
    State(broker): State<Broker>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let call = broker.call_approval_for(viewer.principal(), &id).await?;
    Ok(render(&broker, &viewer, &call, None, StatusCode::OK))
}

fn render(
    broker: &Broker,
    viewer: &Viewer,
    call: &CallApprovalRecord,
    error: Option<&str>,
    status: StatusCode,
) -> axum::response::Response {
    let me = viewer.principal().to_string();
    let involved = call.subject == me || call.actors.contains(&me);
    let open = call.state == CallApprovalState::Pending && call.expires_at > broker.now();
    let state = if call.state == CallApprovalState::Pending && !open {
        "expired"
    } else {
        call.state.as_str()
    };
    let body = html! {
        h1 { "Agent call " (short(&call.id)) }
        @if let Some(error) = error {
            p #error role="alert" { (error) }
        }
        dl.request {
            dt { "Tool" } dd #call-tool { code { (call.tool) } }
            dt { "For" } dd #call-subject { (call.subject) }
            dt { "Through" } dd #call-chain { (chain_text(&call.actors)) }
            dt { "State" } dd #call-state { (state) }
            dt { "Asked by policy" } dd #call-policies { code { (call.policies.join(", ")) } }
            dt { "Arguments (SHA-256)" } dd { code #call-digest { (call.args_sha256) } }
            dt { "Asked" } dd { (layout::when(call.created_at.unix_ms())) }
            dt { "Expires unanswered" } dd { (layout::when(call.expires_at.unix_ms())) }
            @if let Some(by) = &call.answered_by { dt { "Answered by" } dd #call-answered-by { (by) } }
        }
        h2 { "The call" }
        pre #call-summary { code { (call.summary) } }
        p.hint { "An approval lets exactly this call run once, within 5 minutes; other arguments need another approval." }
        @if open && !involved {
            form #call-form method="post" action=(format!("/ui/calls/{}", call.id)) {
                input type="hidden" name="csrf" value=(viewer.csrf);
                label for="totp" { "Code from your authenticator app (step-up)" }
                input #totp name="totp" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6,8}";
                p.hint { "Answering needs a second factor proved recently; give a code unless you just did." }
                div.buttons {
                    button #approve-call type="submit" name="decision" value="approve" { "Approve this call" }
                    button #refuse-call type="submit" name="decision" value="refuse" { "Refuse" }
                }
            }
        } @else if involved {
            p { "This call is made for you or through you: someone else answers it." }
        }
        p { a href="/ui/approvals" { "Back to approvals" } }
    };
    (status, layout::page(Some(viewer), "Agent call", None, body)).into_response()
}

#[derive(serde::Deserialize)]
pub struct AnswerForm {
    #[serde(default)]
    totp: String,
    #[serde(default)]
    decision: String,
}

/// `POST /ui/calls/{id}`: approve or refuse. Without a fresh second factor the page comes back
/// and asks for the code.
pub async fn answer(
    State(broker): State<Broker>,
    Path(id): Path<String>,
    Posted(viewer, form): Posted<AnswerForm>,
) -> PageResult {
    let approve = match form.decision.as_str() {
        "approve" => true,
        "refuse" => false,
        _ => {
            return Err(
                BrokerError::BadRequest("field `decision`: `approve` or `refuse`".into()).into(),
            );
        }
    };
    let mut factor_at = viewer.caller.session.factor_at;
    if !form.totp.trim().is_empty() {
        let stepped = step_up_totp(&broker, &viewer.origin, &viewer.caller, &form.totp).await?;
        factor_at = Some(stepped.factor_at);
    }
    match broker
        .answer_call(&viewer.origin, viewer.principal(), factor_at, &id, approve)
        .await
    {
        Ok(()) => {
            let done = if approve {
                "call-approved"
            } else {
                "call-refused"
            };
            Ok(Redirect::to(&format!("/ui/approvals?done={done}&id={id}")).into_response())
        }
        Err(error @ BrokerError::StepUpRequired { .. }) => {
            let call = broker.call_approval_for(viewer.principal(), &id).await?;
            let message =
                format!("{error}. Enter the code from your authenticator app and send again.");
            let mut page = render(
                &broker,
                &viewer,
                &call,
                Some(&message),
                StatusCode::UNAUTHORIZED,
            );
            page.extensions_mut()
                .insert(crate::api::error::ErrorCode("step_up_required"));
            Ok(page)
        }
        Err(error) => Err(error.into()),
    }
}
