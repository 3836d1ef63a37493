//! What the benchmark examples share: the rate and latency percentiles of a timed run, from the
//! examples' own clients or from `wrk` in a process of its own.

use std::time::{Duration, Instant};

/// One run's figures.
#[derive(Debug)]
pub struct Run {
    pub n: usize,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Waits for the clients (each returns the latencies of its calls) and sums them up.
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
    /// A JSON body.
    pub body: &'a str,
}

/// Runs `wrk` (Debian's package `wrk`) with `clients` connections on one thread for `seconds`,
/// in a process of its own, and reads its rate and latency percentiles. Any answer other than a
/// 2xx, and any socket error, is an error: the figures would not be of the work asked for.
pub fn wrk(load: &WrkLoad<'_>, clients: usize, seconds: u64) -> Result<Run, String> {
    if load.body.contains("]]")
        || [load.method, load.header.0, load.header.1]
            .iter()
            .any(|t| t.contains(['"', '\\', '\n']))
    {
        return Err("the request cannot be written into wrk's Lua script".into());
    }
    // The script is a temporary file of this user's only (0600): the header may be a token.
    let mut script = tempfile::Builder::new()
        .suffix(".lua")
        .tempfile()
        .map_err(|e| format!("no temporary file for wrk's script: {e}"))?;
    let text = format!(
        "wrk.method = \"{}\"\nwrk.body = [[{}]]\nwrk.headers[\"{}\"] = \"{}\"\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n",
        load.method, load.body, load.header.0, load.header.1
    );
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
}
