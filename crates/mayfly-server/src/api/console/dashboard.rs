//! The dashboard (`GET /ui/dashboard`, issue 21 "Pictures"): standing vs ephemeral access at a
//! glance. The counts now (`#count-active-grants`, `#count-pending-requests`, `#count-standing`,
//! each with `data-value`) and five figures drawn by [`super::charts`] from one
//! [`Broker::access_picture`](crate::state::Broker::access_picture): active grants per target,
//! credential lifetimes with the policy maximum, revocation lag, time to approval, standing
//! credentials found. `?window=24h|7d|30d` picks the window (24 hours by default).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use maud::{Markup, html};

use super::charts::{self, Bin, Chart, Marker, PercentilePoint, Series, TimeAxis};
use super::session::Viewer;
use super::{PageResult, layout};
use crate::access::picture::{AccessPicture, Percentiles, PictureScope, Window};
use crate::error::BrokerError;
use crate::state::Broker;

/// The dashboard's query: `?window=24h|7d|30d`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardQuery {
    #[serde(default)]
    pub window: Option<String>,
}

/// `GET /ui/dashboard`: one broker operation, [`Broker::access_picture`], drawn.
pub async fn page(
    State(broker): State<Broker>,
    viewer: Viewer,
    query: Result<Query<DashboardQuery>, QueryRejection>,
) -> PageResult {
    let Query(query) =
        query.map_err(|e| BrokerError::BadRequest(format!("query: {}", e.body_text())))?;
    let (key, window) = window(query.window.as_deref())?;
    let picture = broker.access_picture(&viewer.caller, window).await?;
    Ok(layout::page(Some(&viewer), "Dashboard", None, content(&picture, key)).into_response())
}

/// The windows the page offers: the query value, its label, its span and buckets.
pub const WINDOWS: [(&str, &str, u64, u32); 3] = [
    ("24h", "24 hours", 24 * 3600, 24),
    ("7d", "7 days", 7 * 24 * 3600, 28),
    ("30d", "30 days", 30 * 24 * 3600, 30),
];

/// The window named by `?window=` (`None`: the first, 24 hours).
pub fn window(name: Option<&str>) -> Result<(&'static str, Window), BrokerError> {
    let name = name.unwrap_or("24h");
    let (key, _, span, buckets) =
        WINDOWS
            .iter()
            .find(|(key, ..)| *key == name)
            .ok_or_else(|| {
                BrokerError::BadRequest("query `window`: one of `24h`, `7d`, `30d`".into())
            })?;
    Ok((key, Window::new(Duration::from_secs(*span), *buckets)?))
}

fn points(values: &[Percentiles]) -> Vec<PercentilePoint> {
    values
        .iter()
        .map(|p| PercentilePoint {
            n: p.n,
            p50_ms: p.p50_ms,
            p99_ms: p.p99_ms,
        })
        .collect()
}

/// The page's content (inside the layout): the window's links, the counts and the figures.
pub fn content(picture: &AccessPicture, window_key: &str) -> Markup {
    let frame = picture.frame;
    let axis = TimeAxis {
        from_ms: frame.from.unix_ms(),
        bucket_ms: frame.bucket_ms,
        buckets: frame.buckets,
    };
    let counts = picture.counts;
    let active: Vec<Series<'_>> = picture
        .active
        .iter()
        .map(|s| Series {
            name: &s.target,
            values: &s.values,
        })
        .collect();
    let lifetimes = &picture.lifetimes;
    let bins: Vec<Bin> = lifetimes
        .counts
        .iter()
        .zip(0_u64..)
        .map(|(count, i)| Bin {
            lo_ms: i * lifetimes.bin_ms,
            hi_ms: (i + 1) * lifetimes.bin_ms,
            count: *count,
        })
        .collect();
    let largest = lifetimes.largest_max();
    let marker_label = largest.map(|m| format!("policy maximum ({}/{})", m.target, m.role));
    let marker = largest
        .zip(marker_label.as_deref())
        .map(|(m, label)| Marker {
            at_ms: m.max_ms,
            label,
        });
    let window_label = WINDOWS
        .iter()
        .find(|(key, ..)| *key == window_key)
        .map_or("24 hours", |(_, label, ..)| *label);
    html! {
        h1 { "Dashboard" }
        p class="dashboard-scope" {
            @match picture.scope {
                PictureScope::Everyone => { "Everyone's grants and requests" }
                PictureScope::Own => { "Your own grants and requests (and the requests you may approve)" }
            }
            ", the last " (window_label) " (UTC). Standing credentials are the broker's count."
        }
        nav class="windows" aria-label="Window" {
            ul {
                @for (key, label, ..) in WINDOWS {
                    li {
                        @if key == window_key {
                            a href={ "/ui/dashboard?window=" (key) } aria-current="page" { (label) }
                        } @else {
                            a href={ "/ui/dashboard?window=" (key) } { (label) }
                        }
                    }
                }
            }
        }
        section class="counts" aria-label="Now" {
            dl {
                div class="count" {
                    dt { "Active grants" }
                    dd id="count-active-grants" data-value=(counts.active_grants) { (counts.active_grants) }
                }
                div class="count" {
                    dt { "Pending requests" }
                    dd id="count-pending-requests" data-value=(counts.pending_requests) { (counts.pending_requests) }
                }
                div class={ "count" @if counts.standing_found > 0 { " count-alarm" } } {
                    dt { "Standing credentials found (" (window_label) ")" }
                    dd id="count-standing" data-value=(counts.standing_found) { (counts.standing_found) }
                }
            }
        }
        div class="charts" {
            (charts::step_chart(
                Chart {
                    id: "chart-active-grants",
                    title: "Active grants per target (most at once per bucket)",
                    empty: "No grants were active in this window.",
                },
                &axis,
                &active,
                "grants",
            ))
            (charts::histogram(
                Chart {
                    id: "chart-lifetimes",
                    title: "Credential lifetimes (TTL granted)",
                    empty: "No grants were created in this window.",
                },
                &bins,
                marker,
                "grants",
            ))
            @if lifetimes.policy_max.len() > 1 {
                p class="chart-note" {
                    "Policy maxima: "
                    @for (i, m) in lifetimes.policy_max.iter().enumerate() {
                        @if i > 0 { ", " }
                        (m.target) "/" (m.role) " " (charts::duration(m.max_ms))
                    }
                    "."
                }
            }
            (charts::percentile_chart(
                Chart {
                    id: "chart-revocation-lag",
                    title: "Revocation lag: expiry to proof of removal",
                    empty: "No grant was revoked at its expiry in this window.",
                },
                &axis,
                &points(&picture.revocation_lag),
            ))
            @if picture.overdue > 0 {
                p id="overdue" class="chart-note count-alarm" data-value=(picture.overdue) {
                    (picture.overdue) " grant(s) past their expiry are not revoked yet."
                }
            }
            (charts::percentile_chart(
                Chart {
                    id: "chart-approval-time",
                    title: "Time from request to approval",
                    empty: "No request was approved in this window.",
                },
                &axis,
                &points(&picture.approval_time),
            ))
            (charts::step_chart(
                Chart {
                    id: "chart-standing",
                    title: "Standing credentials found by the sweep (should be zero)",
                    empty: "None found: no standing credentials in this window.",
                },
                &axis,
                &[Series { name: "found", values: &picture.standing }],
                "credentials",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "tests: a failed step should stop the test loudly"
    )]

    use mayfly_core::Timestamp;
    use mayfly_store::PictureRows;

    use super::*;

    #[test]
    fn windows_are_named_and_others_refused() {
        assert_eq!(window(None).unwrap().0, "24h");
        assert_eq!(window(Some("7d")).unwrap().1.buckets(), 28);
        let error = window(Some("1y")).unwrap_err().to_string();
        assert!(error.contains("window"), "{error}");
    }

    #[test]
    fn the_page_has_the_contracts_counts_and_figures() {
        let (_, w) = window(None).unwrap();
        let picture = AccessPicture::from_rows(
            w.ending(Timestamp::from_unix_ms(1_800_000_000_000)),
            PictureScope::Own,
            PictureRows {
                active_grants: 3,
                pending_requests: 1,
                ..PictureRows::default()
            },
        );
        let html = content(&picture, "24h").into_string();
        for needle in [
            "id=\"count-active-grants\" data-value=\"3\"",
            "id=\"count-pending-requests\" data-value=\"1\"",
            "id=\"count-standing\" data-value=\"0\"",
            "<figure id=\"chart-active-grants\"",
            "<figure id=\"chart-lifetimes\"",
            "<figure id=\"chart-revocation-lag\"",
            "<figure id=\"chart-approval-time\"",
            "<figure id=\"chart-standing\"",
            "Your own grants",
            "aria-current=\"page\"",
        ] {
            assert!(html.contains(needle), "{needle} in {html}");
        }
        assert!(!html.contains("style"));
    }
}
