//! One process's share of a run: the part that actually makes load, used the same way by an
//! in-process `loadgen run` and by `loadgen agent`.
//!
//! The share's connections are spread over a few *shard* threads (`--threads`), each a
//! single-threaded tokio runtime with a `LocalSet`: its connections' reader tasks, the sender
//! tasks (one per sending connection, on the open-model
//! [`Schedule`](crate::schedule::Schedule)) and one ticker. A shard's histograms and
//! verification state are plain `RefCell`s, touched by one thread only; only five counters per
//! shard are atomics, for the controller's drain check.
//!
//! Life of a share: [`prepare`] opens every connection (at `connect_rate`) and joins its rooms;
//! [`Prepared::run`] starts all senders at one instant, waits for the schedule's end, drains
//! (until every send is answered and every expected reception arrived, or `drain_timeout`),
//! stops the shards and merges their histograms, counters and per-receiver streams into one
//! [`AgentReport`], with the final verification done here (each room and all its members
//! live in one share).
//!
//! The files: this one holds the share's life (prepare, run, merge); `final_check.rs` the
//! final verification; `shard.rs` a shard thread's life; `state.rs` the state its tasks
//! share; `conn.rs` a connection's task (connect, join, read, reconnect + resume);
//! `receive.rs` what a connection does with each server message; `outbox.rs` a sending
//! connection's write side; `sender.rs` the open-model sender; `stalled.rs` the slow
//! consumers.

mod conn;
mod final_check;
mod outbox;
mod receive;
mod sender;
mod shard;
mod stalled;
mod state;

use crate::client::{self, Target};
use crate::cpu;
use crate::persist;
use crate::report::AckRecord;
use crate::scenario::{Key, Layout, Scenario};
use crate::social::{self, Social, SocialReport};
use crate::stats::{Counters, Hists, HistsWire, Tick, TickMerger};
use final_check::verify_all;
use serde::{Deserialize, Serialize};
use shard::{shard_main, ShardInit, ShardReport};
use state::Totals;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// A share of a scenario as given to one agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Share {
    /// Common to all agents of a run; prefixes every user and room name.
    pub run_id: String,
    pub agent: usize,
    pub scenario: Scenario,
}

/// Setup outcome of a share.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ready {
    pub connections: u64,
    pub connected: u64,
    pub connect_errors: u64,
    pub join_errors: u64,
    pub setup_seconds: f64,
    pub first_error: Option<String>,
}

/// Everything a share measured, for the coordinator to merge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentReport {
    pub agent: usize,
    pub counters: Counters,
    pub hists: HistsWire,
    /// CPU seconds of the whole process from the start to the end of the drain.
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    /// CPU / wall time of each shard thread over the same span (1.0 = one core, saturated).
    pub thread_utilization: Vec<f64>,
    pub first_error: Option<String>,
    /// Every ack, when the scenario records them.
    #[serde(default)]
    pub acks: Vec<AckRecord>,
    /// The v1.1 mix, when the scenario has one.
    #[serde(default)]
    pub social: Option<SocialReport>,
}

/// A share whose connections are open and joined, waiting for its start instant.
pub struct Prepared {
    pub ready: Ready,
    agent: usize,
    layout: Arc<Layout>,
    scenario: Arc<Scenario>,
    start_txs: Vec<oneshot::Sender<Instant>>,
    stop_tx: watch::Sender<bool>,
    reports: Vec<oneshot::Receiver<ShardReport>>,
    totals: Vec<Arc<Totals>>,
    merger: tokio::task::JoinHandle<()>,
    persist: Option<(
        mpsc::UnboundedSender<persist::Sample>,
        tokio::task::JoinHandle<persist::Outcome>,
    )>,
    social: Option<Social>,
}

/// Opens and joins every connection of `share`; per-second ticks (merged over shards) go to
/// `ticks` once the run starts.
pub async fn prepare(share: Share, ticks: mpsc::UnboundedSender<Tick>) -> Result<Prepared, String> {
    let scenario = Arc::new(share.scenario);
    scenario.validate()?;
    let layout = Arc::new(Layout::new(&scenario, &share.run_id, share.agent));
    let targets: Arc<Vec<Target>> = Arc::new(
        scenario
            .urls
            .iter()
            .map(|u| Target::parse(u))
            .collect::<Result<_, _>>()?,
    );
    let threads = scenario.threads.max(1);
    let limit = client::raise_fd_limit();
    if layout.conns as u64 + 64 > limit {
        return Err(format!(
            "{} connections need more file descriptors than the limit of {limit} (ulimit -n)",
            layout.conns
        ));
    }
    let persist = scenario.postgres.as_ref().map(|url| {
        persist::spawn(
            url.clone(),
            Duration::from_secs_f64(scenario.persist_timeout),
        )
    });
    let (shard_tick_tx, mut shard_tick_rx) = mpsc::unbounded_channel::<Tick>();
    let merger = tokio::spawn(async move {
        let mut m = TickMerger::new(threads);
        while let Some(t) = shard_tick_rx.recv().await {
            for t in m.push(t) {
                let _ = ticks.send(t);
            }
        }
        for t in m.finish() {
            let _ = ticks.send(t);
        }
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let setup = Instant::now();
    let mut readies = Vec::new();
    let mut start_txs = Vec::new();
    let mut reports = Vec::new();
    let mut totals = Vec::new();
    for id in 0..threads {
        let conns: Vec<u32> = (0..layout.conns)
            .filter(|c| *c as usize % threads == id)
            .collect();
        let stalled: Vec<u32> = (0..scenario.stalled as u32)
            .filter(|i| *i as usize % threads == id)
            .collect();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (start_tx, start_rx) = oneshot::channel();
        let (report_tx, report_rx) = oneshot::channel();
        let t = Arc::new(Totals::default());
        let init = ShardInit {
            layout: layout.clone(),
            scenario: scenario.clone(),
            targets: targets.clone(),
            totals: t.clone(),
            id,
            conns,
            stalled,
            setup,
            ready_tx,
            start_rx,
            stop_rx: stop_rx.clone(),
            tick_tx: shard_tick_tx.clone(),
            persist_tx: persist.as_ref().map(|p| p.0.clone()),
        };
        std::thread::Builder::new()
            .name(format!("loadgen-{id}"))
            .spawn(move || {
                let report = crate::local::block_on_local("shard", shard_main(init));
                let _ = report_tx.send(report);
            })
            .map_err(|e| format!("spawning a shard thread: {e}"))?;
        readies.push(ready_rx);
        start_txs.push(start_tx);
        reports.push(report_rx);
        totals.push(t);
    }
    drop(shard_tick_tx);
    let mut ready = Ready {
        connections: layout.conns as u64,
        ..Ready::default()
    };
    for r in readies {
        let r = r
            .await
            .map_err(|_| "a shard thread died while connecting")?;
        ready.connected += r.counters.connected;
        ready.connect_errors += r.counters.connect_errors;
        ready.join_errors += r.counters.join_errors;
        if ready.first_error.is_none() {
            ready.first_error = r.first_error;
        }
    }
    let social = if social::wanted(&scenario) {
        let cfg = client::ConnConfig::of(&scenario);
        let s = social::prepare(layout.clone(), scenario.clone(), targets, cfg).await?;
        Some(s)
    } else {
        None
    };
    ready.setup_seconds = setup.elapsed().as_secs_f64();
    Ok(Prepared {
        ready,
        agent: share.agent,
        layout,
        scenario,
        start_txs,
        stop_tx,
        reports,
        totals,
        merger,
        persist,
        social,
    })
}

impl Prepared {
    /// Runs the share with `start` as the common start instant and returns what it measured.
    pub async fn run(self, start: Instant) -> AgentReport {
        let s = &self.scenario;
        for tx in self.start_txs {
            let _ = tx.send(start);
        }
        let social = self.social.map(|s| s.start(start));
        tokio::time::sleep_until(start.into()).await;
        let cpu0 = cpu::process_seconds();
        let end = start + Duration::from_secs_f64(s.total_secs());
        tokio::time::sleep_until(end.into()).await;
        // Drain: every sender done and answered, every expected reception in.
        let deadline = end + Duration::from_secs_f64(s.drain_timeout);
        loop {
            let sum = |f: fn(&Totals) -> &AtomicU64| -> u64 {
                self.totals.iter().map(|t| f(t).load(Relaxed)).sum()
            };
            let done = sum(|t| &t.senders_left) == 0
                && sum(|t| &t.stalled_left) == 0
                && sum(|t| &t.answered) >= sum(|t| &t.sent)
                && sum(|t| &t.delivered) >= sum(|t| &t.expected);
            if done || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.stop_tx.send(true);
        let mut counters = Counters::default();
        let mut hists = Hists::default();
        let mut acked_max: HashMap<Key, u64> = HashMap::new();
        let mut streams = Vec::new();
        let mut thread_utilization = Vec::new();
        let mut first_error = None;
        let mut acks = Vec::new();
        for r in self.reports {
            let Ok(mut r) = r.await else {
                first_error.get_or_insert_with(|| "a shard thread died".to_string());
                continue;
            };
            counters.add(&r.counters);
            hists.add(&r.hists);
            for (k, v) in r.acked_max {
                let e = acked_max.entry(k).or_default();
                *e = (*e).max(v);
            }
            streams.extend(r.streams);
            acks.append(&mut r.acks);
            thread_utilization.push(r.thread_utilization);
            if first_error.is_none() {
                first_error = r.first_error;
            }
        }
        let cpu_seconds = cpu::process_seconds() - cpu0;
        let wall_seconds = start.elapsed().as_secs_f64();
        let _ = self.merger.await;
        if let Some((tx, poller)) = self.persist {
            drop(tx);
            if let Ok(o) = poller.await {
                hists.persist = o.hist;
                counters.persist_found = o.found;
                counters.persist_missing = o.missing;
                if first_error.is_none() {
                    first_error = o.error;
                }
            }
        }
        let mut social_report = None;
        if let Some(rx) = social {
            match rx.await {
                Ok((r, e)) => {
                    social_report = Some(r);
                    if first_error.is_none() {
                        first_error = e.map(|e| format!("social: {e}"));
                    }
                }
                Err(_) => {
                    first_error.get_or_insert_with(|| "the social thread died".to_string());
                }
            }
        }
        counters.unacked = counters
            .sent
            .saturating_sub(counters.acked + counters.send_errors);
        verify_all(&self.layout, acked_max, streams, &mut counters);
        AgentReport {
            agent: self.agent,
            counters,
            hists: hists.to_wire(),
            cpu_seconds,
            wall_seconds,
            thread_utilization,
            first_error,
            acks,
            social: social_report,
        }
    }
}
