//! One process's share of a run: the part that actually makes load, used the same way by an
//! in-process `loadgen run` and by `loadgen agent`.
//!
//! The share's connections are spread over a few *shard* threads (`--threads`), each a
//! single-threaded tokio runtime with a `LocalSet`: its connections' reader tasks, the sender
//! tasks (one per sending connection, on the open-model [`Schedule`]) and one ticker. A shard's
//! histograms and verification state are plain `RefCell`s, touched by one thread only; only
//! five counters per shard are atomics, for the controller's drain check.
//!
//! Life of a share: [`prepare`] opens every connection (at `connect_rate`) and joins its rooms;
//! [`Prepared::run`] starts all senders at one instant, waits for the schedule's end, drains
//! (until every send is answered and every expected reception arrived, or `drain_timeout`),
//! stops the shards and merges their histograms, counters and per-receiver streams into one
//! [`AgentReport`], with the final verification done here (each room and all its members
//! live in one share).

use crate::client::{self, ConnConfig, Kind, ServerMsg, Target, Ws};
use crate::cpu;
use crate::persist;
use crate::proto::{http_publish, pusher, Incoming};
use crate::report::AckRecord;
use crate::scenario::{dm_users, is_dm_key, Key, Layout, Scenario};
use crate::schedule::{parse_cid, Schedule};
use crate::stats::{record_ns, Counters, Hists, HistsWire, Tick, TickMerger};
use crate::timer::PreciseTimer;
use crate::verify::{Stream, StreamSummary};
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_tungstenite::tungstenite::Message;

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
}

/// Counters the controller watches while draining (written by one shard, read by the
/// controller).
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    answered: AtomicU64,
    delivered: AtomicU64,
    expected: AtomicU64,
    senders_left: AtomicU64,
    /// Stalled connections still waiting to learn whether the server closed them.
    stalled_left: AtomicU64,
}

struct ShardReady {
    counters: Counters,
    first_error: Option<String>,
}

struct ShardReport {
    counters: Counters,
    hists: Hists,
    acked_max: HashMap<Key, u64>,
    streams: Vec<(u32, Key, StreamSummary)>,
    thread_utilization: f64,
    first_error: Option<String>,
    acks: Vec<AckRecord>,
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
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("shard runtime");
                let local = tokio::task::LocalSet::new();
                let report = local.block_on(&rt, shard_main(init));
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
    })
}

impl Prepared {
    /// Runs the share with `start` as the common start instant and returns what it measured.
    pub async fn run(self, start: Instant) -> AgentReport {
        let s = &self.scenario;
        for tx in self.start_txs {
            let _ = tx.send(start);
        }
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
        }
    }
}

/// The final verification: every member of every room (and both users of every DM room that
/// got messages) must hold every seq up to the room's last one.
fn verify_all(
    layout: &Layout,
    mut final_seq: HashMap<Key, u64>,
    streams: Vec<(u32, Key, StreamSummary)>,
    counters: &mut Counters,
) {
    for (_, key, s) in &streams {
        let e = final_seq.entry(*key).or_default();
        *e = (*e).max(s.highest);
        counters.duplicated += s.duplicated;
        counters.reordered += s.reordered;
    }
    let mut received: HashMap<(u32, Key), StreamSummary> =
        streams.into_iter().map(|(c, k, s)| ((c, k), s)).collect();
    let mut check = |c: u32, key: Key, f: u64| {
        let lost = match received.remove(&(c, key)) {
            Some(s) => s.lost(f),
            None => f,
        };
        counters.lost += lost;
        if is_dm_key(key) {
            counters.lost_dm += lost;
        }
    };
    for r in 0..layout.rooms {
        let f = final_seq.get(&(r as Key)).copied().unwrap_or(0);
        for m in 0..layout.members {
            check(layout.member(r, m), r as Key, f);
        }
    }
    for (&key, &f) in &final_seq {
        if is_dm_key(key) && f > 0 {
            let (a, b) = dm_users(key);
            check(a, key, f);
            check(b, key, f);
        }
    }
    counters.stray += received.values().map(|s| s.received).sum::<u64>();
}

struct ShardInit {
    layout: Arc<Layout>,
    scenario: Arc<Scenario>,
    targets: Arc<Vec<Target>>,
    totals: Arc<Totals>,
    conns: Vec<u32>,
    /// This shard's number (0..threads).
    id: usize,
    /// Stalled connections (slow consumers) of this shard.
    stalled: Vec<u32>,
    setup: Instant,
    ready_tx: oneshot::Sender<ShardReady>,
    start_rx: oneshot::Receiver<Instant>,
    stop_rx: watch::Receiver<bool>,
    tick_tx: mpsc::UnboundedSender<Tick>,
    persist_tx: Option<mpsc::UnboundedSender<persist::Sample>>,
}

/// One shard thread's state, shared by its tasks.
struct Shard {
    layout: Arc<Layout>,
    scenario: Arc<Scenario>,
    targets: Arc<Vec<Target>>,
    totals: Arc<Totals>,
    cfg: ConnConfig,
    warmup_ns: u64,
    stats: RefCell<ShardStats>,
    start: Cell<Option<Instant>>,
    start_signal: watch::Sender<Option<Instant>>,
    ready_left: Cell<usize>,
    ready_notify: Notify,
    stopping: Cell<bool>,
    conns: RefCell<Vec<(u32, Rc<RefCell<ConnStreams>>)>>,
    tick_tx: mpsc::UnboundedSender<Tick>,
    tick_second: Cell<u64>,
    persist_tx: Option<mpsc::UnboundedSender<persist::Sample>>,
    timer: Rc<PreciseTimer>,
}

struct ShardStats {
    counters: Counters,
    hists: Hists,
    tick: Tick,
    acked_max: HashMap<Key, u64>,
    first_error: Option<String>,
    acks: Vec<AckRecord>,
    /// Messages answered `unavailable` at least once (re-sent), by (role, k), until acked.
    refused: std::collections::HashSet<(u32, u64)>,
}

/// A receiver's streams, by room key.
#[derive(Default)]
struct ConnStreams {
    streams: HashMap<Key, Stream>,
}

impl Shard {
    fn error(&self, e: String) {
        self.stats.borrow_mut().first_error.get_or_insert(e);
    }

    fn ready_one(&self) {
        self.ready_left.set(self.ready_left.get() - 1);
        if self.ready_left.get() == 0 {
            self.ready_notify.notify_one();
        }
    }

    async fn wait_start(&self) -> Instant {
        let mut rx = self.start_signal.subscribe();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                // The shard is going away; park forever (the runtime drops this task).
                std::future::pending::<()>().await;
            }
        }
    }

    fn emit_tick(&self) {
        let s = self.tick_second.get();
        let mut st = self.stats.borrow_mut();
        let t = std::mem::replace(&mut st.tick, Tick::new(s + 1));
        let _ = self.tick_tx.send(t);
        self.tick_second.set(s + 1);
    }

    /// Everything a connection receives after its joins. `outbox` is the connection's write
    /// side when it sends.
    fn on_frame(
        &self,
        c: u32,
        b: &[u8],
        now: Instant,
        streams: &RefCell<ConnStreams>,
        outbox: Option<&Rc<Outbox>>,
    ) {
        let m = match self.scenario.protocol.parse(b) {
            Some(Incoming::Server(m)) => m,
            Some(Incoming::Ping(pong)) => {
                if let Some(ob) = outbox {
                    let _ = ob.messages.send((PONG_KEY, pong));
                }
                return;
            }
            None => {
                self.stats.borrow_mut().counters.unparsed += 1;
                return;
            }
        };
        self.on_msg(c, m, now, streams, outbox);
    }

    /// A server message, parsed (from a frame, or an HTTP publish's response).
    fn on_msg(
        &self,
        c: u32,
        m: ServerMsg<'_>,
        now: Instant,
        streams: &RefCell<ConnStreams>,
        outbox: Option<&Rc<Outbox>>,
    ) {
        let now_ns = self
            .start
            .get()
            .map_or(0, |s| now.saturating_duration_since(s).as_nanos() as u64);
        let layout = &*self.layout;
        match m.kind {
            Kind::Msg => {
                self.totals.delivered.fetch_add(1, Relaxed);
                let mut st = self.stats.borrow_mut();
                let st = &mut *st;
                st.counters.delivered += 1;
                st.tick.delivered += 1;
                let mut tracked = false;
                if let Some(key) = layout.key_of_room(m.room) {
                    let mut cs = streams.borrow_mut();
                    let stream = match cs.streams.entry(key) {
                        Entry::Occupied(e) => Some(e.into_mut()),
                        Entry::Vacant(e) => {
                            let (a, b) = dm_users(key);
                            (is_dm_key(key) && (a == c || b == c)).then(|| e.insert(Stream::new(0)))
                        }
                    };
                    if let Some(s) = stream {
                        s.on_seq(m.seq);
                        tracked = true;
                    }
                }
                if !tracked {
                    st.counters.stray += 1;
                }
                if let Some((_, _, intended)) = parse_cid(m.cid) {
                    let lat = now_ns.saturating_sub(intended);
                    record_ns(&mut st.tick.latency, lat);
                    if intended >= self.warmup_ns {
                        record_ns(&mut st.hists.delivery, lat);
                    }
                }
            }
            Kind::Ack => {
                let Some((role, k, intended)) = parse_cid(m.cid) else {
                    self.stats.borrow_mut().counters.unparsed += 1;
                    return;
                };
                if let Some(ob) = outbox.filter(|_| self.scenario.reconnect) {
                    if ob.pending.borrow_mut().remove(&(role, k)).is_none() {
                        // A re-sent message answered a second time (same seq: the dedupe).
                        self.stats.borrow_mut().counters.duplicate_acks += 1;
                        return;
                    }
                }
                self.totals.answered.fetch_add(1, Relaxed);
                let mut st = self.stats.borrow_mut();
                let refused = st.refused.remove(&(role, k));
                if self.scenario.record_acks {
                    st.acks.push(AckRecord {
                        room: String::from_utf8_lossy(m.room).into_owned(),
                        seq: m.seq,
                        cid: String::from_utf8_lossy(m.cid).into_owned(),
                        refused,
                    });
                }
                st.counters.acked += 1;
                st.tick.acked += 1;
                if intended >= self.warmup_ns {
                    record_ns(&mut st.hists.ack, now_ns.saturating_sub(intended));
                }
                if let Some(key) = layout.key_of_room(m.room) {
                    let e = st.acked_max.entry(key).or_default();
                    *e = (*e).max(m.seq);
                    self.totals
                        .expected
                        .fetch_add(layout.receivers(key), Relaxed);
                    st.counters.expected_deliveries += layout.receivers(key);
                }
                if let (Some(tx), Some(start)) = (&self.persist_tx, self.start.get()) {
                    if k % self.scenario.persist_sample == 0 {
                        st.counters.persist_sampled += 1;
                        let _ = tx.send(persist::Sample {
                            room: String::from_utf8_lossy(m.room).into_owned(),
                            seq: m.seq as i64,
                            intended: start + Duration::from_nanos(intended),
                        });
                    }
                }
            }
            Kind::Error => {
                let mut st = self.stats.borrow_mut();
                let code = String::from_utf8_lossy(m.code);
                if m.cid.is_empty() {
                    let msg = format!("error reply without cid: {code}");
                    st.first_error.get_or_insert(msg);
                    *st.counters
                        .send_errors_by_code
                        .entry(format!("{code} (no cid)"))
                        .or_default() += 1;
                } else {
                    let unavailable = m.code == b"unavailable";
                    st.counters.unavailable += u64::from(unavailable);
                    if let (Some(ob), Some((role, k, _))) =
                        (outbox.filter(|_| self.scenario.reconnect), parse_cid(m.cid))
                    {
                        if unavailable {
                            // Retried with the same cid after a backoff: not an answer yet.
                            st.tick.errors += 1;
                            st.refused.insert((role, k));
                            drop(st);
                            retry_later(ob, (role, k));
                            return;
                        }
                        ob.pending.borrow_mut().remove(&(role, k));
                    }
                    self.totals.answered.fetch_add(1, Relaxed);
                    st.counters.send_errors += 1;
                    st.tick.errors += 1;
                    *st.counters
                        .send_errors_by_code
                        .entry(code.into_owned())
                        .or_default() += 1;
                }
            }
            Kind::Resumed => {
                let mut st = self.stats.borrow_mut();
                st.counters.resumes += 1;
                st.counters.resume_incomplete += u64::from(!m.complete);
            }
            Kind::Joined | Kind::Other => {}
        }
    }
}

async fn shard_main(init: ShardInit) -> ShardReport {
    let s = init.scenario.clone();
    let senders = init
        .conns
        .iter()
        .filter(|&&c| !init.layout.conn_roles[c as usize].is_empty())
        .count();
    init.totals.senders_left.store(senders as u64, Relaxed);
    init.totals
        .stalled_left
        .store(init.stalled.len() as u64, Relaxed);
    let (timer, timer_driver) = PreciseTimer::new();
    tokio::task::spawn_local(timer_driver);
    let sh = Rc::new(Shard {
        layout: init.layout,
        scenario: init.scenario,
        targets: init.targets,
        totals: init.totals,
        cfg: ConnConfig {
            read_buffer: s.read_buffer,
            write_buffer: s.write_buffer,
            socket_buffer: s.socket_buffer,
        },
        warmup_ns: (s.warmup * 1e9) as u64,
        stats: RefCell::new(ShardStats {
            counters: Counters::default(),
            hists: Hists::default(),
            tick: Tick::new(0),
            acked_max: HashMap::new(),
            first_error: None,
            acks: Vec::new(),
            refused: Default::default(),
        }),
        start: Cell::new(None),
        start_signal: watch::channel(None).0,
        ready_left: Cell::new(init.conns.len() + init.stalled.len()),
        ready_notify: Notify::new(),
        stopping: Cell::new(false),
        conns: RefCell::new(Vec::new()),
        tick_tx: init.tick_tx,
        tick_second: Cell::new(0),
        persist_tx: init.persist_tx,
        timer,
    });
    if init.conns.is_empty() && init.stalled.is_empty() {
        sh.ready_notify.notify_one();
    }
    for &c in &init.conns {
        let at = init.setup + Duration::from_secs_f64(c as f64 / s.connect_rate);
        tokio::task::spawn_local(conn_task(sh.clone(), c, at));
    }
    for &i in &init.stalled {
        tokio::task::spawn_local(stalled_task(sh.clone(), i));
    }
    while sh.ready_left.get() > 0 {
        sh.ready_notify.notified().await;
    }
    let (counters, first_error) = {
        let st = sh.stats.borrow();
        (st.counters.clone(), st.first_error.clone())
    };
    let _ = init.ready_tx.send(ShardReady {
        counters,
        first_error,
    });
    let mut stop_rx = init.stop_rx;
    let Ok(start) = init.start_rx.await else {
        // The run was abandoned before it started.
        return shard_report(&sh, 0.0);
    };
    sh.start.set(Some(start));
    sh.start_signal.send_replace(Some(start));
    tokio::time::sleep_until(start.into()).await;
    let cpu0 = cpu::thread_seconds();
    let ticker = sh.clone();
    tokio::task::spawn_local(async move {
        loop {
            let next = start + Duration::from_secs(ticker.tick_second.get() + 1);
            tokio::time::sleep_until(next.into()).await;
            ticker.emit_tick();
        }
    });
    // The first shard only: one stalled thread among running ones.
    if let Some(p) = s.inject_pause.filter(|_| init.id == 0) {
        tokio::task::spawn_local(async move {
            tokio::time::sleep_until((start + Duration::from_secs_f64(p.at)).into()).await;
            // Blocks the whole shard thread, like a GC pause or a descheduled process would.
            std::thread::sleep(Duration::from_secs_f64(p.length));
        });
    }
    let _ = stop_rx.wait_for(|stop| *stop).await;
    sh.stopping.set(true);
    sh.emit_tick();
    let wall = start.elapsed().as_secs_f64();
    let util = if wall > 0.0 {
        (cpu::thread_seconds() - cpu0) / wall
    } else {
        0.0
    };
    shard_report(&sh, util)
}

fn shard_report(sh: &Shard, thread_utilization: f64) -> ShardReport {
    let mut st = sh.stats.borrow_mut();
    let t = &sh.totals;
    st.counters.sent = t.sent.load(Relaxed);
    let streams = sh
        .conns
        .borrow()
        .iter()
        .flat_map(|(c, cs)| {
            cs.borrow()
                .streams
                .iter()
                .map(|(k, s)| (*c, *k, s.summary()))
                .collect::<Vec<_>>()
        })
        .collect();
    ShardReport {
        counters: std::mem::take(&mut st.counters),
        hists: std::mem::take(&mut st.hists),
        acked_max: std::mem::take(&mut st.acked_max),
        streams,
        thread_utilization,
        first_error: st.first_error.take(),
        acks: std::mem::take(&mut st.acks),
    }
}

/// Connects, joins, then reads until the end. A sending connection's messages go through its
/// [`Outbox`]: a [`sender_task`] makes them on schedule and a [`writer_task`] writes them to
/// whichever connection is current. With `reconnect`, a connection that ends early is opened
/// again (on the next node) and resumes its rooms where its streams stopped.
async fn conn_task(sh: Rc<Shard>, c: u32, connect_at: Instant) {
    tokio::time::sleep_until(connect_at.into()).await;
    let layout = sh.layout.clone();
    let sends = !layout.conn_roles[c as usize].is_empty();
    let target = &sh.targets[layout.conn_url[c as usize] as usize];
    let source = client::source_ip(&target.addr, c as usize, sh.scenario.source_ips);
    let proto = sh.scenario.protocol;
    let path = proto.path(&layout.user(c), &sh.scenario.pusher_app);
    let opened = match client::connect(target, source, &path, sh.cfg).await {
        Ok(mut ws) => proto.handshake(&mut ws).await.map(|()| ws),
        e => e,
    };
    let ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            sh.stats.borrow_mut().counters.connect_errors += 1;
            sh.error(e);
            if sends {
                sh.totals.senders_left.fetch_sub(1, Relaxed);
            }
            sh.ready_one();
            return;
        }
    };
    sh.stats.borrow_mut().counters.connected += 1;
    let mut ws = ws;
    let streams = Rc::new(RefCell::new(ConnStreams::default()));
    sh.conns.borrow_mut().push((c, streams.clone()));
    let rooms = &layout.conn_rooms[c as usize];
    let mut ok = true;
    for &r in rooms {
        ok = ok && ws.feed(proto.join(&layout.room(r))).await.is_ok();
    }
    ok = ok && ws.flush().await.is_ok();
    let mut left = rooms.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok && left > 0 {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let m = match proto.parse(t.as_bytes()) {
                    Some(Incoming::Server(m)) => m,
                    Some(Incoming::Ping(pong)) => {
                        ok = ws.send(pong).await.is_ok();
                        continue;
                    }
                    None => continue,
                };
                match m.kind {
                    Kind::Joined => {
                        if let Some(k) = layout.key_of_room(m.room) {
                            streams.borrow_mut().streams.insert(k, Stream::new(m.seq));
                        }
                        left -= 1;
                    }
                    Kind::Error => {
                        sh.error(format!("join: {}", t.as_str()));
                        left -= 1;
                        sh.stats.borrow_mut().counters.join_errors += 1;
                    }
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                sh.error(format!("while joining: {e}"));
                ok = false;
            }
            Ok(None) => ok = false,
            Err(_) => {
                sh.error("join: no reply within 30 s".into());
                ok = false;
            }
        }
    }
    sh.stats.borrow_mut().counters.join_errors += left as u64;
    sh.ready_one();
    if !ok {
        sh.stats.borrow_mut().counters.disconnects += 1;
        if sends {
            sh.totals.senders_left.fetch_sub(1, Relaxed);
        }
        return;
    }
    // Sends go over the WebSocket (its writer also answers keep-alives), or over HTTP.
    let http = proto.publishes_over_http();
    let outbox = (sends || proto.answers_pings()).then(|| {
        let (outbox, messages, sinks) = Outbox::new();
        if http {
            let (sh2, streams2, addr) = (sh.clone(), streams.clone(), target.addr);
            tokio::task::spawn_local(async move {
                let on_reply = |m: ServerMsg<'_>, now| sh2.on_msg(c, m, now, &streams2, None);
                let on_error = |e| sh2.error(e);
                http_publish::run(addr, messages, pusher::request_ids, on_reply, on_error).await;
            });
        } else {
            tokio::task::spawn_local(writer_task(sh.clone(), c, outbox.clone(), messages, sinks));
        }
        if sends {
            tokio::task::spawn_local(sender_task(sh.clone(), c, outbox.clone()));
        }
        outbox
    });
    let mut attempt = 0;
    let mut backoff = MIN_BACKOFF;
    loop {
        let opened = Instant::now();
        match &outbox {
            Some(ob) if !http => {
                let (sink, stream) = ws.split();
                ob.generation.set(ob.generation.get() + 1);
                let _ = ob.sinks.send((ob.generation.get(), sink));
                reader(&sh, c, stream, &streams, Some(ob)).await;
            }
            // Receive-only connections skip the split (and its lock on every read).
            _ => reader(&sh, c, ws, &streams, None).await,
        }
        if sh.stopping.get() {
            return;
        }
        if !sh.scenario.reconnect {
            sh.stats.borrow_mut().counters.disconnects += 1;
            return;
        }
        // A connection that ends right away again (say its resume cannot be served) must not
        // turn into a reconnect storm: the backoff only resets after a connection that lasted.
        if opened.elapsed() > Duration::from_secs(2) {
            backoff = MIN_BACKOFF;
        }
        match reconnect(&sh, c, &mut attempt, &mut backoff, &streams).await {
            Some(again) => {
                ws = again;
                sh.stats.borrow_mut().counters.reconnects += 1;
            }
            None => {
                if !sh.stopping.get() {
                    sh.stats.borrow_mut().counters.disconnects += 1;
                }
                return;
            }
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Opens connection `c` again, on the next node each attempt, after `backoff` (doubling up to
/// 1 s per failed attempt), and asks to `resume` every room it follows after the last seq it
/// saw there. `None` once the run is stopping.
async fn reconnect(
    sh: &Shard,
    c: u32,
    attempt: &mut usize,
    backoff: &mut Duration,
    streams: &RefCell<ConnStreams>,
) -> Option<Ws> {
    let layout = &*sh.layout;
    loop {
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        if sh.stopping.get() {
            return None;
        }
        *attempt += 1;
        let n = sh.targets.len();
        let target = &sh.targets[(layout.conn_url[c as usize] as usize + *attempt) % n];
        let source = client::source_ip(&target.addr, c as usize, sh.scenario.source_ips);
        let path = client::chat_path(&layout.user(c));
        if let Ok(mut ws) = client::connect(target, source, &path, sh.cfg).await {
            let mut keys: Vec<Key> = layout.conn_rooms[c as usize]
                .iter()
                .map(|&r| r as Key)
                .collect();
            if sh.scenario.dm_share > 0.0 {
                keys.extend(layout.dm_keys_of(c));
            }
            let resumes: Vec<Message> = {
                let mut cs = streams.borrow_mut();
                keys.iter()
                    .map(|&k| {
                        let after = cs.streams.entry(k).or_insert_with(|| Stream::new(0));
                        client::resume(&layout.room_of_key(k), after.highest())
                    })
                    .collect()
            };
            let mut ok = true;
            for m in resumes {
                ok = ok && ws.feed(m).await.is_ok();
            }
            if ok && ws.flush().await.is_ok() {
                return Some(ws);
            }
        }
    }
}

/// Reads one connection until it ends.
async fn reader<S>(
    sh: &Shard,
    c: u32,
    mut stream: S,
    streams: &RefCell<ConnStreams>,
    outbox: Option<&Rc<Outbox>>,
) where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    // With `reconnect`, an ended connection is expected (a drill): it is counted, not reported.
    let report = |e: String| {
        if !sh.stopping.get() && !sh.scenario.reconnect {
            sh.error(e);
        }
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(Message::Text(t)) => sh.on_frame(c, t.as_bytes(), Instant::now(), streams, outbox),
            Ok(Message::Close(f)) => {
                report(format!("connection {c} closed by the server: {f:?}"));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                report(format!("connection {c}: {e}"));
                break;
            }
        }
    }
}

/// A message of the sender's schedule: (role, k) from its cid.
type SendKey = (u32, u64);

/// The key of a keep-alive answer queued with the sends (no role has this number).
const PONG_KEY: SendKey = (u32::MAX, 0);

/// A send not answered yet (kept only with `reconnect`).
struct Pending {
    msg: Message,
    /// The connection generation that last carried it (0: waiting to be written).
    written: u32,
    /// `unavailable` answers so far (for the retry backoff).
    attempts: u32,
}

/// A sending connection's write side, which outlives each TCP connection: the schedule's
/// messages queue here and the [`writer_task`] writes them to the current connection.
struct Outbox {
    messages: mpsc::UnboundedSender<(SendKey, Message)>,
    /// Write halves of (re)opened connections, with their generation.
    sinks: mpsc::UnboundedSender<(u32, SplitSink<Ws, Message>)>,
    generation: Cell<u32>,
    /// With `reconnect`: every message not answered yet.
    pending: RefCell<HashMap<SendKey, Pending>>,
}

type OutboxParts = (
    Rc<Outbox>,
    mpsc::UnboundedReceiver<(SendKey, Message)>,
    mpsc::UnboundedReceiver<(u32, SplitSink<Ws, Message>)>,
);

impl Outbox {
    fn new() -> OutboxParts {
        let (messages, messages_rx) = mpsc::unbounded_channel();
        let (sinks, sinks_rx) = mpsc::unbounded_channel();
        let ob = Rc::new(Outbox {
            messages,
            sinks,
            generation: Cell::new(0),
            pending: RefCell::new(HashMap::new()),
        });
        (ob, messages_rx, sinks_rx)
    }
}

/// Retries a send answered `unavailable` with the same cid, after 50 ms doubling per attempt
/// up to 1 s (the server asks for exactly this: "retry with the same cid").
fn retry_later(ob: &Rc<Outbox>, key: SendKey) {
    let delay = {
        let mut pending = ob.pending.borrow_mut();
        let Some(p) = pending.get_mut(&key) else {
            return;
        };
        p.attempts += 1;
        p.written = 0;
        Duration::from_millis(50 << p.attempts.min(5).saturating_sub(1)).min(Duration::from_secs(1))
    };
    let ob = ob.clone();
    tokio::task::spawn_local(async move {
        tokio::time::sleep(delay).await;
        let msg = ob.pending.borrow().get(&key).map(|p| p.msg.clone());
        if let Some(msg) = msg {
            let _ = ob.messages.send((key, msg));
        }
    });
}

/// Writes a sending connection's messages to its current connection: everything queued at
/// once as one batch (`feed` each, one `flush`). On a new connection it first re-sends every
/// unanswered message the old one carried (`reconnect`).
async fn writer_task(
    sh: Rc<Shard>,
    c: u32,
    ob: Rc<Outbox>,
    mut messages: mpsc::UnboundedReceiver<(SendKey, Message)>,
    mut sinks: mpsc::UnboundedReceiver<(u32, SplitSink<Ws, Message>)>,
) {
    let reconnect = sh.scenario.reconnect;
    let mut current: Option<(u32, SplitSink<Ws, Message>)> = None;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            next = sinks.recv() => {
                let Some((generation, mut sink)) = next else { return };
                if reconnect {
                    // In send order: (k, role).
                    let mut again: Vec<(SendKey, Message)> = ob
                        .pending
                        .borrow()
                        .iter()
                        .filter(|(_, p)| p.written != 0 && p.written < generation)
                        .map(|(k, p)| (*k, p.msg.clone()))
                        .collect();
                    again.sort_unstable_by_key(|((role, k), _)| (*k, *role));
                    let mut ok = true;
                    for (key, msg) in again {
                        if let Some(p) = ob.pending.borrow_mut().get_mut(&key) {
                            p.written = generation;
                        }
                        sh.stats.borrow_mut().counters.retries += 1;
                        ok = ok && sink.feed(msg).await.is_ok();
                    }
                    if !(ok && sink.flush().await.is_ok()) {
                        continue; // this connection is gone already; the next one re-sends
                    }
                }
                current = Some((generation, sink));
            }
            first = messages.recv(), if current.is_some() => {
                let Some(first) = first else { return };
                batch.push(first);
                while let Ok(more) = messages.try_recv() {
                    batch.push(more);
                }
                let Some((generation, sink)) = current.as_mut() else { continue };
                let mut result = Ok(());
                for (key, msg) in batch.drain(..) {
                    if reconnect {
                        let mut pending = ob.pending.borrow_mut();
                        match pending.get_mut(&key) {
                            // Answered meanwhile, or already re-sent on this connection.
                            None => continue,
                            Some(p) if p.written == *generation => continue,
                            Some(p) => {
                                if p.attempts > 0 {
                                    sh.stats.borrow_mut().counters.retries += 1;
                                }
                                p.written = *generation;
                            }
                        }
                    }
                    if result.is_ok() {
                        result = sink.feed(msg).await;
                    }
                }
                if result.is_ok() {
                    result = sink.flush().await;
                }
                if let Err(e) = result {
                    if !reconnect && !sh.stopping.get() {
                        sh.error(format!("send on connection {c}: {e}"));
                    }
                    // Wait for the next connection (with `reconnect`; otherwise none comes and
                    // the rest stays unanswered).
                    current = None;
                }
            }
        }
    }
}

/// One sending connection's roles, each on its open-model schedule.
struct RoleRun {
    role: u32,
    schedule: Schedule,
    k: u64,
    room_head: Bytes,
    dm_head: Option<Bytes>,
}

/// Makes every message at (or, when behind, as soon as possible after) its intended time and
/// queues it in the connection's [`Outbox`]; messages due together leave as one batch.
async fn sender_task(sh: Rc<Shard>, c: u32, ob: Rc<Outbox>) {
    let start = sh.wait_start().await;
    let layout = sh.layout.clone();
    let s = sh.scenario.clone();
    let per_sender = s.rate / s.senders as f64;
    let mut runs: Vec<RoleRun> = layout.conn_roles[c as usize]
        .iter()
        .map(|&ri| {
            let role = &layout.roles[ri as usize];
            RoleRun {
                role: ri,
                schedule: Schedule::new(
                    per_sender,
                    s.total_secs(),
                    role.slot,
                    layout.roles.len(),
                    s.dm_share,
                ),
                k: 0,
                room_head: s.protocol.send_head(&layout.room(role.room)),
                dm_head: role.dm_peer.map(|p| client::dm_head(&layout.user(p))),
            }
        })
        .collect();
    let authority = &sh.targets[layout.conn_url[c as usize] as usize].authority;
    let mut enc = s.protocol.encoder(s.body, &s.pusher_app, authority);
    while let Some(next) = runs
        .iter()
        .filter(|r| r.k < r.schedule.count)
        .map(|r| r.schedule.intended(r.k))
        .min()
    {
        let due = start + Duration::from_nanos(next);
        if Instant::now() < due {
            sh.timer.sleep_until(due).await;
        }
        let now_ns = start.elapsed().as_nanos() as u64;
        for r in runs.iter_mut() {
            while r.k < r.schedule.count {
                let t = r.schedule.intended(r.k);
                if t > now_ns {
                    break;
                }
                let dm = r.schedule.is_dm(r.k) && r.dm_head.is_some();
                let head = match (&r.dm_head, dm) {
                    (Some(h), true) => h,
                    _ => &r.room_head,
                };
                let msg = enc.encode(head, r.role, r.k, t);
                let key = (r.role, r.k);
                if s.reconnect {
                    let pending = Pending {
                        msg: msg.clone(),
                        written: 0,
                        attempts: 0,
                    };
                    ob.pending.borrow_mut().insert(key, pending);
                }
                let _ = ob.messages.send((key, msg));
                sh.totals.sent.fetch_add(1, Relaxed);
                let mut st = sh.stats.borrow_mut();
                st.tick.sent += 1;
                st.counters.sent_dm += u64::from(dm);
                if t >= sh.warmup_ns {
                    st.counters.sent_measured += 1;
                    record_ns(&mut st.hists.send_lag, now_ns - t);
                }
                r.k += 1;
            }
        }
        // Let the writer take the batch before the next wake-up.
        tokio::task::yield_now().await;
    }
    sh.totals.senders_left.fetch_sub(1, Relaxed);
}

/// A slow consumer: joins room `i % rooms` with small buffers, reads normally until `stall_at`
/// seconds after the start, then stops reading. Once the schedule is over it reads what is
/// left (up to 10 s) to learn whether the server closed it. Its receptions are not verified.
async fn stalled_task(sh: Rc<Shard>, i: u32) {
    let layout = sh.layout.clone();
    let n = sh.targets.len();
    let target = &sh.targets[i as usize % n];
    let cfg = ConnConfig {
        read_buffer: 4096,
        write_buffer: 4096,
        socket_buffer: 4096,
    };
    let user = format!("{}s{i}", layout.prefix);
    let room = layout.room(i % layout.rooms);
    let joined = async {
        let mut ws = client::connect(target, None, &client::chat_path(&user), cfg).await?;
        ws.send(client::join(&room))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let m = client::parse(t.as_bytes());
                    match m.map(|m| m.kind) {
                        Some(Kind::Joined) => return Ok(ws),
                        Some(Kind::Error) => return Err(format!("join: {}", t.as_str())),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed while joining".to_string()),
            }
        }
    };
    let ws = tokio::time::timeout(Duration::from_secs(30), joined).await;
    sh.ready_one();
    let mut ws = match ws {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            sh.error(format!("stalled connection {i}: {e}"));
            sh.stats.borrow_mut().counters.connect_errors += 1;
            sh.totals.stalled_left.fetch_sub(1, Relaxed);
            return;
        }
        Err(_) => {
            sh.error(format!("stalled connection {i}: no joined within 30 s"));
            sh.stats.borrow_mut().counters.connect_errors += 1;
            sh.totals.stalled_left.fetch_sub(1, Relaxed);
            return;
        }
    };
    let start = sh.wait_start().await;
    let stall = start + Duration::from_secs_f64(sh.scenario.stall_at);
    let mut closed = false;
    while !closed {
        match tokio::time::timeout_at(stall.into(), ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => closed = true,
            Ok(Some(Ok(_))) => {}
        }
    }
    // Not reading: the server's queue for this connection fills up.
    let end = start + Duration::from_secs_f64(sh.scenario.total_secs());
    tokio::time::sleep_until(end.into()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !closed {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => closed = true,
            Ok(Some(Ok(_))) => {}
        }
    }
    sh.stats.borrow_mut().counters.stalled_disconnected += u64::from(closed);
    sh.totals.stalled_left.fetch_sub(1, Relaxed);
}
