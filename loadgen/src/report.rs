//! The result of a run as files in `results/<name>/`: `result.json` (everything, machine
//! readable; `compare` and `sweep` read it), `report.md` (for people), `scenario.toml` (to
//! rerun it) and the SVG plots.

use crate::cpu::ServerCpu;
use crate::machine::{Commit, Machine, Versions};
use crate::scenario::Scenario;
use crate::stats::{Counters, HistsWire, Percentiles};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub name: String,
    pub command_line: String,
    /// Start of the run, seconds since the Unix epoch.
    pub started_at_unix: u64,
    pub commit: Commit,
    pub machine: Machine,
    pub versions: Versions,
    pub scenario: Scenario,
    /// `in-process`, or the agents' addresses.
    pub agents: Vec<AgentSummary>,
    pub counters: Counters,
    pub throughput: Throughput,
    pub latency: Latencies,
    pub servers: Vec<ServerCpu>,
    /// Sum over nodes of CPU seconds during the run (None if a node's `/metrics` failed).
    pub server_cpu_seconds: Option<f64>,
    /// Server CPU microseconds per delivered message (each reception counts once).
    pub server_cpu_us_per_delivered: Option<f64>,
    /// CPU seconds of the scenario's `redis_pid` over the run, and per delivered message.
    #[serde(default)]
    pub redis_cpu_seconds: Option<f64>,
    #[serde(default)]
    pub redis_cpu_us_per_delivered: Option<f64>,
    pub loadgen: LoadgenHealth,
    pub verdict: Verdict,
    /// One entry per second from the common start (warm-up and drain included).
    pub series: Vec<SecondPoint>,
    /// The merged histograms (V2 + DEFLATE, base64), to recompute any percentile.
    pub histograms: HistsWire,
    /// Every ack received, when the scenario asks for them (`record_acks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acks: Vec<AckRecord>,
    /// The kernel's floor for the same deliveries, measured after the run (`floor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<crate::floor::Floor>,
    /// Server CPU per delivery / the floor's CPU per frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_vs_floor: Option<f64>,
    /// The v1.1 mix (presence churn, typing, read pointers), when the scenario has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub social: Option<crate::social::SocialResult>,
}

/// One `ack`: the message `cid` is durable as (`room`, `seq`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    pub room: String,
    pub seq: u64,
    pub cid: String,
    /// The message was answered `unavailable` at least once before this ack (re-sent with
    /// its cid): its ack may come after later messages' acks, with the seq it got first.
    #[serde(default)]
    pub refused: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSummary {
    pub agent: String,
    pub connections: u64,
    pub setup_seconds: f64,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    pub thread_utilization: Vec<f64>,
    pub first_error: Option<String>,
}

/// Rates over the measured window (warm-up excluded).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Throughput {
    pub target_send_per_s: f64,
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    pub acked_per_s: f64,
}

/// Percentiles in milliseconds, all measured from the intended send time.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Latencies {
    pub delivery: Percentiles,
    pub ack: Percentiles,
    pub persist: Option<Percentiles>,
    /// How late the load generator itself wrote messages.
    pub send_lag: Percentiles,
}

/// Whether the load generator, not the server, limited the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadgenHealth {
    pub cpu_seconds: f64,
    /// CPU seconds / wall seconds, summed over agents (cores in use).
    pub cpu_cores: f64,
    pub max_thread_utilization: f64,
    pub send_lag_p99_ms: f64,
    /// Share of the whole machine's CPU busy during the run (`/proc/stat`, tick-sampled).
    pub machine_busy: Option<f64>,
    /// Share of the run during which some task on this machine waited for a CPU
    /// (`/proc/pressure/cpu`): load generator and servers competing for cores.
    pub cpu_pressure: Option<f64>,
    /// True when the load generator was likely the bottleneck (see `notes`).
    pub bottleneck: bool,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Verdict {
    pub ok: bool,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SecondPoint {
    pub second: u64,
    pub phase: String,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A thread this busy is taken as saturated.
pub const THREAD_BUSY: f64 = 0.85;
/// CPU pressure above this share of the run is reported as contention.
pub const CPU_PRESSURE: f64 = 0.10;
/// Send lag p99 above this (ms) means the schedule was not kept.
pub const SEND_LAG_P99_MS: f64 = 5.0;

impl RunResult {
    pub fn load(path: &Path) -> Result<RunResult, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes result.json, report.md, scenario.toml and (with `plots`) the SVGs into `dir`.
    pub fn write(&self, dir: &Path, plots: bool) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let put = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text)
                .map_err(|e| format!("{}/{name}: {e}", dir.display()))
        };
        put(
            "result.json",
            &serde_json::to_string_pretty(self).map_err(|e| e.to_string())?,
        )?;
        put("scenario.toml", &self.scenario.to_toml())?;
        if plots {
            crate::plot::write_all(self, dir)?;
        }
        put("report.md", &self.markdown(plots))?;
        Ok(())
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let d = &self.latency.delivery;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: target {:.0} msg/s, sent {:.0} msg/s, delivered {:.0} msg/s ({} conns, {} rooms x {} members, {} senders)",
            self.name,
            self.throughput.target_send_per_s,
            self.throughput.sent_per_s,
            self.throughput.delivered_per_s,
            c.connected,
            self.scenario.rooms,
            self.scenario.members,
            self.scenario.senders
        );
        let _ = writeln!(
            s,
            "delivery latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}",
            d.p50_ms, d.p90_ms, d.p99_ms, d.p99_9_ms, d.p99_99_ms, d.max_ms
        );
        let a = &self.latency.ack;
        let _ = writeln!(
            s,
            "ack latency ms:      p50 {:.3}  p99 {:.3}  max {:.3}",
            a.p50_ms, a.p99_ms, a.max_ms
        );
        if let Some(p) = &self.latency.persist {
            let _ = writeln!(
                s,
                "persist latency ms:  p50 {:.3}  p99 {:.3}  max {:.3}  ({} sampled, {} missing)",
                p.p50_ms, p.p99_ms, p.max_ms, c.persist_sampled, c.persist_missing
            );
        }
        let _ = writeln!(
            s,
            "sent {} acked {} errors {} | delivered {} of {} expected | lost {} dup {} reordered {} unacked {}",
            c.sent, c.acked, c.send_errors, c.delivered, c.expected_deliveries, c.lost, c.duplicated, c.reordered, c.unacked
        );
        let l = &self.loadgen;
        let _ = writeln!(
            s,
            "loadgen: {:.2} cores, busiest thread {:.0}%, send lag p99 {:.3} ms{}{}",
            l.cpu_cores,
            l.max_thread_utilization * 100.0,
            l.send_lag_p99_ms,
            l.cpu_pressure
                .map(|b| format!(", CPU pressure {:.0}%", b * 100.0))
                .unwrap_or_default(),
            if l.bottleneck {
                "  << LOADGEN-BOUND"
            } else {
                ""
            }
        );
        for n in &l.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        let _ = writeln!(
            s,
            "server CPU: {} s{}",
            self.server_cpu_seconds
                .map_or("n/a".into(), |v| format!("{v:.2}")),
            self.server_cpu_us_per_delivered
                .map(|v| format!(", {v:.2} us per delivered message"))
                .unwrap_or_default()
        );
        if let Some(us) = self.redis_cpu_us_per_delivered {
            let _ = writeln!(s, "Redis CPU: {us:.2} us per delivered message");
        }
        if let Some(f) = &self.floor {
            let _ = writeln!(s, "{}", floor_line(f, self.server_cpu_vs_floor));
        }
        if let Some(x) = &self.social {
            s.push_str(&x.summary());
        }
        s
    }

    pub fn markdown(&self, plots: bool) -> String {
        let mut s = String::new();
        let sc = &self.scenario;
        let c = &self.counters;
        let _ = writeln!(s, "# {}\n", self.name);
        let verdict = if self.verdict.ok {
            "**OK**: every message reached every receiver exactly once, in order.".to_string()
        } else {
            format!("**FAILED**: {}.", self.verdict.problems.join(", "))
        };
        let _ = writeln!(s, "{verdict}\n");
        if self.loadgen.bottleneck {
            let _ = writeln!(
                s,
                "**The load generator was the bottleneck** ({}); the server may do better.\n",
                self.loadgen.notes.join("; ")
            );
        }
        let _ = writeln!(s, "```\n{}\n```\n", self.command_line);
        let _ = writeln!(s, "## Scenario\n");
        let _ = writeln!(s, "| | |\n| --- | --- |");
        let _ = writeln!(s, "| servers | {} |", sc.urls.join(", "));
        let _ = writeln!(
            s,
            "| connections | {} ({} rooms × {} members, {} senders) |",
            sc.connection_count(),
            sc.rooms,
            sc.members,
            sc.senders
        );
        let _ = writeln!(
            s,
            "| target rate | {} msg/s, {} B bodies, {:.0}% DMs |",
            sc.rate,
            sc.body,
            sc.dm_share * 100.0
        );
        let _ = writeln!(
            s,
            "| time | {} s warm-up + {} s measured |",
            sc.warmup, sc.duration
        );
        let agents: Vec<&str> = self.agents.iter().map(|a| a.agent.as_str()).collect();
        let _ = writeln!(
            s,
            "| load generator | {} × {} thread(s) |",
            agents.join(", "),
            sc.threads
        );
        let m = &self.machine;
        let _ = writeln!(
            s,
            "| machine | {}, {} cores, {:.1} GiB, {} (kernel {}) |",
            m.cpu_model,
            m.cores,
            m.memory_bytes as f64 / (1u64 << 30) as f64,
            m.os,
            m.kernel
        );
        let _ = writeln!(
            s,
            "| commit | {}{} |\n",
            self.commit.hash.as_deref().unwrap_or("unknown"),
            if self.commit.dirty { " (dirty)" } else { "" }
        );
        let t = &self.throughput;
        let _ = writeln!(s, "## Throughput (measured window)\n");
        let _ = writeln!(
            s,
            "| sent/s | delivered/s | acked/s |\n| ---: | ---: | ---: |\n| {:.0} | {:.0} | {:.0} |\n",
            t.sent_per_s, t.delivered_per_s, t.acked_per_s
        );
        let _ = writeln!(s, "## Latency (ms, from the intended send time)\n");
        let _ = writeln!(
            s,
            "| | count | p50 | p90 | p99 | p99.9 | p99.99 | max |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let mut row = |name: &str, p: &Percentiles| {
            let _ = writeln!(
                s,
                "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p99_9_ms, p.p99_99_ms, p.max_ms
            );
        };
        row("delivery", &self.latency.delivery);
        row("ack", &self.latency.ack);
        if let Some(p) = &self.latency.persist {
            row("persistence (sampled)", p);
        }
        row("send lag (loadgen)", &self.latency.send_lag);
        let _ = writeln!(s, "\n## Verification\n");
        let _ = writeln!(s, "| counter | value |\n| --- | ---: |");
        let fields = serde_json::to_value(c).unwrap_or_default();
        if let Some(obj) = fields.as_object() {
            for (k, v) in obj {
                if v.is_u64() {
                    let _ = writeln!(s, "| {k} | {v} |");
                }
            }
        }
        for (code, n) in &c.send_errors_by_code {
            let _ = writeln!(s, "| error `{code}` | {n} |");
        }
        if let Some(x) = &self.social {
            s.push_str(&x.markdown());
        }
        let _ = writeln!(s, "\n## CPU\n");
        let _ = writeln!(s, "| process | CPU seconds | note |\n| --- | ---: | --- |");
        for sv in &self.servers {
            let _ = writeln!(
                s,
                "| server {} | {} | {} |",
                sv.url,
                sv.cpu_seconds.map_or("n/a".into(), |v| format!("{v:.2}")),
                sv.error.as_deref().unwrap_or("")
            );
        }
        for a in &self.agents {
            let _ = writeln!(
                s,
                "| loadgen {} | {:.2} | threads {} |",
                a.agent,
                a.cpu_seconds,
                a.thread_utilization
                    .iter()
                    .map(|u| format!("{:.0}%", u * 100.0))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let _ = writeln!(
            s,
            "\nServer CPU per delivered message: {}. Send lag p99 {:.3} ms. {}\n",
            self.server_cpu_us_per_delivered
                .map_or("n/a".into(), |v| format!("{v:.2} µs")),
            self.loadgen.send_lag_p99_ms,
            self.loadgen
                .cpu_pressure
                .map(|b| format!(
                    "Some task waited for a CPU during {:.0}% of the run (CPU pressure).",
                    b * 100.0
                ))
                .unwrap_or_default()
        );
        if let Some(f) = &self.floor {
            let _ = writeln!(s, "{}\n", floor_line(f, self.server_cpu_vs_floor));
        }
        for n in &self.loadgen.notes {
            let _ = writeln!(s, "* {n}");
        }
        if plots {
            let _ = writeln!(s, "\n## Plots\n");
            let _ = writeln!(s, "![latency percentile spectrum](latency_spectrum.svg)\n");
            let _ = writeln!(s, "![throughput over time](throughput.svg)\n");
            let _ = writeln!(s, "![latency over time](latency_over_time.svg)");
        }
        s
    }
}

/// The floor in one line: its cost per frame and the server's multiple of it.
fn floor_line(f: &crate::floor::Floor, ratio: Option<f64>) -> String {
    format!(
        "kernel floor: {:.2} us per frame, {:.2} of it the writes ({} conns, {} B frames, {:.0} frames/s, {} per wake-up){}",
        f.us_per_frame,
        f.write_us_per_frame,
        f.conns,
        f.frame,
        f.frames_per_s,
        f.fanout,
        ratio
            .map(|r| format!("; server CPU per delivery = {r:.1}x the floor"))
            .unwrap_or_default()
    )
}
