//! The process: what every core shares, set up once at start and read-only afterwards
//! (except the counters, each written by its own core, and the drain flag).

use crate::config::Config;
use crate::fanout::Mailbox;
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Node {
    pub config: Config,
    pub threads: usize,
    /// One inbox per core; `mailboxes[i]` belongs to core `i`.
    pub mailboxes: Arc<[Mailbox]>,
    pub metrics: Metrics,
    /// Random per process: part of every message id this process assigns.
    pub node_id: u64,
    draining: AtomicBool,
}

impl Node {
    pub fn new(config: Config, threads: usize) -> Arc<Node> {
        Arc::new(Node {
            config,
            threads,
            mailboxes: (0..threads).map(|_| Mailbox::default()).collect(),
            metrics: Metrics::new(threads),
            node_id: fastrand::u64(..),
            draining: AtomicBool::new(false),
        })
    }

    /// True after SIGTERM: health is 503, no new WebSockets, new sends get `unavailable`.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
