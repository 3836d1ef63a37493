//! The frame of every console page: the document head (the stylesheet and the one script, both
//! from `/ui/static/`), a skip link, the navigation for who is looking, the logout forms, the
//! flash message, and small helpers the pages share (times, escaping for URLs).

use axum::response::Html;
use maud::{DOCTYPE, Markup, html};
use mayfly_core::Timestamp;

use super::session::Viewer;

/// A whole page. `flash` is a message about what was just done (from a fixed list: see
/// [`flash_text`]), shown in `#flash`.
pub fn page(
    viewer: Option<&Viewer>,
    title: &str,
    flash: Option<&str>,
    body: Markup,
) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Mayfly" }
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/access" { "Mayfly" }
                    @if let Some(viewer) = viewer {
                        nav #nav aria-label="Main" {
                            ul {
                                li { a href="/ui/access" { "My access" } }
                                li { a href="/ui/approvals" { "Approvals" } }
                                li { a href="/ui/dashboard" { "Dashboard" } }
                                @if viewer.is_admin() {
                                    li { a href="/ui/audit" { "Audit" } }
                                    li { a href="/ui/review" { "Review" } }
                                    li { a href="/ui/admin/targets" { "Admin" } }
                                }
                            }
                        }
                        div.who {
                            span #whoami { (viewer.name()) }
                            form #logout-form method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button #logout type="submit" { "Log out" }
                            }
                            form #logout-everywhere-form method="post" action="/ui/logout-everywhere" {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button #logout-everywhere type="submit" { "Log out everywhere" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    @if let Some(flash) = flash {
                        p #flash role="status" { (flash) }
                    }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string())
}

/// The message for a flash key in a redirect's query (`?done=requested&id=…`): only these texts
/// are ever shown, so a crafted link cannot put words on the page; the id is shown only if it
/// looks like one of ours.
pub fn flash_text(done: Option<&str>, id: Option<&str>) -> Option<String> {
    let id = id.filter(|id| looks_like_id(id)).unwrap_or("");
    let text = match done? {
        "pending" => format!("Request {id} is waiting for approval."),
        "allowed" => format!("Request {id} is allowed: activate it when you need it."),
        "approved" => format!("You approved request {id}."),
        "denied" => format!("You denied request {id}."),
        "call-approved" => format!("You approved agent call {id}: it may run once."),
        "call-refused" => format!("You refused agent call {id}."),
        "revoked" => format!("Grant {id} is being revoked."),
        "renewed" => format!("Grant {id} was renewed."),
        "reviewed" => format!("Grant {id} was reviewed."),
        "policy" => "The policy was saved.".to_owned(),
        "user" => "The user was saved.".to_owned(),
        "logged-out-everywhere" => "Every session of yours has ended.".to_owned(),
        _ => return None,
    };
    Some(text)
}

/// Whether `id` has the shape of an id the broker makes (a UUID).
pub fn looks_like_id(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Percent-encodes `text` for a URL's query.
pub fn query_escape(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A time as `YYYY-MM-DD HH:MM:SS UTC` (a `<time>` element carries the machine form).
pub fn when(ms: i64) -> Markup {
    let text = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|_| ms.to_string());
    html! { time datetime=(iso(ms)) { (text) } }
}

fn iso(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A duration in words: `2 h 5 min`, `45 s`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Milliseconds of `at`, for `data-expires-at`.
pub fn ms(at: Timestamp) -> i64 {
    at.unix_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_texts_come_from_a_fixed_list() {
        assert_eq!(flash_text(Some("<script>"), None), None);
        assert_eq!(
            flash_text(Some("revoked"), Some("<b>evil</b>")).as_deref(),
            Some("Grant  is being revoked.")
        );
        let id = "0193c8b4-1f7a-7cc2-9d1e-0a1b2c3d4e5f";
        assert!(flash_text(Some("pending"), Some(id)).is_some_and(|t| t.contains(id)));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(125), "2 min 5 s");
        assert_eq!(duration(7500), "2 h 5 min");
        assert_eq!(duration(-3), "0 s");
    }
}
