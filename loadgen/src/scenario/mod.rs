//! The scenario: what load to apply, from flags or a TOML file (flags win), how it splits over
//! agents, and the [`Layout`] of one share: which connection goes to which node, joins which
//! rooms and sends where.
//!
//! Layout rules (deterministic, so every agent and every rerun builds the same one):
//! * room `r` has `members` member slots; slot `(r, m)` is connection `(r * members + m) %
//!   connections`, so with `connections = rooms * members` (the default) every connection is in
//!   exactly one room, with fewer each is in several, and any more stay idle (connected only);
//! * sender `k` is member `k / rooms` of room `k % rooms`, so senders spread over rooms;
//! * with several server URLs a room's senders sit on node `r % nodes` and its receivers on the
//!   other nodes, so every delivery crosses nodes and the nodes get the same load;
//! * a sender's DM peer is a receiver of the next room (so DMs cross nodes too).
//!
//! The files: this one holds the [`Scenario`] itself (defaults, checks, the split over
//! agents); `args.rs` the flags that override it ([`ScenarioArgs`]); `layout.rs` the
//! [`Layout`] of a share and the room [`Key`]s verification uses.

mod args;
mod layout;
#[cfg(test)]
mod tests;

pub use args::ScenarioArgs;
pub use layout::{dm_key, dm_users, is_dm_key, Key, Layout, Role};

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a run needs to know about the load. Serialized into `result.json` and, per
/// share, sent to agents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Name of the run: results go to `results/<name>/`.
    pub name: String,
    /// WebSocket base URLs of the server nodes (`ws://host:port`).
    pub urls: Vec<String>,
    /// Connections in total (0: `rooms * members`).
    pub connections: usize,
    pub rooms: usize,
    /// Members per room.
    pub members: usize,
    /// Sending members in total, spread over rooms.
    pub senders: usize,
    /// Messages per second over all senders.
    pub rate: f64,
    /// Message body size in bytes.
    pub body: usize,
    /// Share of sends that are direct messages (0..=1).
    pub dm_share: f64,
    /// Seconds of load before measuring (latencies not recorded, everything verified).
    pub warmup: f64,
    /// Seconds of measured load.
    pub duration: f64,
    /// New connections per second while setting up.
    pub connect_rate: f64,
    /// Source addresses 127.0.0.1 .. 127.0.0.N for loopback targets (past 64k connections).
    pub source_ips: usize,
    /// Load-generator threads (each a single-threaded runtime with its connections).
    pub threads: usize,
    /// WebSocket read buffer per connection, bytes.
    pub read_buffer: usize,
    /// WebSocket write buffer per connection before it writes through, bytes.
    pub write_buffer: usize,
    /// Socket send/receive buffer, bytes (0: the kernel's default and autotuning).
    pub socket_buffer: usize,
    /// Seconds to wait after the last send for acks and deliveries.
    pub drain_timeout: f64,
    /// PostgreSQL URL: measure persistence latency on a sample of messages.
    pub postgres: Option<String>,
    /// One message in this many is sampled for persistence latency.
    pub persist_sample: u64,
    /// Seconds a sampled message may take to show up in PostgreSQL before it counts as missing.
    pub persist_timeout: f64,
    /// Self-check only: block the first load-generator thread for `length` s at `at` s after
    /// the start.
    pub inject_pause: Option<Pause>,
    /// Survive failures like a production client: a connection that ends before the run does
    /// reconnects to the next node and `resume`s its rooms; unanswered sends are re-sent with
    /// the same cid, and sends answered `unavailable` are retried after a backoff.
    pub reconnect: bool,
    /// Keep every ack (room, seq, cid) in the result (`acks`), for checks against PostgreSQL.
    pub record_acks: bool,
    /// Extra connections (one per room, round-robin) that stop reading from their socket at
    /// `stall_at` s after the start: slow consumers the server must disconnect. Not verified.
    pub stalled: usize,
    /// Seconds after the start at which the `stalled` connections stop reading.
    pub stall_at: f64,
    /// The servers' protocol: ours, or a peer's (`peers/`).
    pub protocol: crate::proto::Protocol,
    /// The Pusher app (`--protocol pusher`).
    pub pusher_app: crate::proto::pusher::App,
    /// Server CPU from these processes' `/proc/PID/stat` instead of each node's `/metrics`.
    pub server_pids: Vec<u32>,
    /// Redis's pid: its CPU over the run is reported too.
    pub redis_pid: Option<u32>,
    /// v1.1 mix ([`crate::social`]): users that come and go in the rooms, for presence churn.
    pub churn: usize,
    /// Seconds between one churning user's connects (it stays for the first half).
    pub churn_period: f64,
    /// `typing` requests per second over all churning users while they are in.
    pub typing_rate: f64,
    /// `read` requests per second over all rooms (each room's reader user, two devices).
    pub read_rate: f64,
    /// Users that join rooms of their own (10 each) before the start and stay.
    pub present: usize,
    /// After the run, measure the kernel's floor for the same deliveries ([`crate::floor`])
    /// and report the server's CPU per delivery as a multiple of it.
    pub floor: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    pub at: f64,
    pub length: f64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: String::new(),
            urls: vec!["ws://127.0.0.1:8080".into()],
            connections: 0,
            rooms: 10,
            members: 10,
            senders: 10,
            rate: 1000.0,
            body: 100,
            dm_share: 0.0,
            warmup: 2.0,
            duration: 10.0,
            connect_rate: 2000.0,
            source_ips: 1,
            threads: 1,
            read_buffer: 4 * 1024,
            write_buffer: 16 * 1024,
            socket_buffer: 0,
            drain_timeout: 10.0,
            postgres: None,
            persist_sample: 100,
            persist_timeout: 30.0,
            inject_pause: None,
            reconnect: false,
            record_acks: false,
            stalled: 0,
            stall_at: 0.0,
            protocol: crate::proto::Protocol::Chat,
            pusher_app: crate::proto::pusher::App::default(),
            server_pids: Vec::new(),
            redis_pid: None,
            churn: 0,
            churn_period: 2.0,
            typing_rate: 0.0,
            read_rate: 0.0,
            present: 0,
            floor: false,
        }
    }
}

impl Scenario {
    pub fn from_file(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Total seconds of sending (warm-up and measured).
    pub fn total_secs(&self) -> f64 {
        self.warmup + self.duration
    }

    /// Connections, with 0 resolved to `rooms * members`.
    pub fn connection_count(&self) -> usize {
        if self.connections == 0 {
            self.rooms * self.members
        } else {
            self.connections
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let bad = |m: String| Err(m);
        if self.urls.is_empty() {
            return bad("at least one server URL is needed".into());
        }
        for u in &self.urls {
            crate::client::Target::parse(u)?;
        }
        if self.rooms == 0 || self.members == 0 || self.senders == 0 {
            return bad("rooms, members and senders must each be at least 1".into());
        }
        if self.senders > self.rooms * self.members {
            return bad(format!(
                "{} senders do not fit in {} rooms of {} members",
                self.senders, self.rooms, self.members
            ));
        }
        if self.connection_count() < self.members {
            return bad(format!(
                "{} connections cannot fill a room of {} distinct members",
                self.connection_count(),
                self.members
            ));
        }
        if self.connection_count() >= 1 << 31 || self.rooms >= 1 << 31 {
            return bad("too many connections or rooms".into());
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return bad("rate must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.dm_share) {
            return bad("dm_share must be within 0..=1".into());
        }
        if self.warmup < 0.0 || self.duration <= 0.0 || self.drain_timeout < 0.0 {
            return bad("warmup must be >= 0 and duration > 0".into());
        }
        if self.connect_rate <= 0.0 || self.threads == 0 || self.persist_sample == 0 {
            return bad("connect_rate, threads and persist_sample must be positive".into());
        }
        if self.stall_at < 0.0 || !self.stall_at.is_finite() {
            return bad("stall_at must be >= 0".into());
        }
        self.protocol.validate(self)?;
        if crate::social::wanted(self) && self.protocol != crate::proto::Protocol::Chat {
            return bad("churn, read_rate and present speak the chat protocol only".into());
        }
        if !(self.churn_period > 0.0 && self.churn_period.is_finite()) {
            return bad("churn_period must be positive".into());
        }
        if !(self.typing_rate >= 0.0 && self.read_rate >= 0.0) {
            return bad("typing_rate and read_rate must be >= 0".into());
        }
        if self.typing_rate > 0.0 && self.churn == 0 {
            return bad("typing_rate needs churn (the churning users type)".into());
        }
        if self.body > 16 * 1024 {
            return bad("body is limited to 16 KiB by the protocol".into());
        }
        Ok(())
    }

    /// Splits the scenario into `n` shares, one per agent: rooms, senders and connections are
    /// divided (each room with all its members stays in one share, so verification is local),
    /// and each share's rate keeps the per-sender rate, so the shares add up exactly.
    pub fn split(&self, n: usize) -> Result<Vec<Scenario>, String> {
        self.validate()?;
        if n == 0 || n > self.rooms || n > self.senders {
            return Err(format!(
                "{n} agents need at least {n} rooms and {n} senders"
            ));
        }
        let part = |x: usize, a: usize| x / n + usize::from(a < x % n);
        let total_conns = self.connection_count();
        (0..n)
            .map(|a| {
                let mut s = self.clone();
                s.rooms = part(self.rooms, a);
                s.senders = part(self.senders, a);
                if self.connections != 0 {
                    s.connections = part(self.connections, a);
                }
                s.stalled = part(self.stalled, a);
                s.churn = part(self.churn, a);
                s.present = part(self.present, a);
                let room_share = s.rooms as f64 / self.rooms as f64;
                s.read_rate = self.read_rate * room_share;
                s.typing_rate = if self.churn == 0 {
                    0.0
                } else {
                    self.typing_rate * s.churn as f64 / self.churn as f64
                };
                s.rate = self.rate * s.senders as f64 / self.senders as f64;
                s.connect_rate =
                    self.connect_rate * s.connection_count() as f64 / total_conns as f64;
                s.validate()
                    .map_err(|e| format!("agent {a}'s share: {e}"))?;
                Ok(s)
            })
            .collect()
    }
}
