//! `loadgen run`: splits the scenario into one share per agent (or runs the whole of it
//! in-process), sets every share up, starts them together, shows live progress, scrapes each
//! server node's CPU before and after, merges the agents' histograms and counters exactly and
//! writes the result.

use crate::agent::{write_line, FromAgent, ToAgent};
use crate::client::Target;
use crate::cpu::{self, MachineCpu, ServerCpu};
use crate::engine::{self, AgentReport, Ready, Share};
use crate::machine::{Commit, Machine, Versions};
use crate::report::{
    AgentSummary, Latencies, LoadgenHealth, RunResult, SecondPoint, Throughput, Verdict,
    CPU_PRESSURE, SEND_LAG_P99_MS, THREAD_BUSY,
};
use crate::scenario::Scenario;
use crate::stats::{Counters, Hists, Percentiles, Tick, TickMerger};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// How to run a scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub scenario: Scenario,
    /// `host:port` of each agent; empty: in-process.
    pub agents: Vec<String>,
    /// Results go to `<results_dir>/<scenario.name>/`.
    pub results_dir: PathBuf,
    pub command_line: String,
    pub progress: bool,
    pub plots: bool,
    /// Time between the start command and the common start instant.
    pub start_delay: Duration,
}

enum Event {
    Tick(Tick),
    Done(usize, Result<Box<AgentReport>, String>),
}

/// One agent, local or remote, seen from the coordinator.
struct Link {
    name: String,
    ready: oneshot::Receiver<Result<Ready, String>>,
    start: oneshot::Sender<Duration>,
}

fn local_link(idx: usize, share: Share, events: mpsc::UnboundedSender<Event>) -> Link {
    let (ready_tx, ready) = oneshot::channel();
    let (start, start_rx) = oneshot::channel::<Duration>();
    tokio::spawn(async move {
        let (tick_tx, mut tick_rx) = mpsc::unbounded_channel();
        let ev = events.clone();
        let forward = tokio::spawn(async move {
            while let Some(t) = tick_rx.recv().await {
                let _ = ev.send(Event::Tick(t));
            }
        });
        let prepared = match engine::prepare(share, tick_tx).await {
            Ok(p) => p,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(prepared.ready.clone()));
        let Ok(delay) = start_rx.await else { return };
        let report = prepared.run(Instant::now() + delay).await;
        let _ = forward.await;
        let _ = events.send(Event::Done(idx, Ok(Box::new(report))));
    });
    Link {
        name: "in-process".into(),
        ready,
        start,
    }
}

fn remote_link(
    idx: usize,
    addr: String,
    share: Share,
    events: mpsc::UnboundedSender<Event>,
) -> Link {
    let (ready_tx, ready) = oneshot::channel();
    let (start, start_rx) = oneshot::channel::<Duration>();
    let name = addr.clone();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let result: Result<Box<AgentReport>, String> = async {
            let sock = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| format!("agent {addr}: {e}"))?;
            sock.set_nodelay(true).ok();
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            write_line(
                &mut w,
                &ToAgent::Prepare {
                    share: Box::new(share),
                },
            )
            .await?;
            let mut started = false;
            let mut start_rx = Some(start_rx);
            loop {
                let line = lines
                    .next_line()
                    .await
                    .map_err(|e| format!("agent {addr}: {e}"))?
                    .ok_or_else(|| format!("agent {addr} closed the connection"))?;
                let msg: FromAgent = serde_json::from_str(&line)
                    .map_err(|e| format!("agent {addr}: bad line: {e}"))?;
                match msg {
                    FromAgent::Ready { ready } => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(ready));
                        }
                        let delay = start_rx
                            .take()
                            .ok_or("a second `ready`")?
                            .await
                            .map_err(|_| "run abandoned".to_string())?;
                        write_line(
                            &mut w,
                            &ToAgent::Start {
                                delay_ms: delay.as_millis() as u64,
                            },
                        )
                        .await?;
                        started = true;
                    }
                    FromAgent::Tick { tick } => {
                        let _ = events.send(Event::Tick(tick.decode()?));
                    }
                    FromAgent::Done { report } if started => return Ok(report),
                    FromAgent::Done { .. } => return Err("`done` before `start`".into()),
                    FromAgent::Error { message } => return Err(format!("agent {addr}: {message}")),
                }
            }
        }
        .await;
        match (ready_tx.take(), result) {
            (Some(tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (_, r) => {
                let _ = events.send(Event::Done(idx, r));
            }
        }
    });
    Link { name, ready, start }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn progress_bar(enabled: bool) -> ProgressBar {
    let pb = if enabled {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg}").expect("static progress template"),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Scrapes every node's `process_cpu_seconds_total`.
async fn scrape_all(targets: &[Target]) -> Vec<Result<f64, String>> {
    let mut out = Vec::new();
    for t in targets {
        out.push(cpu::scrape_cpu(&t.authority).await);
    }
    out
}

/// Runs `opts.scenario` and writes its results; the caller decides the exit code from
/// `verdict.ok`.
pub async fn run(opts: &RunOptions) -> Result<RunResult, String> {
    let sc = &opts.scenario;
    let n = opts.agents.len().max(1);
    let shares = sc.split(n)?;
    let targets: Vec<Target> = sc
        .urls
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<_, _>>()?;
    let run_id = format!("lg{:08x}", fastrand::u32(..));
    let started_at_unix = unix_now();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut links: Vec<Link> = shares
        .into_iter()
        .enumerate()
        .map(|(i, scenario)| {
            let share = Share {
                run_id: run_id.clone(),
                agent: i,
                scenario,
            };
            match opts.agents.get(i) {
                Some(addr) => remote_link(i, addr.clone(), share, ev_tx.clone()),
                None => local_link(i, share, ev_tx.clone()),
            }
        })
        .collect();
    drop(ev_tx);

    let pb = progress_bar(opts.progress);
    pb.set_message(format!(
        "connecting {} connections to {}",
        sc.connection_count(),
        sc.urls.join(", ")
    ));
    let mut readies = Vec::new();
    for l in links.iter_mut() {
        let r = (&mut l.ready)
            .await
            .map_err(|_| format!("{}: setup failed", l.name))??;
        readies.push(r);
    }
    let connected: u64 = readies.iter().map(|r| r.connected).sum();
    if connected == 0 {
        pb.finish_and_clear();
        let why = readies.iter().find_map(|r| r.first_error.clone());
        return Err(format!(
            "no connection could be opened ({})",
            why.unwrap_or_default()
        ));
    }
    if opts.progress {
        pb.println(format!(
            "{connected} of {} connections ready in {:.1} s",
            sc.connection_count(),
            readies.iter().map(|r| r.setup_seconds).fold(0.0, f64::max)
        ));
    }

    let cpu_before = scrape_all(&targets).await;
    let pids_before = cpu::pids_seconds(&sc.server_pids);
    let redis_before = sc.redis_pid.and_then(cpu::pid_seconds);
    let machine_before = MachineCpu::now();
    let pressure_before = cpu::cpu_pressure_us().map(|p| (p, Instant::now()));
    let names: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
    for l in links {
        let _ = l.start.send(opts.start_delay);
    }

    let mut merger = TickMerger::new(n);
    let mut series = Vec::new();
    let mut reports: Vec<Option<Box<AgentReport>>> = vec![None; n];
    let mut errors = Vec::new();
    let mut done = 0;
    let warmup = sc.warmup;
    let total = sc.total_secs();
    let point = |t: &Tick| SecondPoint {
        second: t.second,
        phase: if (t.second as f64) < warmup {
            "warmup".into()
        } else if (t.second as f64) < total {
            "measure".into()
        } else {
            "drain".into()
        },
        sent: t.sent,
        acked: t.acked,
        delivered: t.delivered,
        errors: t.errors,
        p50_ms: t.latency.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: t.latency.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: t.latency.max() as f64 / 1000.0,
    };
    let mut err_total = 0;
    while done < n {
        let Some(ev) = ev_rx.recv().await else { break };
        match ev {
            Event::Tick(t) => {
                for t in merger.push(t) {
                    let p = point(&t);
                    err_total += p.errors;
                    pb.set_message(format!(
                        "{:>4}/{:.0} s {:<8} sent {:>7}/s  delivered {:>8}/s  p50 {:>8.3} ms  p99 {:>8.3} ms  errors {}",
                        p.second + 1,
                        total,
                        p.phase,
                        p.sent,
                        p.delivered,
                        p.p50_ms,
                        p.p99_ms,
                        err_total
                    ));
                    series.push(p);
                }
            }
            Event::Done(i, r) => {
                done += 1;
                match r {
                    Ok(r) => reports[i] = Some(r),
                    Err(e) => errors.push(e),
                }
            }
        }
    }
    series.extend(merger.finish().iter().map(point));
    pb.finish_and_clear();
    let machine_busy = MachineCpu::now().busy_since(&machine_before);
    let cpu_pressure = pressure_before.and_then(|(p0, t0)| {
        let p = cpu::cpu_pressure_us()?.saturating_sub(p0) as f64 / 1e6;
        Some(p / t0.elapsed().as_secs_f64())
    });
    let cpu_after = scrape_all(&targets).await;
    let pids_after = cpu::pids_seconds(&sc.server_pids);
    let redis_cpu_seconds = sc
        .redis_pid
        .and_then(cpu::pid_seconds)
        .zip(redis_before)
        .map(|(a, b)| a - b);
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }

    let mut counters = Counters::default();
    let mut hists = Hists::default();
    let mut agents = Vec::new();
    let mut first_errors = Vec::new();
    let mut acks = Vec::new();
    let mut socials = Vec::new();
    for (i, r) in reports.into_iter().enumerate() {
        let mut r = r.ok_or_else(|| format!("{}: no report", names[i]))?;
        acks.append(&mut r.acks);
        socials.extend(r.social.take());
        counters.add(&r.counters);
        hists.add(&r.hists.decode()?);
        if let Some(e) = &r.first_error {
            first_errors.push(format!("{}: {e}", names[i]));
        }
        agents.push(AgentSummary {
            agent: names[i].clone(),
            connections: readies[i].connections,
            setup_seconds: readies[i].setup_seconds,
            cpu_seconds: r.cpu_seconds,
            wall_seconds: r.wall_seconds,
            thread_utilization: r.thread_utilization,
            first_error: r.first_error,
        });
    }

    let servers: Vec<ServerCpu> = targets
        .iter()
        .zip(cpu_before.into_iter().zip(cpu_after))
        .map(|(t, (b, a))| {
            let (before, after) = (b.as_ref().ok().copied(), a.as_ref().ok().copied());
            ServerCpu {
                url: t.url.clone(),
                before_seconds: before,
                after_seconds: after,
                cpu_seconds: before.zip(after).map(|(b, a)| a - b),
                error: b.err().or(a.err()),
            }
        })
        .collect();
    // Given processes (peers without /metrics, see peers/) replace the nodes' own figures.
    let servers = if sc.server_pids.is_empty() {
        servers
    } else {
        vec![ServerCpu {
            url: format!("/proc of pids {:?}", sc.server_pids),
            before_seconds: pids_before,
            after_seconds: pids_after,
            cpu_seconds: pids_before.zip(pids_after).map(|(b, a)| a - b),
            error: pids_after
                .is_none()
                .then(|| "a process ended during the run".into()),
        }]
    };
    let server_cpu_seconds = servers.iter().map(|s| s.cpu_seconds).sum::<Option<f64>>();
    let per_delivered = |s: Option<f64>| {
        s.filter(|_| counters.delivered > 0)
            .map(|s| s * 1e6 / counters.delivered as f64)
    };
    let redis_cpu_us_per_delivered = per_delivered(redis_cpu_seconds);
    let server_cpu_us_per_delivered = per_delivered(server_cpu_seconds);

    let latency = Latencies {
        delivery: Percentiles::of(&hists.delivery),
        ack: Percentiles::of(&hists.ack),
        persist: sc
            .postgres
            .as_ref()
            .map(|_| Percentiles::of(&hists.persist)),
        send_lag: Percentiles::of(&hists.send_lag),
    };
    let d = sc.duration;
    let throughput = Throughput {
        target_send_per_s: sc.rate,
        sent_per_s: counters.sent_measured as f64 / d,
        delivered_per_s: hists.delivery.len() as f64 / d,
        acked_per_s: hists.ack.len() as f64 / d,
    };
    let cpu_seconds: f64 = agents.iter().map(|a| a.cpu_seconds).sum();
    let cpu_cores: f64 = agents
        .iter()
        .map(|a| a.cpu_seconds / a.wall_seconds.max(1e-9))
        .sum();
    let max_thread = agents
        .iter()
        .flat_map(|a| a.thread_utilization.iter().copied())
        .fold(0.0, f64::max);
    let mut notes = Vec::new();
    let mut bottleneck = false;
    if max_thread >= THREAD_BUSY {
        bottleneck = true;
        notes.push(format!(
            "a load-generator thread was {:.0}% busy (limit {:.0}%)",
            max_thread * 100.0,
            THREAD_BUSY * 100.0
        ));
    }
    if latency.send_lag.p99_ms > SEND_LAG_P99_MS {
        bottleneck = true;
        notes.push(format!(
            "the load generator fell behind its schedule: send lag p99 {:.3} ms (limit {SEND_LAG_P99_MS} ms)",
            latency.send_lag.p99_ms
        ));
    }
    if let Some(p) = cpu_pressure.filter(|p| *p > CPU_PRESSURE) {
        notes.push(format!(
            "some task waited for a CPU during {:.0}% of the run: the load generator, the servers \
             (and anything else on this machine) competed for cores",
            p * 100.0
        ));
    }
    notes.extend(first_errors);
    let mut problems = counters.problems();
    let social = if crate::social::wanted(sc) {
        if socials.len() < n {
            problems.push(format!(
                "{} of {n} agents reported no social mix",
                n - socials.len()
            ));
        }
        let s = crate::social::merge(&socials)?;
        problems.extend(s.counters.problems());
        Some(s)
    } else {
        None
    };
    let name = if sc.name.is_empty() {
        format!("run-{started_at_unix}")
    } else {
        sc.name.clone()
    };
    let floor = if sc.floor && throughput.delivered_per_s > 0.0 {
        let args = crate::floor::FloorArgs {
            conns: sc.connection_count(),
            frame: crate::floor::msg_frame_len(sc.body),
            rate: throughput.delivered_per_s,
            fanout: sc.members,
            batch: 1,
            duration: sc.duration.min(5.0),
        };
        let f = tokio::task::spawn_blocking(move || crate::floor::measure(&args))
            .await
            .map_err(|e| format!("floor: {e}"))??;
        Some(f)
    } else {
        None
    };
    let server_cpu_vs_floor = floor
        .as_ref()
        .zip(server_cpu_us_per_delivered)
        .map(|(f, s)| s / f.us_per_frame);
    let result = RunResult {
        name: name.clone(),
        command_line: opts.command_line.clone(),
        started_at_unix,
        commit: Commit::probe(),
        machine: Machine::probe(),
        versions: Versions::probe(),
        scenario: sc.clone(),
        agents,
        counters,
        throughput,
        latency,
        servers,
        server_cpu_seconds,
        server_cpu_us_per_delivered,
        redis_cpu_seconds,
        redis_cpu_us_per_delivered,
        loadgen: LoadgenHealth {
            cpu_seconds,
            cpu_cores,
            max_thread_utilization: max_thread,
            send_lag_p99_ms: latency_p99(&hists),
            machine_busy,
            cpu_pressure,
            bottleneck,
            notes,
        },
        verdict: Verdict {
            ok: problems.is_empty(),
            problems,
        },
        series,
        histograms: hists.to_wire(),
        acks,
        floor,
        server_cpu_vs_floor,
        social,
    };
    result.write(&opts.results_dir.join(&name), opts.plots)?;
    Ok(result)
}

fn latency_p99(h: &Hists) -> f64 {
    h.send_lag.value_at_quantile(0.99) as f64 / 1000.0
}

/// The loud banner for a run that lost, duplicated or reordered anything.
pub fn failure_banner(r: &RunResult) -> String {
    let line = "!".repeat(78);
    format!(
        "{line}\n!!! VERIFICATION FAILED: {}\n{line}",
        r.verdict.problems.join(", ")
    )
}
