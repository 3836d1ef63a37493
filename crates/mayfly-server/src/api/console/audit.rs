//! The audit page (admins): events filtered by principal, target, kind and time, newest first, in
//! pages; the chain's verification status and the last signed checkpoint; the export of what the
//! filter finds as JSON lines (the stored lines with their hashes, which `mayfly audit verify`
//! and any other verifier can check).

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use maud::html;
use mayfly_core::Timestamp;

use super::session::Viewer;
use super::{PageResult, layout};
use crate::audit::search::AuditFilter;
use crate::error::BrokerError;
use crate::state::Broker;

/// Events per page.
const PAGE: u32 = 100;

/// The filter as the form sends it (every field optional; times as `YYYY-MM-DDTHH:MM`, UTC).
#[derive(Debug, Default, serde::Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    principal: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    before: Option<i64>,
}

impl AuditQuery {
    fn filter(&self, limit: u32) -> Result<AuditFilter, BrokerError> {
        let text = |value: &str| Some(value.trim().to_owned()).filter(|v| !v.is_empty());
        Ok(AuditFilter {
            principal: text(&self.principal),
            target: text(&self.target),
            kind: text(&self.kind),
            from: parse_time("from", &self.from)?,
            to: parse_time("to", &self.to)?,
            before_seq: self.before,
            limit,
        })
    }

    /// The filter as a query string (for the next page and the export).
    fn query_string(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("principal", &self.principal),
            ("target", &self.target),
            ("kind", &self.kind),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !value.trim().is_empty() {
                query.append_pair(key, value.trim());
            }
        }
        query.finish()
    }
}

/// `YYYY-MM-DDTHH:MM[:SS]` (what `<input type=datetime-local>` sends), read as UTC.
fn parse_time(field: &str, text: &str) -> Result<Option<Timestamp>, BrokerError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad =
        || BrokerError::BadRequest(format!("field `{field}`: a time as YYYY-MM-DDTHH:MM (UTC)"));
    let with_seconds = if text.len() == 16 {
        format!("{text}:00")
    } else {
        text.to_owned()
    };
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let at = time::PrimitiveDateTime::parse(&with_seconds, &format).map_err(|_| bad())?;
    let ms = at.assume_utc().unix_timestamp_nanos() / 1_000_000;
    let ms = i64::try_from(ms).map_err(|_| bad())?;
    if ms < 0 {
        return Err(bad());
    }
    Ok(Some(Timestamp::from_unix_ms(ms)))
}

/// `GET /ui/audit`.
pub async fn page(
    State(broker): State<Broker>,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> PageResult {
    viewer.caller.require_admin()?;
    let filter = query.filter(PAGE)?;
    let overview = broker.audit_overview(&viewer.caller).await?;
    let found = broker.audit_search(&viewer.caller, filter).await?;
    let filter_query = query.query_string();
    let body = html! {
        h1 { "Audit log" }
        section #chain aria-labelledby="chain-title" {
            h2 #chain-title { "The chain" }
            p #chain-status data-valid=(overview.chain.valid) role="status" {
                @if overview.chain.valid {
                    span.ok { "Valid" } ": " (overview.chain.n_events) " events chained from the first to #"
                    (overview.chain.verified_to_seq) ", " (overview.chain.n_signatures_checked)
                    " checkpoint signatures checked; " (overview.chain.n_unsigned_tail)
                    " newer events not yet under a checkpoint."
                } @else {
                    span.bad { "Broken" } ": " (overview.chain.error.as_deref().unwrap_or("the chain does not verify"))
                }
            }
            p #checkpoint {
                @match &overview.last_checkpoint {
                    Some(checkpoint) => {
                        "Last signed checkpoint: event #" (checkpoint.seq) ", covering up to #"
                        (checkpoint.covers_to_seq) ", " (layout::when(checkpoint.at.unix_ms())) "."
                    }
                    None => "No signed checkpoint yet.",
                }
            }
        }
        section aria-labelledby="filter-title" {
            h2 #filter-title { "Find events" }
            form #audit-filter method="get" action="/ui/audit" {
                div.fields {
                    div { label for="f-principal" { "Principal" }
                        input #f-principal name="principal" type="text" value=(query.principal) placeholder="user:alice"; }
                    div { label for="f-target" { "Target" }
                        input #f-target name="target" type="text" value=(query.target); }
                    div { label for="f-kind" { "Kind (or a prefix ending in . or *)" }
                        input #f-kind name="kind" type="text" value=(query.kind) placeholder="grant."; }
                    div { label for="f-from" { "From (UTC)" }
                        input #f-from name="from" type="datetime-local" value=(query.from); }
                    div { label for="f-to" { "To (UTC)" }
                        input #f-to name="to" type="datetime-local" value=(query.to); }
                }
                button #audit-filter-submit type="submit" { "Find" }
                " "
                a #export href=(format!("/ui/audit/export?{filter_query}")) download="mayfly-audit.jsonl" { "Export as JSON lines" }
            }
        }
        @if found.events.is_empty() {
            p #no-events { "No event matches." }
        } @else {
            div.scroll {
                table #events {
                    caption.visually-hidden { "Audit events, newest first" }
                    thead { tr {
                        th scope="col" { "#" } th scope="col" { "Time" } th scope="col" { "Kind" }
                        th scope="col" { "Principal" } th scope="col" { "Target" } th scope="col" { "Outcome" }
                    } }
                    tbody {
                        @for event in &found.events {
                            tr data-seq=(event.seq) data-kind=(event.kind) {
                                td { (event.seq) }
                                td { (layout::when(event.at.unix_ms())) }
                                td { code { (event.kind) } }
                                td { (event.principal.as_deref().unwrap_or("")) }
                                td { (event.target.as_deref().unwrap_or("")) }
                                td class=(if event.outcome == "ok" { "ok" } else { "bad" }) { (event.outcome) }
                            }
                        }
                    }
                }
            }
            @if let Some(before) = found.next_before_seq {
                p { a #older href=(format!("/ui/audit?{filter_query}&before={before}")) { "Older events" } }
            }
        }
    };
    Ok(layout::page(Some(&viewer), "Audit", None, body).into_response())
}

/// `GET /ui/audit/export`: what the filter finds, as JSON lines, oldest first.
pub async fn export(
    State(broker): State<Broker>,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> PageResult {
    viewer.caller.require_admin()?;
    let filter = query.filter(crate::audit::search::MAX_SEARCH_LIMIT)?;
    let export = broker.audit_export(&viewer.caller, filter).await?;
    let mut body = export.lines.join("\n");
    body.push('\n');
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"mayfly-audit.jsonl\""),
    );
    if export.truncated {
        headers.insert("x-mayfly-truncated", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_utc_and_bad_ones_named() {
        let at = parse_time("from", "2026-12-03T08:00").expect("a time");
        assert_eq!(at.map(Timestamp::unix_ms), Some(1_796_284_800_000));
        assert!(parse_time("from", "").expect("empty").is_none());
        let error = parse_time("to", "yesterday").expect_err("refused");
        assert!(error.to_string().contains("`to`"));
    }
}
