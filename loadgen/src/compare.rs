//! `loadgen compare A/result.json B/result.json`: the headline figures of two runs side by
//! side, with the ratio B / A (for latencies and CPU, below 1 is better; for rates, above).

use crate::report::RunResult;
use std::fmt::Write as _;
use std::path::Path;

/// The comparison as a Markdown table.
pub fn compare(a_path: &Path, b_path: &Path) -> Result<String, String> {
    let a = RunResult::load(a_path)?;
    let b = RunResult::load(b_path)?;
    Ok(table(
        &a,
        &b,
        &a_path.display().to_string(),
        &b_path.display().to_string(),
    ))
}

pub fn table(a: &RunResult, b: &RunResult, a_name: &str, b_name: &str) -> String {
    type Get = fn(&RunResult) -> Option<f64>;
    let rows: &[(&str, Get)] = &[
        ("target send rate (msg/s)", |r| {
            Some(r.throughput.target_send_per_s)
        }),
        ("sent (msg/s)", |r| Some(r.throughput.sent_per_s)),
        ("delivered (receptions/s)", |r| {
            Some(r.throughput.delivered_per_s)
        }),
        ("delivery p50 (ms)", |r| Some(r.latency.delivery.p50_ms)),
        ("delivery p90 (ms)", |r| Some(r.latency.delivery.p90_ms)),
        ("delivery p99 (ms)", |r| Some(r.latency.delivery.p99_ms)),
        ("delivery p99.9 (ms)", |r| Some(r.latency.delivery.p99_9_ms)),
        ("delivery p99.99 (ms)", |r| {
            Some(r.latency.delivery.p99_99_ms)
        }),
        ("delivery max (ms)", |r| Some(r.latency.delivery.max_ms)),
        ("ack p50 (ms)", |r| Some(r.latency.ack.p50_ms)),
        ("ack p99 (ms)", |r| Some(r.latency.ack.p99_ms)),
        ("ack max (ms)", |r| Some(r.latency.ack.max_ms)),
        ("persistence p50 (ms)", |r| {
            r.latency.persist.as_ref().map(|p| p.p50_ms)
        }),
        ("persistence p99 (ms)", |r| {
            r.latency.persist.as_ref().map(|p| p.p99_ms)
        }),
        ("lost", |r| Some(r.counters.lost as f64)),
        ("duplicated", |r| Some(r.counters.duplicated as f64)),
        ("reordered", |r| Some(r.counters.reordered as f64)),
        ("unacked", |r| Some(r.counters.unacked as f64)),
        ("send errors", |r| Some(r.counters.send_errors as f64)),
        ("server CPU (s)", |r| r.server_cpu_seconds),
        ("server CPU per delivered (µs)", |r| {
            r.server_cpu_us_per_delivered
        }),
        ("loadgen CPU (cores)", |r| Some(r.loadgen.cpu_cores)),
        ("loadgen send lag p99 (ms)", |r| {
            Some(r.loadgen.send_lag_p99_ms)
        }),
    ];
    let mut s = String::new();
    let _ = writeln!(s, "A: {a_name} ({})", a.name);
    let _ = writeln!(s, "B: {b_name} ({})\n", b.name);
    let _ = writeln!(
        s,
        "| metric | A | B | B / A |\n| --- | ---: | ---: | ---: |"
    );
    let fmt = |v: Option<f64>| match v {
        None => "n/a".to_string(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
    };
    for (name, get) in rows {
        let (x, y) = (get(a), get(b));
        let ratio = match (x, y) {
            (Some(x), Some(y)) if x != 0.0 => format!("{:.2}", y / x),
            (Some(x), Some(y)) if x == y => "=".into(),
            _ => "-".into(),
        };
        let _ = writeln!(s, "| {name} | {} | {} | {ratio} |", fmt(x), fmt(y));
    }
    let verdict = |r: &RunResult| {
        if r.verdict.ok {
            "ok".to_string()
        } else {
            format!("FAILED ({})", r.verdict.problems.join(", "))
        }
    };
    let _ = writeln!(s, "| verdict | {} | {} | |", verdict(a), verdict(b));
    let bn = |r: &RunResult| if r.loadgen.bottleneck { "yes" } else { "no" };
    let _ = writeln!(s, "| loadgen-bound | {} | {} | |", bn(a), bn(b));
    s
}
