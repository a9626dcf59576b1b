//! `loadgen sweep`: runs the scenario at rising rates and reports the highest rate that kept
//! delivery p99 under a bound with zero loss (every step a full, verified run). Each step's
//! `result.json` and `report.md` go to `results/<name>/rate-<R>/`, the table to
//! `results/<name>/sweep.json` and `sweep.md`.
//!
//! On a shared machine one scheduling hiccup of ~100 ms in a 10 s step is enough to push the
//! delivery p99 over a 10 ms bound (at 60k deliveries/s it delays ~1 % of them), so a sweep that
//! stops at its first failing step finds where a hiccup happened to land, not where the server
//! runs out. With `retries` a step that failed *only* on its p99 is run again before the sweep
//! stops, and passes if a retry passes; a step that lost, duplicated or reordered anything is
//! never retried. Every attempt's p99 is kept in the step (`attempts_p99_ms`).

use crate::coordinator::{self, RunOptions};
use crate::report::RunResult;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// How the rate rises.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Explicit rates; when empty: `start`, then ×`factor` (or +`step`) up to `max`.
    pub rates: Vec<f64>,
    pub start: f64,
    pub factor: f64,
    pub step: Option<f64>,
    pub max: f64,
    /// Delivery p99 bound in milliseconds.
    pub p99_ms: f64,
    /// Run every rate even after a failing one.
    pub keep_going: bool,
    /// How many times a step that failed only on its p99 is run again before it counts as
    /// failed.
    pub retries: u32,
}

impl Plan {
    pub fn rates(&self) -> Vec<f64> {
        if !self.rates.is_empty() {
            return self.rates.clone();
        }
        let mut out = Vec::new();
        let mut r = self.start;
        while r <= self.max + 1e-9 && out.len() < 1000 {
            out.push(r.round());
            r = match self.step {
                Some(s) if s > 0.0 => r + s,
                _ => r * self.factor.max(1.01),
            };
        }
        out
    }
}

/// One rate of a sweep, as `sweep.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// Messages per second offered.
    pub rate: f64,
    /// Sent and delivered per second, as measured.
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    /// Delivery latency from the intended send time, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Receptions lost, and every verification problem of the run.
    pub lost: u64,
    pub problems: Vec<String>,
    /// Whether the load generator was the bottleneck, and the cores it used.
    pub loadgen_bound: bool,
    pub loadgen_cores: f64,
    pub server_cpu_us_per_delivered: Option<f64>,
    /// Zero loss and p99 within the target.
    pub pass: bool,
    /// Delivery p99 of every attempt at this rate, in order (more than one when a step that
    /// failed on its p99 was retried); the other fields are the last attempt's.
    #[serde(default)]
    pub attempts_p99_ms: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepResult {
    pub name: String,
    pub p99_bound_ms: f64,
    /// Highest passing rate below the first failing one.
    pub best_rate: Option<f64>,
    /// Whether the load generator was the bottleneck at the best rate or at the first failing
    /// one (then the limit found is the load generator's, not necessarily the server's).
    pub best_loadgen_bound: bool,
    pub steps: Vec<Step>,
}

/// Runs the sweep; `opts.scenario.name` names the sweep.
pub async fn sweep(opts: &RunOptions, plan: &Plan) -> Result<SweepResult, String> {
    let name = if opts.scenario.name.is_empty() {
        "sweep".to_string()
    } else {
        opts.scenario.name.clone()
    };
    let dir = opts.results_dir.join(&name);
    let mut steps = Vec::new();
    let mut best = None;
    let mut best_bound = false;
    let mut failed = false;
    for rate in plan.rates() {
        let mut o = opts.clone();
        o.scenario.rate = rate;
        o.scenario.name = format!("rate-{rate}");
        o.results_dir = dir.clone();
        o.plots = false;
        let mut attempts_p99_ms = Vec::new();
        let (r, pass) = loop {
            if !attempts_p99_ms.is_empty() {
                o.scenario.name = format!("rate-{rate}-try-{}", attempts_p99_ms.len() + 1);
            }
            let r: RunResult = coordinator::run(&o).await?;
            let d = &r.latency.delivery;
            let pass = r.verdict.ok && d.p99_ms <= plan.p99_ms;
            attempts_p99_ms.push(d.p99_ms);
            eprintln!(
                "sweep {rate:>9} msg/s: sent {:>9.0}/s p99 {:>9.3} ms lost {:>6} {}{}",
                r.throughput.sent_per_s,
                d.p99_ms,
                r.counters.lost,
                if pass { "pass" } else { "FAIL" },
                if r.loadgen.bottleneck {
                    " (loadgen-bound)"
                } else {
                    ""
                }
            );
            // Only a p99 miss is worth another try: a lost or duplicated message is a bug.
            let retry = !pass && r.verdict.ok && attempts_p99_ms.len() <= plan.retries as usize;
            if !retry {
                break (r, pass);
            }
            eprintln!("sweep {rate:>9} msg/s: p99 over the bound only; running the step again");
        };
        let d = &r.latency.delivery;
        steps.push(Step {
            rate,
            sent_per_s: r.throughput.sent_per_s,
            delivered_per_s: r.throughput.delivered_per_s,
            p50_ms: d.p50_ms,
            p99_ms: d.p99_ms,
            max_ms: d.max_ms,
            lost: r.counters.lost,
            problems: r.verdict.problems.clone(),
            loadgen_bound: r.loadgen.bottleneck,
            loadgen_cores: r.loadgen.cpu_cores,
            server_cpu_us_per_delivered: r.server_cpu_us_per_delivered,
            pass,
            attempts_p99_ms,
        });
        if pass && !failed {
            best = Some(rate);
            best_bound = r.loadgen.bottleneck;
        }
        if !pass {
            if !failed {
                best_bound |= r.loadgen.bottleneck;
            }
            failed = true;
            if !plan.keep_going {
                break;
            }
        }
    }
    let result = SweepResult {
        name,
        p99_bound_ms: plan.p99_ms,
        best_rate: best,
        best_loadgen_bound: best_bound,
        steps,
    };
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("sweep.json"),
        serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("sweep.md"), markdown(&result, &opts.command_line))
        .map_err(|e| e.to_string())?;
    Ok(result)
}

pub fn markdown(r: &SweepResult, command_line: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {} (sweep)\n", r.name);
    let _ = writeln!(s, "```\n{command_line}\n```\n");
    let _ = writeln!(
        s,
        "Highest rate with delivery p99 ≤ {} ms and zero loss: **{}**{}\n",
        r.p99_bound_ms,
        r.best_rate
            .map_or("none".to_string(), |b| format!("{b} msg/s")),
        if r.best_loadgen_bound {
            " (the load generator was the bottleneck at it or at the first failing rate: the limit found is the load generator's on this machine, not necessarily the server's)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "| target msg/s | sent/s | delivered/s | p50 ms | p99 ms | max ms | lost | loadgen cores | loadgen-bound | server µs/delivered | result |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"
    );
    for st in &r.steps {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.2} | {} | {} | {} |",
            st.rate,
            st.sent_per_s,
            st.delivered_per_s,
            st.p50_ms,
            st.p99_ms,
            st.max_ms,
            st.lost,
            st.loadgen_cores,
            if st.loadgen_bound { "yes" } else { "no" },
            st.server_cpu_us_per_delivered
                .map_or("n/a".into(), |v| format!("{v:.2}")),
            verdict(st)
        );
    }
    s
}

/// A step's result column: pass/FAIL, what failed, and the earlier attempts' p99 if retried.
fn verdict(st: &Step) -> String {
    let mut v = if st.pass {
        "pass".to_string()
    } else if st.problems.is_empty() {
        "FAIL p99".to_string()
    } else {
        format!("FAIL {}", st.problems.join(", "))
    };
    if let Some((_, earlier)) = st
        .attempts_p99_ms
        .split_last()
        .filter(|(_, e)| !e.is_empty())
    {
        let ms: Vec<String> = earlier.iter().map(|p| format!("{p:.1}")).collect();
        let _ = write!(
            v,
            " (attempt {}; earlier p99 {} ms)",
            st.attempts_p99_ms.len(),
            ms.join(", ")
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_plans() {
        let p = Plan {
            rates: vec![],
            start: 1000.0,
            factor: 2.0,
            step: None,
            max: 8000.0,
            p99_ms: 10.0,
            keep_going: false,
            retries: 0,
        };
        assert_eq!(p.rates(), vec![1000.0, 2000.0, 4000.0, 8000.0]);
        let q = Plan {
            step: Some(500.0),
            max: 2000.0,
            ..p.clone()
        };
        assert_eq!(q.rates(), vec![1000.0, 1500.0, 2000.0]);
    }
}
