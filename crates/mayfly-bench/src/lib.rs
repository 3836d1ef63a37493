//! Mayfly's benchmarks, a crate of their own so that nothing depends upward: each is an example
//! of this crate (`examples/*_bench.rs`, built and run in release, see BENCHMARKS.md) that starts
//! a real broker through `mayfly-testkit`. This library is what they share: the rate and latency
//! percentiles of a timed run, from the examples' own clients or from `wrk` in a process of its
//! own.

use std::time::{Duration, Instant};

/// How the calls of a benchmark differ from one another.
///
/// The broker keeps each Cedar decision by its complete input (principal, target, role, and the
/// context with the request's reason and ticket), so identical calls are decided once and then
/// answered from that cache. Real requests carry reasons and tickets of their own; so do the
/// benchmarks' calls unless asked otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calls {
    /// Every call with a reason and a ticket of its own (the default): each is decided afresh.
    Distinct,
    /// Every call the same (`--same-reason`: reason `bench`, no ticket): every decision after
    /// the first comes from the broker's decision cache.
    Same,
}

impl Calls {
    /// The flag that asks for [`Calls::Same`].
    pub const SAME_FLAG: &'static str = "--same-reason";

    /// Reads the flag, and removes it from `args` so the positional arguments stay in place.
    pub fn from_args(args: &mut Vec<String>) -> Calls {
        let same = args.iter().any(|a| a == Calls::SAME_FLAG);
        args.retain(|a| a != Calls::SAME_FLAG);
        if same { Calls::Same } else { Calls::Distinct }
    }

    /// What the run's output says about its calls.
    pub fn describe(self) -> &'static str {
        match self {
            Calls::Distinct => {
                "calls: each with its own reason and ticket (every Cedar decision made afresh)"
            }
            Calls::Same => {
                "calls: all identical, --same-reason (Cedar decisions after the first come from the broker's cache)"
            }
        }
    }

    /// The `reason` and `ticket` fields of a request body for the call named `id` (unique within
    /// the run, e.g. `CLIENT-N`, or [`CALL_ID`] in a template for `wrk`); for [`Calls::Same`]
    /// the reason `bench` and no ticket, whatever `id`.
    pub fn fields(self, id: &str) -> Vec<(&'static str, String)> {
        match self {
            Calls::Distinct => vec![
                ("reason", format!("bench call {id}")),
                ("ticket", format!("BENCH-{id}")),
            ],
            Calls::Same => vec![("reason", "bench".to_owned())],
        }
    }
}

/// In a [`WrkLoad`]'s body, a text that `wrk` replaces in every request with an id of the
/// request's own (its thread's number and a counter: `1-1`, `1-2`, …).
pub const CALL_ID: &str = "@call-id@";

/// One run's figures.
#[derive(Debug)]
pub struct Run {
    pub n: usize,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Waits for the clients (each returns the latencies of its calls) and sums them up.
#[expect(
    clippy::unwrap_used,
    reason = "a client that panicked ends the run loudly: its figures would be wrong"
)]
pub async fn gather(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>, started: Instant) -> Run {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Run {
        n: latencies.len(),
        per_second: latencies.len() as f64 / elapsed,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    }
}

/// One request that `wrk` sends over and over.
pub struct WrkLoad<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// Header name and value; the value may be a secret (a bench's own token).
    pub header: (&'a str, &'a str),
    /// A JSON body. Every [`CALL_ID`] in it is replaced in each request by an id of that
    /// request's own, so no two requests carry the same body.
    pub body: &'a str,
}

/// Runs `wrk` (Debian's package `wrk`) with `clients` connections on one thread for `seconds`,
/// in a process of its own, and reads its rate and latency percentiles. Any answer other than a
/// 2xx, and any socket error, is an error: the figures would not be of the work asked for.
pub fn wrk(load: &WrkLoad<'_>, clients: usize, seconds: u64) -> Result<Run, String> {
    // The script is a temporary file of this user's only (0600): the header may be a token.
    let mut script = tempfile::Builder::new()
        .suffix(".lua")
        .tempfile()
        .map_err(|e| format!("no temporary file for wrk's script: {e}"))?;
    let text = wrk_script(load)?;
    std::io::Write::write_all(&mut script, text.as_bytes())
        .map_err(|e| format!("could not write wrk's script: {e}"))?;
    let output = std::process::Command::new("wrk")
        .args(["-t", "1", "-c", &clients.to_string(), "-d"])
        .arg(format!("{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script.path())
        .arg(load.url)
        .output()
        .map_err(|e| format!("could not run wrk ({e}): install it with `apt-get install wrk`"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // A Lua error quotes the script, and the script holds the header's value.
        let report = format!("{text}{}", String::from_utf8_lossy(&output.stderr));
        let report = match load.header.1 {
            "" => report,
            value => report.replace(value, "[the header's value]"),
        };
        return Err(format!("wrk failed: {report}"));
    }
    parse_wrk(&text)
}

/// `wrk`'s Lua script for `load`. A body without [`CALL_ID`] is sent as it is; otherwise each
/// request's body is built by `request()`, the marker replaced by the thread's number (given by
/// `setup`) and a counter of that thread's requests.
fn wrk_script(load: &WrkLoad<'_>) -> Result<String, String> {
    // The body's pieces go into long strings `[==[…]==]`, the rest into quoted strings.
    if load.body.contains("]==")
        || load.body.contains(['\n', '\r'])
        || [load.method, load.header.0, load.header.1]
            .iter()
            .any(|t| t.contains(['"', '\\', '\n', '\r']))
    {
        return Err("the request cannot be written into wrk's Lua script".into());
    }
    let mut text = format!(
        "wrk.method = \"{}\"\nwrk.headers[\"{}\"] = \"{}\"\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n",
        load.method, load.header.0, load.header.1
    );
    if !load.body.contains(CALL_ID) {
        text.push_str(&format!("wrk.body = [==[{}]==]\n", load.body));
        return Ok(text);
    }
    let pieces: Vec<String> = load
        .body
        .split(CALL_ID)
        .map(|piece| format!("[==[{piece}]==]"))
        .collect();
    text.push_str(&format!(
        "local pieces = {{ {} }}\n\
         local threads = 0\n\
         function setup(thread)\n  threads = threads + 1\n  thread:set(\"id\", threads)\nend\n\
         local counter = 0\n\
         function request()\n  counter = counter + 1\n\
         \x20 local body = table.concat(pieces, (id or 0) .. \"-\" .. counter)\n\
         \x20 return wrk.format(nil, nil, nil, body)\nend\n",
        pieces.join(", ")
    ));
    Ok(text)
}

/// The figures of `wrk --latency`'s report.
fn parse_wrk(text: &str) -> Result<Run, String> {
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
    {
        return Err(format!("wrk got answers that are not 2xx: {}", line.trim()));
    }
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors:")) {
        return Err(format!("wrk saw socket errors: {}", line.trim()));
    }
    let percentile = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| duration_ms(v.trim()))
            .ok_or_else(|| format!("no {label} latency in wrk's report: {text}"))
    };
    let n = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse::<usize>().ok())
        .ok_or_else(|| format!("no request count in wrk's report: {text}"))?;
    let per_second = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no rate in wrk's report: {text}"))?;
    Ok(Run {
        n,
        per_second,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
    })
}

/// `wrk`'s durations: `812.00us`, `3.01ms`, `1.20s`.
fn duration_ms(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// CPU time this process has used so far (user + system), from `/proc/self/stat`; zero where
/// there is none. The difference over a run, divided by its calls, is the CPU a call costs here —
/// steadier on a shared VM than a rate, which also counts time spent waiting for a CPU.
pub fn process_cpu() -> Duration {
    // utime and stime: fields 14 and 15 of the line.
    stat_cpu(14)
}

/// CPU time of this process's finished children (`wrk`), from the same line (cutime and cstime,
/// fields 16 and 17).
pub fn children_cpu() -> Duration {
    stat_cpu(16)
}

/// The sum of field `first` and the next of `/proc/self/stat` (numbered from 1, as in proc(5)),
/// clock ticks of 10 ms.
fn stat_cpu(first: usize) -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (field 2, in parentheses, may hold spaces) start at field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |field: usize| {
        field
            .checked_sub(3)
            .and_then(|i| fields.get(i))
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(first) + ticks(first + 1)) * 10)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "tests: a failed step should stop the test loudly"
)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let report = "Running 10s test @ http://127.0.0.1:1/v1/certificates\n  1 threads and 16 connections\n  Latency Distribution\n     50%  812.00us\n     75%    3.50ms\n     99%    1.20s\n  45527 requests in 10.00s, 46.12MB read\nRequests/sec:   4552.81\nTransfer/sec:      4.61MB\n";
        let run = parse_wrk(report).unwrap();
        assert_eq!(run.n, 45527);
        assert!((run.per_second - 4552.81).abs() < 1e-9);
        assert!((run.p50_ms - 0.812).abs() < 1e-9);
        assert!((run.p99_ms - 1200.0).abs() < 1e-9);
        let refused = report.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 3\nRequests/sec",
        );
        assert!(parse_wrk(&refused).unwrap_err().contains("not 2xx"));
    }

    #[test]
    fn wrk_script_gives_each_request_its_own_body() {
        let mut load = WrkLoad {
            method: "POST",
            url: "http://127.0.0.1:1/v1/certificates",
            header: ("authorization", "Bearer t"),
            body: r#"{"reason":"bench"}"#,
        };
        let fixed = wrk_script(&load).unwrap();
        assert!(fixed.contains(r#"wrk.body = [==[{"reason":"bench"}]==]"#));
        assert!(!fixed.contains("function request"));
        let body = format!(r#"{{"reason":"bench call {CALL_ID}","ticket":"BENCH-{CALL_ID}"}}"#);
        load.body = &body;
        let varied = wrk_script(&load).unwrap();
        assert!(varied.contains(
            r#"local pieces = { [==[{"reason":"bench call ]==], [==[","ticket":"BENCH-]==], [==["}]==] }"#
        ));
        assert!(varied.contains("function request()"));
        assert!(varied.contains(r#"thread:set("id", threads)"#));
        assert!(!varied.contains("wrk.body"));
        load.body = "]==]";
        assert!(wrk_script(&load).is_err());
    }

    #[test]
    fn distinct_calls_have_their_own_reason_and_ticket() {
        let mut args: Vec<String> = ["bench", "--same-reason", "16"].map(String::from).to_vec();
        assert_eq!(Calls::from_args(&mut args), Calls::Same);
        assert_eq!(args, ["bench", "16"]);
        assert_eq!(Calls::from_args(&mut args), Calls::Distinct);
        assert_ne!(Calls::Distinct.fields("1-1"), Calls::Distinct.fields("1-2"));
        assert_eq!(Calls::Same.fields("1-1"), Calls::Same.fields("1-2"));
    }
}
