//! A shard thread's life: it builds the shard's state, opens its connections (and slow
//! consumers), reports ready, waits for the start instant, ticks every second, and, once told
//! to stop, hands its histograms, counters and streams to the controller.

use super::conn::conn_task;
use super::stalled::stalled_task;
use super::state::{Shard, ShardStats, Totals};
use crate::client::{ConnConfig, Target};
use crate::cpu;
use crate::persist;
use crate::report::AckRecord;
use crate::scenario::{Key, Layout, Scenario};
use crate::stats::{Counters, Hists, Tick};
use crate::timer::PreciseTimer;
use crate::verify::StreamSummary;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify};

pub(super) struct ShardReady {
    pub(super) counters: Counters,
    pub(super) first_error: Option<String>,
}

pub(super) struct ShardReport {
    pub(super) counters: Counters,
    pub(super) hists: Hists,
    pub(super) acked_max: HashMap<Key, u64>,
    pub(super) streams: Vec<(u32, Key, StreamSummary)>,
    pub(super) thread_utilization: f64,
    pub(super) first_error: Option<String>,
    pub(super) acks: Vec<AckRecord>,
}

pub(super) struct ShardInit {
    pub(super) layout: Arc<Layout>,
    pub(super) scenario: Arc<Scenario>,
    pub(super) targets: Arc<Vec<Target>>,
    pub(super) totals: Arc<Totals>,
    pub(super) conns: Vec<u32>,
    /// This shard's number (0..threads).
    pub(super) id: usize,
    /// Stalled connections (slow consumers) of this shard.
    pub(super) stalled: Vec<u32>,
    pub(super) setup: Instant,
    pub(super) ready_tx: oneshot::Sender<ShardReady>,
    pub(super) start_rx: oneshot::Receiver<Instant>,
    pub(super) stop_rx: watch::Receiver<bool>,
    pub(super) tick_tx: mpsc::UnboundedSender<Tick>,
    pub(super) persist_tx: Option<mpsc::UnboundedSender<persist::Sample>>,
}

pub(super) async fn shard_main(init: ShardInit) -> ShardReport {
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
        cfg: ConnConfig::of(&s),
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
