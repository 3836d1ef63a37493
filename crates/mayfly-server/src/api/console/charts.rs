//! Charts drawn on the server as inline SVG (issue 21, "Pictures"): pure functions from series
//! to [`Markup`], no I/O, no JavaScript. Each returns a `<figure id=…>` holding
//!
//! - a `<figcaption>` (the title), which labels the SVG (`aria-labelledby`);
//! - an `<svg role="img">` with a `viewBox` and no fixed size, so it scales with the width it is
//!   given: few ticks (four or five on an axis) and 14-unit text, which stays readable at 360 px;
//!   a `<desc>` sums it up in a sentence (`aria-describedby`);
//! - a legend when there is more than one series (each entry with a swatch of its line);
//! - a `<table>` with every number drawn (a `<caption>`, `th scope="col"`/`scope="row"`), for
//!   screen readers and anyone who wants the numbers;
//! - a short text when there is nothing to draw (`p.chart-empty`); the axes and the table are
//!   still there.
//!
//! No `style` attribute and no `<style>` element (the Content-Security-Policy allows
//! neither): shapes carry presentation attributes as defaults (`fill`, `stroke`,
//! `stroke-width`, `stroke-dasharray`, `font-size`) that the console's stylesheet overrides,
//! and these classes for it to colour (dark mode included). Series differ by dash pattern too, so
//! colour is never the only difference.
//!
//! | class | on | what |
//! |---|---|---|
//! | `chart` | `figure` | every chart; also `chart-step`, `chart-histogram`, `chart-percentiles` |
//! | `chart-svg` | `svg` | the drawing (give it `width: 100%; height: auto`) |
//! | `axes` | `g` | the axes with their ticks and labels (no stroke on it: `text` inside inherits) |
//! | `axis` | `line` | an axis' line |
//! | `tick` | `line` | a tick on the time axis |
//! | `tick-label` | `text` | a tick's label |
//! | `axis-label` | `text` | the units of an axis |
//! | `grid` | `line` | horizontal guide lines at the y ticks |
//! | `series`, `series-0` … `series-5` | `path`, `circle`, `line` | the lines of the series, by index (p50 is `series-0`, p99 `series-1`) |
//! | `point` | `circle` | a value of a percentile chart (with its `series-N`; drawn as a ring of `stroke-width` 2, so a `series-N { fill: none }` rule still shows it) |
//! | `bar` | `rect` | a bar of the histogram |
//! | `marker` | `line` | the vertical marker (the policy maximum) |
//! | `marker-label` | `text` | its label |
//! | `no-data` | `text` | "No data" inside an empty drawing |
//! | `chart-legend` | `ul` | the legend; `legend-item` on its `li`, `swatch` on the small `svg` in each |
//! | `chart-table`, `visually-hidden` | `table` | the numbers, hidden visually but not from screen readers |
//! | `chart-empty` | `p` | the empty-state text |
//! | `chart-note` | `p` | a note under a chart (the marker's meaning) |
//!
//! Text defaults to `fill="currentColor"`, lines to `stroke="currentColor"`: without any CSS
//! the charts follow the page's text colour, light or dark.

use maud::{Markup, html};

/// The drawing's coordinate system (the `viewBox`): wide and short, scaled to the width.
const WIDTH: f64 = 400.0;
const HEIGHT: f64 = 240.0;
/// The plot area inside it: room on the left for the y labels, below for the x labels.
const LEFT: f64 = 52.0;
const RIGHT: f64 = 388.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 200.0;
/// Text size in viewBox units: 14 of 400 is about 12.6 px when drawn 360 px wide.
const FONT: &str = "14";
/// Series drawn with a style of their own; beyond, the styles repeat.
pub const SERIES_STYLES: usize = 6;
/// The dash pattern of each series (by index modulo [`SERIES_STYLES`]).
const DASHES: [&str; SERIES_STYLES] = ["none", "6 3", "2 3", "8 3 2 3", "1 3", "10 4"];
/// Ticks on an axis, at most (plus zero).
const MAX_TICKS: u64 = 4;

/// Time buckets on the x axis: `buckets` buckets of `bucket_ms` from `from_ms` (unix ms, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeAxis {
    pub from_ms: i64,
    pub bucket_ms: i64,
    pub buckets: usize,
}

impl TimeAxis {
    fn start_ms(&self, i: usize) -> i64 {
        let i = i64::try_from(i).unwrap_or(i64::MAX);
        self.from_ms
            .saturating_add(self.bucket_ms.saturating_mul(i))
    }

    fn span_ms(&self) -> i64 {
        self.bucket_ms
            .saturating_mul(i64::try_from(self.buckets).unwrap_or(i64::MAX))
    }

    /// The x of the start of bucket `i` (`i = buckets` is the right edge).
    fn x(&self, i: usize) -> f64 {
        let n = self.buckets.max(1) as f64;
        LEFT + (RIGHT - LEFT) * (i as f64) / n
    }

    /// A time as its label: `HH:MM` over a window of up to two days, `MM-DD` beyond.
    fn label(&self, at_ms: i64) -> String {
        let Ok(at) = time::OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000)) else {
            return String::from("?");
        };
        if self.span_ms() <= 2 * 86_400_000 {
            format!("{:02}:{:02}", at.hour(), at.minute())
        } else {
            format!("{:02}-{:02}", u8::from(at.month()), at.day())
        }
    }

    /// Bucket `i` as a table row's header: `HH:MM–HH:MM` (or days), UTC.
    fn range(&self, i: usize) -> String {
        format!(
            "{}–{}",
            self.label(self.start_ms(i)),
            self.label(self.start_ms(i + 1))
        )
    }

    /// The buckets whose start gets a tick label: four or five, evenly spread.
    fn ticks(&self) -> Vec<usize> {
        let n = self.buckets;
        if n == 0 {
            return Vec::new();
        }
        let step = n.div_ceil(4).max(1);
        let mut ticks: Vec<usize> = (0..=n).step_by(step).collect();
        if ticks.last() != Some(&n) {
            // The right edge (now) is always labelled; a tick less than a step before it goes.
            if ticks.last().is_some_and(|&t| t > 0 && n - t < step) {
                ticks.pop();
            }
            ticks.push(n);
        }
        ticks
    }
}

/// One named series of counts, a value per bucket.
#[derive(Clone, Copy, Debug)]
pub struct Series<'a> {
    pub name: &'a str,
    pub values: &'a [u64],
}

/// A bin of a histogram of durations: `[lo_ms, hi_ms)` and how many fell in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bin {
    pub lo_ms: u64,
    pub hi_ms: u64,
    pub count: u64,
}

/// A vertical marker on a histogram (the policy maximum) and what it means.
#[derive(Clone, Copy, Debug)]
pub struct Marker<'a> {
    pub at_ms: u64,
    pub label: &'a str,
}

/// A bucket's percentiles of durations: how many values, p50 and p99 (ms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PercentilePoint {
    pub n: u64,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

/// What a chart says of itself: its id (the figure's; its parts' ids derive from it), title, the
/// text shown when there is nothing to draw.
#[derive(Clone, Copy, Debug)]
pub struct Chart<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub empty: &'a str,
}

impl Chart<'_> {
    fn caption_id(&self) -> String {
        format!("{}-title", self.id)
    }

    fn desc_id(&self) -> String {
        format!("{}-desc", self.id)
    }
}

/// A step chart of counts over time, a line per series (active grants per target, findings per
/// bucket): each bucket's value held across its width.
pub fn step_chart(chart: Chart<'_>, axis: &TimeAxis, series: &[Series<'_>], unit: &str) -> Markup {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .max()
        .unwrap_or(0);
    let empty = max == 0;
    let scale = Scale::counts(max);
    let summary = if empty {
        format!("{} No data.", chart.empty)
    } else {
        let busiest = series
            .iter()
            .max_by_key(|s| s.values.iter().copied().max().unwrap_or(0))
            .map(|s| s.name)
            .unwrap_or_default();
        format!("At most {max} {unit} at once ({busiest}), per bucket, from the table below.")
    };
    html! {
        figure id=(chart.id) class="chart chart-step" {
            figcaption id=(chart.caption_id()) { (chart.title) }
            @if empty { p class="chart-empty" { (chart.empty) } }
            svg class="chart-svg" role="img" viewBox=(view_box())
                aria-labelledby=(chart.caption_id()) aria-describedby=(chart.desc_id())
                xmlns="http://www.w3.org/2000/svg" {
                desc id=(chart.desc_id()) { (summary) }
                (y_axis(&scale, &|v| v.to_string(), unit))
                (x_axis(axis))
                @if empty {
                    (no_data())
                } @else {
                    @for (i, s) in series.iter().enumerate() {
                        path class=(series_class(i)) d=(step_path(axis, &scale, s.values))
                            fill="none" stroke="currentColor" stroke-width="2"
                            stroke-dasharray=(dash(i)) stroke-linejoin="round" {}
                    }
                }
            }
            @if series.len() > 1 { (legend(series.iter().map(|s| s.name))) }
            table class="chart-table visually-hidden" {
                caption { (chart.title) " (per bucket, UTC)" }
                thead { tr {
                    th scope="col" { "Time (UTC)" }
                    @if series.is_empty() { th scope="col" { (unit) } }
                    @for s in series { th scope="col" { (s.name) } }
                } }
                tbody {
                    @for i in 0..axis.buckets {
                        tr {
                            th scope="row" { (axis.range(i)) }
                            @if series.is_empty() { td { "0" } }
                            @for s in series {
                                td { (s.values.get(i).copied().unwrap_or(0)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A histogram of durations (credential lifetimes) with an optional vertical marker (the policy
/// maximum). Bins are drawn on a linear axis from zero to the last bin's end (or the marker).
pub fn histogram(chart: Chart<'_>, bins: &[Bin], marker: Option<Marker<'_>>, unit: &str) -> Markup {
    let max = bins.iter().map(|b| b.count).max().unwrap_or(0);
    let empty = max == 0;
    let scale = Scale::counts(max);
    let end_ms = bins
        .iter()
        .map(|b| b.hi_ms)
        .chain(marker.map(|m| m.at_ms))
        .max()
        .unwrap_or(0)
        .max(1);
    let x = |ms: u64| LEFT + (RIGHT - LEFT) * (ms as f64) / (end_ms as f64);
    let total: u64 = bins.iter().map(|b| b.count).sum();
    let summary = if empty {
        format!("{} No data.", chart.empty)
    } else {
        let mode = bins.iter().max_by_key(|b| b.count);
        let mut text = format!("{total} {unit}");
        if let Some(mode) = mode {
            text.push_str(&format!(
                "; most between {} and {}",
                duration(mode.lo_ms),
                duration(mode.hi_ms)
            ));
        }
        if let Some(m) = marker {
            text.push_str(&format!("; {}: {}", m.label, duration(m.at_ms)));
        }
        text.push('.');
        text
    };
    let x_ticks = duration_ticks(end_ms);
    html! {
        figure id=(chart.id) class="chart chart-histogram" {
            figcaption id=(chart.caption_id()) { (chart.title) }
            @if empty { p class="chart-empty" { (chart.empty) } }
            svg class="chart-svg" role="img" viewBox=(view_box())
                aria-labelledby=(chart.caption_id()) aria-describedby=(chart.desc_id())
                xmlns="http://www.w3.org/2000/svg" {
                desc id=(chart.desc_id()) { (summary) }
                (y_axis(&scale, &|v| v.to_string(), unit))
                g class="axes" {
                    line class="axis" x1=(num(LEFT)) y1=(num(BOTTOM)) x2=(num(RIGHT)) y2=(num(BOTTOM))
                        stroke="currentColor" {}
                    @for t in &x_ticks {
                        text class="tick-label" x=(num(x(*t))) y=(num(BOTTOM + 20.0)) text-anchor="middle"
                            font-size=(FONT) fill="currentColor" { (duration(*t)) }
                    }
                }
                @if empty {
                    (no_data())
                } @else {
                    @for b in bins.iter().filter(|b| b.count > 0) {
                        @let (x0, x1) = (x(b.lo_ms), x(b.hi_ms));
                        @let y = scale.y(b.count);
                        rect class="bar" x=(num(x0 + 1.0)) y=(num(y))
                            width=(num((x1 - x0 - 2.0).max(1.0))) height=(num(BOTTOM - y))
                            fill="currentColor" fill-opacity="0.6" {}
                    }
                }
                @if let Some(m) = marker {
                    @let mx = x(m.at_ms);
                    line class="marker" x1=(num(mx)) y1=(num(TOP)) x2=(num(mx)) y2=(num(BOTTOM))
                        stroke="currentColor" stroke-width="2" stroke-dasharray="4 3" {}
                    text class="marker-label" x=(num(mx - 4.0)) y=(num(TOP + 14.0))
                        text-anchor="end" font-size=(FONT) fill="currentColor" {
                        (duration(m.at_ms))
                    }
                }
            }
            @if let Some(m) = marker {
                p class="chart-note" { "Dashed line: " (m.label) ", " (duration(m.at_ms)) "." }
            }
            table class="chart-table visually-hidden" {
                caption { (chart.title) }
                thead { tr {
                    th scope="col" { "Lifetime" }
                    th scope="col" { (capitalized(unit)) }
                } }
                tbody {
                    @if bins.is_empty() {
                        tr { th scope="row" { "—" } td { "0" } }
                    }
                    @for b in bins {
                        tr {
                            th scope="row" { (duration(b.lo_ms)) "–" (duration(b.hi_ms)) }
                            td { (b.count) }
                        }
                    }
                }
                @if let Some(m) = marker {
                    tfoot { tr {
                        th scope="row" { (capitalized(m.label)) }
                        td { (duration(m.at_ms)) }
                    } }
                }
            }
        }
    }
}

/// p50 and p99 of a duration over time (revocation lag, time to approval): two lines, a point per
/// bucket with values, broken where a bucket has none.
pub fn percentile_chart(chart: Chart<'_>, axis: &TimeAxis, points: &[PercentilePoint]) -> Markup {
    let max = points
        .iter()
        .flat_map(|p| [p.p50_ms, p.p99_ms])
        .flatten()
        .max();
    let empty = points.iter().all(|p| p.n == 0) || max.is_none();
    let scale = Scale::durations(max.unwrap_or(0));
    let n: u64 = points.iter().map(|p| p.n).sum();
    let summary = if empty {
        format!("{} No data.", chart.empty)
    } else {
        format!(
            "{n} values; the highest p99 in a bucket is {}.",
            duration(max.unwrap_or(0))
        )
    };
    let lines: [(&str, Vec<Option<u64>>); 2] = [
        ("p50", points.iter().map(|p| p.p50_ms).collect()),
        ("p99", points.iter().map(|p| p.p99_ms).collect()),
    ];
    html! {
        figure id=(chart.id) class="chart chart-percentiles" {
            figcaption id=(chart.caption_id()) { (chart.title) }
            @if empty { p class="chart-empty" { (chart.empty) } }
            svg class="chart-svg" role="img" viewBox=(view_box())
                aria-labelledby=(chart.caption_id()) aria-describedby=(chart.desc_id())
                xmlns="http://www.w3.org/2000/svg" {
                desc id=(chart.desc_id()) { (summary) }
                (y_axis(&scale, &duration, ""))
                (x_axis(axis))
                @if empty {
                    (no_data())
                } @else {
                    @for (i, (_, values)) in lines.iter().enumerate() {
                        path class=(series_class(i)) d=(point_path(axis, &scale, values))
                            fill="none" stroke="currentColor" stroke-width="2"
                            stroke-dasharray=(dash(i)) stroke-linejoin="round" {}
                        @for (b, v) in values.iter().enumerate() {
                            @if let Some(v) = v {
                                circle class=(format!("point {}", series_class(i)))
                                    cx=(num(center(axis, b))) cy=(num(scale.y(*v))) r="3"
                                    fill="currentColor" stroke="currentColor" stroke-width="2" {}
                            }
                        }
                    }
                }
            }
            (legend(lines.iter().map(|(name, _)| *name)))
            table class="chart-table visually-hidden" {
                caption { (chart.title) " (per bucket, UTC)" }
                thead { tr {
                    th scope="col" { "Time (UTC)" }
                    th scope="col" { "Count" }
                    th scope="col" { "p50" }
                    th scope="col" { "p99" }
                } }
                tbody {
                    @for (i, p) in points.iter().enumerate() {
                        tr {
                            th scope="row" { (axis.range(i)) }
                            td { (p.n) }
                            td { (p.p50_ms.map_or_else(|| "—".to_owned(), duration)) }
                            td { (p.p99_ms.map_or_else(|| "—".to_owned(), duration)) }
                        }
                    }
                }
            }
        }
    }
}

/// A y axis from zero to `max` with a few round ticks.
struct Scale {
    max: u64,
    ticks: Vec<u64>,
}

impl Scale {
    /// Counts: ticks at 1, 2 or 5 × 10ⁿ.
    fn counts(max: u64) -> Scale {
        let mut steps = Vec::new();
        let mut power = 1_u64;
        while power <= u64::MAX / 10 {
            for m in [1, 2, 5] {
                steps.push(power * m);
            }
            power *= 10;
        }
        Scale::with_steps(max.max(1), &steps)
    }

    /// Durations in ms: ticks at round durations.
    fn durations(max: u64) -> Scale {
        const STEPS: [u64; 30] = [
            1,
            2,
            5,
            10,
            20,
            50,
            100,
            200,
            500,
            1_000,
            2_000,
            5_000,
            10_000,
            15_000,
            30_000,
            60_000,
            120_000,
            300_000,
            600_000,
            900_000,
            1_800_000,
            3_600_000,
            7_200_000,
            10_800_000,
            21_600_000,
            43_200_000,
            86_400_000,
            172_800_000,
            604_800_000,
            2_592_000_000,
        ];
        Scale::with_steps(max.max(1), &STEPS)
    }

    /// The smallest step that reaches `max` in at most [`MAX_TICKS`] ticks.
    fn with_steps(max: u64, steps: &[u64]) -> Scale {
        let step = steps
            .iter()
            .copied()
            .find(|s| max.div_ceil(*s) <= MAX_TICKS)
            .unwrap_or_else(|| max.div_ceil(MAX_TICKS).max(1));
        let top = max.div_ceil(step).saturating_mul(step);
        Scale {
            max: top,
            ticks: (0..=top / step).map(|i| i * step).collect(),
        }
    }

    fn y(&self, value: u64) -> f64 {
        let max = self.max.max(1) as f64;
        BOTTOM - (BOTTOM - TOP) * (value.min(self.max) as f64) / max
    }
}

/// Round durations for an x axis from zero to `end_ms`: zero and a few more.
fn duration_ticks(end_ms: u64) -> Vec<u64> {
    let scale = Scale::durations(end_ms);
    scale.ticks.into_iter().filter(|t| *t <= end_ms).collect()
}

fn view_box() -> String {
    format!("0 0 {WIDTH} {HEIGHT}")
}

/// A coordinate, to a tenth.
fn num(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

fn series_class(i: usize) -> String {
    format!("series series-{}", i % SERIES_STYLES)
}

fn dash(i: usize) -> &'static str {
    DASHES.get(i % SERIES_STYLES).copied().unwrap_or("none")
}

fn center(axis: &TimeAxis, i: usize) -> f64 {
    (axis.x(i) + axis.x(i + 1)) / 2.0
}

fn y_axis(scale: &Scale, label: &dyn Fn(u64) -> String, unit: &str) -> Markup {
    html! {
        g class="axes" {
            line class="axis" x1=(num(LEFT)) y1=(num(TOP)) x2=(num(LEFT)) y2=(num(BOTTOM)) stroke="currentColor" {}
            @for t in &scale.ticks {
                @let y = scale.y(*t);
                @if *t > 0 {
                    line class="grid" x1=(num(LEFT)) y1=(num(y)) x2=(num(RIGHT)) y2=(num(y))
                        stroke="currentColor" stroke-opacity="0.2" {}
                }
                text class="tick-label" x=(num(LEFT - 6.0)) y=(num(y + 5.0)) text-anchor="end" font-size=(FONT)
                    fill="currentColor" { (label(*t)) }
            }
            @if !unit.is_empty() {
                text class="axis-label" x=(num(LEFT + 4.0)) y=(num(TOP - 2.0)) font-size="12"
                    fill="currentColor" { (unit) }
            }
        }
    }
}

fn x_axis(axis: &TimeAxis) -> Markup {
    html! {
        g class="axes" {
            line class="axis" x1=(num(LEFT)) y1=(num(BOTTOM)) x2=(num(RIGHT)) y2=(num(BOTTOM)) stroke="currentColor" {}
            @for i in axis.ticks() {
                @let anchor = if i == 0 { "start" } else if i == axis.buckets { "end" } else { "middle" };
                line class="tick" x1=(num(axis.x(i))) y1=(num(BOTTOM)) x2=(num(axis.x(i))) y2=(num(BOTTOM + 4.0))
                    stroke="currentColor" {}
                text class="tick-label" x=(num(axis.x(i))) y=(num(BOTTOM + 20.0)) text-anchor=(anchor)
                    font-size=(FONT) fill="currentColor" { (axis.label(axis.start_ms(i))) }
            }
            text class="axis-label" x=(num(RIGHT)) y=(num(HEIGHT - 4.0)) text-anchor="end"
                font-size="12" fill="currentColor" { "UTC" }
        }
    }
}

fn no_data() -> Markup {
    html! {
        text class="no-data" x=(num((LEFT + RIGHT) / 2.0)) y=(num((TOP + BOTTOM) / 2.0))
            text-anchor="middle" font-size=(FONT) fill="currentColor" { "No data" }
    }
}

fn legend<'a>(names: impl Iterator<Item = &'a str>) -> Markup {
    html! {
        ul class="chart-legend" {
            @for (i, name) in names.enumerate() {
                li class="legend-item" {
                    svg class="swatch" viewBox="0 0 24 8" width="24" height="8" aria-hidden="true"
                        xmlns="http://www.w3.org/2000/svg" {
                        line class=(series_class(i)) x1="0" y1="4" x2="24" y2="4"
                            stroke="currentColor" stroke-width="2" stroke-dasharray=(dash(i)) {}
                    }
                    " " (name)
                }
            }
        }
    }
}

/// Each bucket's value held across its width.
fn step_path(axis: &TimeAxis, scale: &Scale, values: &[u64]) -> String {
    let mut d = String::new();
    for i in 0..axis.buckets {
        let y = num(scale.y(values.get(i).copied().unwrap_or(0)));
        if i == 0 {
            d.push_str(&format!("M{} {y}", num(axis.x(0))));
        } else {
            d.push_str(&format!("V{y}"));
        }
        d.push_str(&format!("H{}", num(axis.x(i + 1))));
    }
    d
}

/// A line through each bucket's centre that has a value, broken where one has none.
fn point_path(axis: &TimeAxis, scale: &Scale, values: &[Option<u64>]) -> String {
    let mut d = String::new();
    let mut drawing = false;
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => {
                d.push(if drawing { 'L' } else { 'M' });
                d.push_str(&format!("{} {}", num(center(axis, i)), num(scale.y(*v))));
                drawing = true;
            }
            None => drawing = false,
        }
    }
    d
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A duration for people: `850 ms`, `2.5 s`, `45 s`, `15 min`, `1.5 h`, `2 d`.
pub fn duration(ms: u64) -> String {
    fn one_decimal(v: f64, unit: &str) -> String {
        if v < 10.0 && (v - v.round()).abs() >= 0.05 {
            format!("{v:.1} {unit}")
        } else {
            format!("{} {unit}", v.round())
        }
    }
    let v = ms as f64;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => one_decimal(v / 1_000.0, "s"),
        60_000..3_600_000 => one_decimal(v / 60_000.0, "min"),
        3_600_000..86_400_000 => one_decimal(v / 3_600_000.0, "h"),
        _ => one_decimal(v / 86_400_000.0, "d"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        reason = "tests: a failed step should stop the test loudly"
    )]

    use super::*;

    const HOUR: i64 = 3_600_000;

    fn axis(buckets: usize) -> TimeAxis {
        // 2026-12-03 10:00 UTC.
        TimeAxis {
            from_ms: 1_796_292_000_000,
            bucket_ms: HOUR,
            buckets,
        }
    }

    fn chart(id: &'static str) -> Chart<'static> {
        Chart {
            id,
            title: "Active grants",
            empty: "No grants in this window.",
        }
    }

    /// Every chart obeys the page's rules: one figure with the id, a labelled SVG image with a
    /// viewBox and no fixed size, a table with a caption and scoped headers, no `style`.
    fn assert_well_formed(html: &str, id: &str) {
        assert!(html.starts_with(&format!("<figure id=\"{id}\"")), "{html}");
        assert!(
            html.contains(&format!("aria-labelledby=\"{id}-title\"")),
            "{html}"
        );
        assert!(
            html.contains(&format!("<figcaption id=\"{id}-title\">")),
            "{html}"
        );
        assert!(html.contains("role=\"img\""));
        assert!(html.contains("viewBox=\"0 0 400 240\""));
        assert!(!html.contains("<svg class=\"chart-svg\" width"), "{html}");
        assert!(html.contains("<table class=\"chart-table visually-hidden\"><caption>"));
        assert!(html.contains("<th scope=\"col\">"));
        assert!(
            !html.contains("style"),
            "no style attribute or element: {html}"
        );
        assert!(!html.contains("<script"), "{html}");
    }

    #[test]
    fn step_chart_draws_each_series_and_tabulates_every_bucket() {
        let pg = [0, 3, 1, 0];
        let hostile = [1, 0, 0, 2];
        let html = step_chart(
            chart("chart-active-grants"),
            &axis(4),
            &[
                Series {
                    name: "pg",
                    values: &pg,
                },
                Series {
                    name: "<script>alert(1)</script>\"",
                    values: &hostile,
                },
            ],
            "grants",
        )
        .into_string();
        assert_well_formed(&html, "chart-active-grants");
        // Target names are escaped wherever they appear (legend, table header).
        assert!(!html.contains("<script>alert"), "{html}");
        assert_eq!(
            html.matches("&lt;script&gt;alert(1)&lt;/script&gt;&quot;")
                .count(),
            2,
            "{html}"
        );
        assert!(html.contains("class=\"series series-0\""));
        assert!(html.contains("class=\"series series-1\""));
        assert!(html.contains("<ul class=\"chart-legend\">"));
        // Scale: the top tick is 3 (steps of 1), so 3 is drawn at the top, 0 on the axis.
        assert!(
            html.contains("d=\"M52 200H136V14H220V138H304V200H388\""),
            "{html}"
        );
        // The table: a row per bucket, UTC times, the values.
        assert!(
            html.contains("<th scope=\"row\">10:00–11:00</th><td>0</td><td>1</td>"),
            "{html}"
        );
        assert!(
            html.contains("<th scope=\"row\">13:00–14:00</th><td>0</td><td>2</td>"),
            "{html}"
        );
        assert!(!html.contains("chart-empty"));
        // Ticks: the right edge is labelled.
        assert!(html.contains(">14:00</text>"), "{html}");
    }

    #[test]
    fn empty_charts_say_so_and_keep_axes_and_table() {
        let zeros = [0, 0, 0];
        let html = step_chart(
            chart("chart-standing"),
            &axis(3),
            &[Series {
                name: "found",
                values: &zeros,
            }],
            "credentials",
        )
        .into_string();
        assert_well_formed(&html, "chart-standing");
        assert!(html.contains("<p class=\"chart-empty\">No grants in this window.</p>"));
        assert!(html.contains("class=\"no-data\""));
        assert!(!html.contains("<path"), "{html}");
        assert_eq!(html.matches("<th scope=\"row\">").count(), 3);

        let html = step_chart(chart("a"), &axis(2), &[], "grants").into_string();
        assert_well_formed(&html, "a");
        assert!(html.contains("<td>0</td>"));

        let html = histogram(chart("b"), &[], None, "grants").into_string();
        assert_well_formed(&html, "b");
        assert!(html.contains("chart-empty"));
        assert!(!html.contains("<rect"));

        let html =
            percentile_chart(chart("c"), &axis(2), &[PercentilePoint::default(); 2]).into_string();
        assert_well_formed(&html, "c");
        assert!(html.contains("chart-empty"));
        assert!(html.contains("<td>0</td><td>—</td><td>—</td>"), "{html}");
    }

    #[test]
    fn histogram_draws_bars_and_the_marker_on_a_linear_axis() {
        let bins: Vec<Bin> = (0..4)
            .map(|i| Bin {
                lo_ms: i * 900_000,
                hi_ms: (i + 1) * 900_000,
                count: [2, 0, 1, 4][usize::try_from(i).unwrap()],
            })
            .collect();
        let html = histogram(
            chart("chart-lifetimes"),
            &bins,
            Some(Marker {
                at_ms: 3_600_000,
                label: "policy maximum (pg/<b>)",
            }),
            "grants",
        )
        .into_string();
        assert_well_formed(&html, "chart-lifetimes");
        // Three bars (the empty bin has none); the tallest reaches the top (4 of 4).
        assert_eq!(html.matches("<rect class=\"bar\"").count(), 3);
        assert!(
            html.contains("y=\"14\" width=\"82\" height=\"186\""),
            "{html}"
        );
        // The marker at one hour is the right edge of the axis (x = 388).
        assert!(html.contains("<line class=\"marker\" x1=\"388\""), "{html}");
        assert!(html.contains("policy maximum (pg/&lt;b&gt;)"));
        assert!(!html.contains("<b>"));
        assert!(
            html.contains("<th scope=\"row\">45 min–1 h</th><td>4</td>"),
            "{html}"
        );
        assert!(html.contains("<tfoot>"));
    }

    #[test]
    fn percentile_chart_breaks_its_lines_where_buckets_are_empty() {
        let points = [
            PercentilePoint {
                n: 3,
                p50_ms: Some(400),
                p99_ms: Some(2_000),
            },
            PercentilePoint::default(),
            PercentilePoint {
                n: 1,
                p50_ms: Some(1_500),
                p99_ms: Some(1_500),
            },
        ];
        let html = percentile_chart(chart("chart-revocation-lag"), &axis(3), &points).into_string();
        assert_well_formed(&html, "chart-revocation-lag");
        // Two moves per line (the gap), a point per value.
        let paths: Vec<&str> = html.split("<path ").skip(1).collect();
        assert_eq!(paths.len(), 2);
        for path in &paths {
            let d = path
                .split("d=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            assert_eq!(d.matches('M').count(), 2, "{d}");
        }
        assert_eq!(html.matches("<circle class=\"point series").count(), 4);
        // Durations in the table, a dash for an empty bucket.
        assert!(
            html.contains("<td>3</td><td>400 ms</td><td>2 s</td>"),
            "{html}"
        );
        assert!(html.contains("<td>0</td><td>—</td><td>—</td>"), "{html}");
        // The y axis reaches 2 s in round steps.
        assert!(html.contains(">2 s</text>"), "{html}");
    }

    #[test]
    fn scales_round_up_to_a_few_ticks() {
        let s = Scale::counts(7);
        assert_eq!((s.max, s.ticks.clone()), (8, vec![0, 2, 4, 6, 8]));
        assert_eq!(Scale::counts(0).ticks, vec![0, 1]);
        assert_eq!(Scale::counts(10_001).ticks.len(), 4);
        let d = Scale::durations(95_000);
        assert_eq!(d.ticks, vec![0, 30_000, 60_000, 90_000, 120_000]);
        assert!(Scale::counts(u64::MAX).ticks.len() <= 5);
        assert_eq!(s.y(0), BOTTOM);
        assert_eq!(s.y(8), TOP);
        assert_eq!(s.y(100), TOP, "clamped");
    }

    #[test]
    fn time_axis_labels_hours_or_days_and_few_ticks() {
        let day = axis(24);
        assert_eq!(day.ticks(), vec![0, 6, 12, 18, 24]);
        assert_eq!(day.label(day.start_ms(0)), "10:00");
        let week = TimeAxis {
            bucket_ms: 7 * HOUR,
            ..axis(24)
        };
        assert_eq!(week.label(week.start_ms(0)), "12-03");
        assert_eq!(axis(7).ticks(), vec![0, 2, 4, 7]);
        assert_eq!(axis(1).ticks(), vec![0, 1]);
        assert!(axis(0).ticks().is_empty());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(2_500), "2.5 s");
        assert_eq!(duration(45_000), "45 s");
        assert_eq!(duration(900_000), "15 min");
        assert_eq!(duration(5_400_000), "1.5 h");
        assert_eq!(duration(3_600_000), "1 h");
        assert_eq!(duration(172_800_000), "2 d");
    }
}
