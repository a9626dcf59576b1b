//! The state one shard thread's tasks share (plain `RefCell`s and `Cell`s: one thread touches
//! them), and the few atomics the controller reads while draining.

use crate::client::ConnConfig;
use crate::client::Target;
use crate::persist;
use crate::report::AckRecord;
use crate::scenario::{Key, Layout, Scenario};
use crate::stats::{Counters, Hists, Tick};
use crate::timer::PreciseTimer;
use crate::verify::Stream;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch, Notify};

/// Counters the controller watches while draining (written by one shard, read by the
/// controller).
#[derive(Default)]
pub(super) struct Totals {
    pub(super) sent: AtomicU64,
    pub(super) answered: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) expected: AtomicU64,
    pub(super) senders_left: AtomicU64,
    /// Stalled connections still waiting to learn whether the server closed them.
    pub(super) stalled_left: AtomicU64,
}

/// One shard thread's state, shared by its tasks.
pub(super) struct Shard {
    pub(super) layout: Arc<Layout>,
    pub(super) scenario: Arc<Scenario>,
    pub(super) targets: Arc<Vec<Target>>,
    pub(super) totals: Arc<Totals>,
    pub(super) cfg: ConnConfig,
    pub(super) warmup_ns: u64,
    pub(super) stats: RefCell<ShardStats>,
    pub(super) start: Cell<Option<Instant>>,
    pub(super) start_signal: watch::Sender<Option<Instant>>,
    pub(super) ready_left: Cell<usize>,
    pub(super) ready_notify: Notify,
    pub(super) stopping: Cell<bool>,
    pub(super) conns: RefCell<Vec<(u32, Rc<RefCell<ConnStreams>>)>>,
    pub(super) tick_tx: mpsc::UnboundedSender<Tick>,
    pub(super) tick_second: Cell<u64>,
    pub(super) persist_tx: Option<mpsc::UnboundedSender<persist::Sample>>,
    pub(super) timer: Rc<PreciseTimer>,
}

pub(super) struct ShardStats {
    pub(super) counters: Counters,
    pub(super) hists: Hists,
    pub(super) tick: Tick,
    pub(super) acked_max: HashMap<Key, u64>,
    pub(super) first_error: Option<String>,
    pub(super) acks: Vec<AckRecord>,
    /// Messages answered `unavailable` at least once (re-sent), by (role, k), until acked.
    pub(super) refused: std::collections::HashSet<(u32, u64)>,
}

/// A receiver's streams, by room key.
#[derive(Default)]
pub(super) struct ConnStreams {
    pub(super) streams: HashMap<Key, Stream>,
}

impl Shard {
    pub(super) fn error(&self, e: String) {
        self.stats.borrow_mut().first_error.get_or_insert(e);
    }

    pub(super) fn ready_one(&self) {
        self.ready_left.set(self.ready_left.get() - 1);
        if self.ready_left.get() == 0 {
            self.ready_notify.notify_one();
        }
    }

    pub(super) async fn wait_start(&self) -> Instant {
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

    pub(super) fn emit_tick(&self) {
        let s = self.tick_second.get();
        let mut st = self.stats.borrow_mut();
        let t = std::mem::replace(&mut st.tick, Tick::new(s + 1));
        let _ = self.tick_tx.send(t);
        self.tick_second.set(s + 1);
    }
}
