//! Decisions per second of MCP tool calls (`Policies::decide_tool`) with 100 policies: a
//! realistic mix for ten teams (their queries with a WHERE on their own database, their API
//! routes, their roles), `@step_up` on writes through the proxy, forbids on agents writing SQL,
//! on payroll tables, at night and for blocked agents, and the everyday tools for everyone.
//! Every call has arguments (and so an `args_sha256`) of its own, across the seven tools, half
//! of them with an agent acting; no cache can answer them. Pure CPU: no broker, no I/O.
//!
//! ```sh
//! cargo build --release -p mayfly-bench --example tool_decide_bench
//! ./target/release/examples/tool_decide_bench [seconds] [threads]
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark"
)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_core::Principal;
use mayfly_core::policy::{Policies, ToolArgs, ToolInput};
use mayfly_core::sql::{QueryKind, QueryShape};

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

const TEAMS: usize = 10;

/// Every tool's action (the ones whose context has `hour` and `actors`).
const TOOLS: &str = "[Action::\"list_access\", Action::\"request_access\", Action::\"access_status\", Action::\"call_api\", Action::\"run_query\", Action::\"read_secret_names\", Action::\"revoke\"]";

/// The 100 policies.
fn policies() -> String {
    let mut text = String::new();
    let mut n = 0;
    let mut add = |policy: String| {
        n += 1;
        text.push_str(&format!("@id(\"p{n}\")\n{policy}\n"));
    };
    // The everyday tools, for every developer (4).
    for tool in [
        "list_access",
        "access_status",
        "read_secret_names",
        "revoke",
    ] {
        add(format!(
            "permit (principal in Group::\"dev\", action == Action::\"{tool}\", resource == Tool::\"{tool}\");"
        ));
    }
    for team in 0..TEAMS {
        // Reads of their own database, filtered, at most 500 rows (10).
        add(format!(
            "permit (principal in Group::\"team{team}\", action == Action::\"run_query\", resource == Tool::\"run_query\") \
             when {{ context.target == \"db{team}\" && context.query.kind == \"select\" && context.query.has_where && context.max_rows <= 500 }};"
        ));
        // Writes to their own database only for people, never for agents (10).
        add(format!(
            "permit (principal in Group::\"team{team}\", action == Action::\"run_query\", resource == Tool::\"run_query\") \
             when {{ context.target == \"db{team}\" && !(context has actor) && [\"insert\", \"update\"].contains(context.query.kind) && context.query.has_where }};"
        ));
        // Their API routes: reads (10), and writes after a person's approval of the exact call (10).
        add(format!(
            "permit (principal in Group::\"team{team}\", action == Action::\"call_api\", resource == Tool::\"call_api\") \
             when {{ context.route == \"api{team}\" && context.method == \"GET\" }};"
        ));
        add(format!(
            "@step_up\npermit (principal in Group::\"team{team}\", action == Action::\"call_api\", resource == Tool::\"call_api\") \
             when {{ context.route == \"api{team}\" && [\"POST\", \"PUT\"].contains(context.method) && context.path like \"/v1/*\" }};"
        ));
        // Their roles, for a working day at most, with a ticket when an agent asks (10 + 10).
        add(format!(
            "permit (principal in Group::\"team{team}\", action == Action::\"request_access\", resource == Tool::\"request_access\") \
             when {{ context.target == \"db{team}\" && context.ttl_seconds <= 28800 }};"
        ));
        add(format!(
            "forbid (principal, action == Action::\"request_access\", resource) \
             when {{ context has actor && context.target == \"db{team}\" && context.ticket == \"\" }};"
        ));
        // Their payroll tables are nobody's through an agent (10).
        add(format!(
            "forbid (principal, action == Action::\"run_query\", resource) \
             when {{ context has actor && context.query.tables.contains(\"payroll{team}\") }};"
        ));
    }
    // Agents never write SQL; nothing at night but for on-call; no DELETE through the proxy (3).
    add("forbid (principal, action == Action::\"run_query\", resource) when { context has actor && context.query.kind != \"select\" };".into());
    add(format!(
        "forbid (principal, action in {TOOLS}, resource) when {{ context.hour < 6 }} unless {{ principal in Group::\"oncall\" }};"
    ));
    add("forbid (principal, action == Action::\"call_api\", resource) when { context.method == \"DELETE\" };".into());
    // Blocked agents, named in the act chain (23).
    for agent in 0..23 {
        add(format!(
            "forbid (principal, action in {TOOLS}, resource) when {{ context.actors.contains(\"agent:blocked{agent}\") }};"
        ));
    }
    assert_eq!(n, 100, "the mix holds {n} policies");
    text
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let threads: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let policies = Arc::new(Policies::parse(&policies()).unwrap());
    println!("100 policies, {threads} thread(s), {seconds} s; each call with arguments of its own");
    let started = Instant::now();
    let duration = Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let policies = policies.clone();
            std::thread::spawn(move || work(&policies, thread, started, duration))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut allowed = 0;
    for worker in workers {
        let (mine, allows) = worker.join().unwrap();
        latencies.extend(mine);
        allowed += allows;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "decide_tool {:>9.0} decisions/s  p50 {:>6.1} µs  p99 {:>6.1} µs  ({} decisions, {:.0} % allowed)",
        latencies.len() as f64 / elapsed,
        pick(0.5),
        pick(0.99),
        latencies.len(),
        100.0 * allowed as f64 / latencies.len() as f64
    );
}

fn work(
    policies: &Policies,
    thread: usize,
    started: Instant,
    duration: Duration,
) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::new();
    let mut allowed = 0;
    let mut n: u64 = thread as u64 * 1_000_000_007;
    let people: Vec<Principal> = (0..TEAMS)
        .map(|team| Principal::User {
            id: format!("u{team}"),
            name: format!("user{team}"),
            groups: vec!["dev".into(), format!("team{team}")],
        })
        .collect();
    let kinds = [
        QueryKind::Select,
        QueryKind::Select,
        QueryKind::Select,
        QueryKind::Update,
        QueryKind::Delete,
    ];
    while started.elapsed() < duration {
        n += 1;
        let team = (n % TEAMS as u64) as usize;
        let principal = &people[team];
        let actors: Vec<String> = if n % 2 == 0 {
            vec![format!("agent:helper{}", n % 7)]
        } else {
            Vec::new()
        };
        let digest = format!("{n:064x}");
        let grant_id = format!("g-{n}");
        let target = format!("db{}", (n / 3) % TEAMS as u64);
        let route = format!("api{}", (n / 5) % TEAMS as u64);
        let path = format!("/v1/items/{n}");
        let reason = format!("ticket work {n}");
        let ticket = if n % 3 == 0 {
            String::new()
        } else {
            format!("T-{n}")
        };
        let shape = QueryShape {
            kind: kinds[(n % 5) as usize],
            tables: BTreeSet::from([format!("orders{team}"), format!("payroll{}", n % 13)]),
            has_where: n % 4 != 0,
        };
        let args = match n % 8 {
            0 | 1 | 2 => ToolArgs::RunQuery {
                grant_id: &grant_id,
                target: &target,
                role: "reader",
                query: &shape,
                max_rows: 100 + n % 900,
            },
            3 | 4 => ToolArgs::CallApi {
                route: &route,
                method: ["GET", "POST", "DELETE", "GET"][(n % 4) as usize],
                path: &path,
                has_query: n % 2 == 0,
                has_body: n % 3 == 0,
            },
            5 => ToolArgs::RequestAccess {
                target: &target,
                role: "reader",
                reason: &reason,
                ttl_seconds: 600 * (n % 60),
                ticket: &ticket,
            },
            6 => ToolArgs::AccessStatus {
                request_id: &grant_id,
            },
            _ => ToolArgs::ListAccess,
        };
        let input = ToolInput {
            principal,
            actors: &actors,
            args_sha256: &digest,
            hour: (n % 24) as u8,
            args,
        };
        let t = Instant::now();
        let decision = policies.decide_tool(&input).unwrap();
        latencies.push(t.elapsed());
        if decision.allows() {
            allowed += 1;
        }
    }
    (latencies, allowed)
}
