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
    /// One inbox per core; `mailboxes[i]` belongs to core `i`. In cluster mode one more, last:
    /// the cluster bus thread's.
    pub mailboxes: Arc<[Mailbox]>,
    /// Cluster mode: rooms are ordered by Redis through the bus thread.
    pub cluster: bool,
    pub metrics: Metrics,
    /// Random per process: part of every message id this process assigns.
    pub node_id: u64,
    draining: AtomicBool,
    /// Token checks, when `--jwt-secret` is set.
    pub auth: Option<crate::auth::JwtAuth>,
    /// Sockets per client address (`--max-connections-per-ip`).
    pub per_ip: crate::per_ip::PerIp,
    /// TLS on the listen port (`--tls-cert`, `--tls-key`); plain TCP without.
    pub tls: Option<crate::tls::Tls>,
}

impl Node {
    pub fn new(
        config: Config,
        threads: usize,
        cluster: bool,
        tls: Option<crate::tls::Tls>,
    ) -> Arc<Node> {
        Arc::new(Node {
            threads,
            mailboxes: (0..threads + cluster as usize)
                .map(|_| Mailbox::default())
                .collect(),
            cluster,
            metrics: Metrics::new(threads),
            node_id: fastrand::u64(..),
            draining: AtomicBool::new(false),
            auth: config.jwt_secret.as_deref().map(crate::auth::JwtAuth::new),
            per_ip: crate::per_ip::PerIp::new(config.max_connections_per_ip),
            tls,
            config,
        })
    }

    /// Accepted sockets on all cores still sending their request head.
    pub fn handshaking(&self) -> u64 {
        self.metrics
            .cores
            .iter()
            .map(|c| c.handshaking.load(Ordering::Relaxed))
            .sum()
    }

    /// Open WebSocket connections on all cores.
    pub fn open_connections(&self) -> u64 {
        self.metrics
            .cores
            .iter()
            .map(|c| c.connections.load(Ordering::Relaxed))
            .sum()
    }

    /// Where requests about a room or user channel go: its owner core, or the cluster bus.
    pub fn route(&self, name: &str) -> crate::messages::CoreId {
        if self.cluster {
            self.threads
        } else {
            crate::fanout::owner_of(name, self.threads)
        }
    }

    /// Where a user's channel lives (kept apart from a room of the same name).
    pub fn route_user(&self, user: &str) -> crate::messages::CoreId {
        if self.cluster {
            self.threads
        } else {
            crate::fanout::user_owner(user, self.threads)
        }
    }

    /// True after SIGTERM: health is 503, no new WebSockets, new sends get `unavailable`.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
