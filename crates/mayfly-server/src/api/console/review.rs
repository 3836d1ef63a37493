//! The break-glass review queue (admins): every grant issued through break-glass waits here until
//! another admin has looked at it; whoever broke the glass cannot close their own.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use maud::html;

use super::access::Done;
use super::session::{Nothing, Posted, Viewer};
use super::{PageResult, layout};
use crate::state::Broker;

/// `GET /ui/review`.
pub async fn page(
    State(broker): State<Broker>,
    viewer: Viewer,
    Query(done): Query<Done>,
) -> PageResult {
    let queue = broker.review_queue(&viewer.caller).await?;
    let me = viewer.principal().to_string();
    let flash = layout::flash_text(done.done.as_deref(), done.id.as_deref());
    let body = html! {
        h1 { "Break-glass review" }
        p.lead { "Emergency access is issued at once and looked at afterwards, by someone else." }
        @if queue.is_empty() {
            p #review-empty { "Nothing to review." }
        }
        {
            div.scroll {
                table #review {
                    caption.visually-hidden { "Break-glass grants waiting for review" }
                    thead { tr {
                        th scope="col" { "Grant" } th scope="col" { "Who" } th scope="col" { "Role" }
                        th scope="col" { "State" } th scope="col" { "Issued" } th scope="col" { "Reason" }
                        th scope="col" { "Review" }
                    } }
                    tbody {
                        @for grant in &queue {
                            tr id=(format!("grant-{}", grant.id)) data-grant-id=(grant.id) {
                                td { code { (grant.id) } }
                                td { (grant.principal) }
                                td { (grant.target) " / " (grant.role) }
                                td { (grant.state) }
                                td { (layout::when(grant.created_at_ms)) }
                                td { (grant.revoke_reason.as_deref().unwrap_or("")) }
                                td {
                                    @if grant.principal == me {
                                        "another admin reviews this"
                                    } @else {
                                        form.review method="post" action=(format!("/ui/review/{}", grant.id)) {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            button.review-submit type="submit" { "Mark reviewed" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(Some(&viewer), "Review", flash.as_deref(), body).into_response())
}

/// `POST /ui/review/{grant}`.
pub async fn review(
    State(broker): State<Broker>,
    Path(id): Path<String>,
    Posted(viewer, Nothing {}): Posted<Nothing>,
) -> PageResult {
    broker
        .review_grant(&viewer.origin, &viewer.caller, id.clone())
        .await?;
    let id = if layout::looks_like_id(&id) {
        id
    } else {
        String::new()
    };
    Ok(Redirect::to(&format!("/ui/review?done=reviewed&id={id}")).into_response())
}
