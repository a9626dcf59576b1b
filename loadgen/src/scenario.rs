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

use crate::schedule::parse_u64;
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
        }
    }
}

/// Scenario flags; each overrides the TOML file's value, which overrides the default.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ScenarioArgs {
    /// TOML file with scenario fields (names as in result.json's `scenario`).
    #[arg(long)]
    pub scenario: Option<std::path::PathBuf>,
    /// Run name: results go to `<results-dir>/<name>/`.
    #[arg(long)]
    pub name: Option<String>,
    /// Server WebSocket URLs, comma-separated (`ws://127.0.0.1:8081,ws://127.0.0.1:8082`).
    #[arg(long, value_delimiter = ',')]
    pub url: Option<Vec<String>>,
    /// Connections in total (default rooms × members; more are idle).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Rooms.
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Members per room.
    #[arg(long)]
    pub members: Option<usize>,
    /// Sending members in total.
    #[arg(long)]
    pub senders: Option<usize>,
    /// Target send rate, messages/s in total.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Body size in bytes.
    #[arg(long)]
    pub body: Option<usize>,
    /// Share of sends that are DMs (0..1).
    #[arg(long)]
    pub dm_share: Option<f64>,
    /// Warm-up seconds (not measured).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Measured seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Connections opened per second.
    #[arg(long)]
    pub connect_rate: Option<f64>,
    /// Spread source addresses over 127.0.0.1..N (loopback targets).
    #[arg(long)]
    pub source_ips: Option<usize>,
    /// Load-generator threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// WebSocket read buffer per connection (bytes).
    #[arg(long)]
    pub read_buffer: Option<usize>,
    /// WebSocket write buffer per connection (bytes).
    #[arg(long)]
    pub write_buffer: Option<usize>,
    /// SO_SNDBUF/SO_RCVBUF per socket (bytes, 0 = kernel default).
    #[arg(long)]
    pub socket_buffer: Option<usize>,
    /// Seconds to wait for outstanding acks and deliveries after the last send.
    #[arg(long)]
    pub drain_timeout: Option<f64>,
    /// PostgreSQL URL for sampled persistence latency.
    #[arg(long)]
    pub postgres: Option<String>,
    /// Sample one message in N for persistence latency.
    #[arg(long)]
    pub persist_sample: Option<u64>,
    /// Seconds before a sampled message counts as never persisted.
    #[arg(long)]
    pub persist_timeout: Option<f64>,
    /// Self-check: pause a load-generator thread, `AT:LENGTH` in seconds.
    #[arg(long, hide = true)]
    pub inject_pause: Option<String>,
    /// Reconnect (to the next node) and resume after a disconnect; retry unanswered and
    /// `unavailable` sends with the same cid.
    #[arg(long)]
    pub reconnect: bool,
    /// Keep every ack (room, seq, cid) in result.json.
    #[arg(long)]
    pub record_acks: bool,
    /// Slow consumers: this many extra connections that stop reading at --stall-at.
    #[arg(long)]
    pub stalled: Option<usize>,
    /// Seconds after the start at which the --stalled connections stop reading.
    #[arg(long)]
    pub stall_at: Option<f64>,
    /// The servers' protocol: chat (PROTOCOL.md), socketio or pusher (see peers/README.md).
    #[arg(long, value_enum)]
    pub protocol: Option<crate::proto::Protocol>,
    /// Pusher app credentials, ID:KEY:SECRET (default: the app peers/peer.sh configures).
    #[arg(long)]
    pub pusher_app: Option<String>,
    /// Measure server CPU from these local processes (/proc) instead of each node's /metrics.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Option<Vec<u32>>,
    /// Also report this local Redis process's CPU per delivery.
    #[arg(long)]
    pub redis_pid: Option<u32>,
}

impl ScenarioArgs {
    /// Default, then the TOML file, then the flags.
    pub fn resolve(&self) -> Result<Scenario, String> {
        let mut s = match &self.scenario {
            Some(p) => Scenario::from_file(p)?,
            None => Scenario::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = &self.$f { s.$f = v.clone(); })* };
        }
        set!(
            name,
            connections,
            rooms,
            members,
            senders,
            rate,
            body,
            dm_share,
            warmup,
            duration,
            connect_rate,
            source_ips,
            threads,
            read_buffer,
            write_buffer,
            socket_buffer,
            drain_timeout,
            persist_sample,
            persist_timeout,
            stalled,
            stall_at
        );
        s.reconnect |= self.reconnect;
        if let Some(p) = &self.server_pids {
            s.server_pids = p.clone();
        }
        s.redis_pid = self.redis_pid.or(s.redis_pid);
        if let Some(p) = self.protocol {
            s.protocol = p;
        }
        if let Some(a) = &self.pusher_app {
            s.pusher_app = crate::proto::pusher::App::parse(a)?;
        }
        s.record_acks |= self.record_acks;
        if let Some(u) = &self.url {
            s.urls = u.clone();
        }
        if let Some(p) = &self.postgres {
            s.postgres = Some(p.clone());
        }
        if let Some(p) = &self.inject_pause {
            let (at, length) = p
                .split_once(':')
                .and_then(|(a, l)| Some((a.parse().ok()?, l.parse().ok()?)))
                .ok_or("--inject-pause wants AT:LENGTH in seconds")?;
            s.inject_pause = Some(Pause { at, length });
        }
        s.validate()?;
        Ok(s)
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

/// Key of a room for verification: a room index, or the two user indexes of a DM room.
pub type Key = u64;
const DM_BIT: u64 = 1 << 63;

pub fn dm_key(a: u32, b: u32) -> Key {
    let (a, b) = if a < b { (a, b) } else { (b, a) };
    DM_BIT | (a as u64) << 32 | b as u64
}

pub fn is_dm_key(k: Key) -> bool {
    k & DM_BIT != 0
}

/// The two users of a DM key.
pub fn dm_users(k: Key) -> (u32, u32) {
    (((k & !DM_BIT) >> 32) as u32, k as u32)
}

/// One sending role: a connection sending to one room (and DMs to one peer).
#[derive(Clone, Debug)]
pub struct Role {
    pub conn: u32,
    pub room: u32,
    pub dm_peer: Option<u32>,
    /// This role's slot among the share's senders (spreads their phases).
    pub slot: usize,
}

/// Who does what in one share.
#[derive(Debug)]
pub struct Layout {
    /// Prefix of every user and room name of this share: `<run id>-a<agent>-`.
    pub prefix: String,
    pub rooms: u32,
    pub members: u32,
    pub conns: u32,
    pub roles: Vec<Role>,
    /// Per connection: the rooms it joins.
    pub conn_rooms: Vec<Vec<u32>>,
    /// Per connection: its roles.
    pub conn_roles: Vec<Vec<u32>>,
    /// Per connection: index into the scenario's URLs.
    pub conn_url: Vec<u32>,
}

impl Layout {
    pub fn new(s: &Scenario, run_id: &str, agent: usize) -> Layout {
        let (rooms, members) = (s.rooms as u32, s.members as u32);
        let conns = s.connection_count() as u32;
        let nodes = s.urls.len() as u32;
        let senders = s.senders as u32;
        let senders_in = |r: u32| senders / rooms + u32::from(r < senders % rooms);
        let slot_conn =
            |r: u32, m: u32| ((r as u64 * members as u64 + m as u64) % conns as u64) as u32;

        let mut conn_rooms = vec![Vec::new(); conns as usize];
        for r in 0..rooms {
            for m in 0..members {
                conn_rooms[slot_conn(r, m) as usize].push(r);
            }
        }
        let slots = rooms as u64 * members as u64;
        let conn_url = (0..conns)
            .map(|c| {
                if (c as u64) >= slots || nodes == 1 {
                    return c % nodes;
                }
                let (r, m) = (c / members, c % members);
                let s_r = senders_in(r);
                if m < s_r {
                    r % nodes
                } else {
                    (r + 1 + (m - s_r) % (nodes - 1)) % nodes
                }
            })
            .collect();
        let mut conn_roles = vec![Vec::new(); conns as usize];
        let roles = (0..senders)
            .map(|k| {
                let (r, m) = (k % rooms, k / rooms);
                let conn = slot_conn(r, m);
                let mut peer = slot_conn((r + 1) % rooms, members - 1);
                if peer == conn {
                    peer = slot_conn(r, (m + 1) % members);
                }
                conn_roles[conn as usize].push(k);
                Role {
                    conn,
                    room: r,
                    dm_peer: (peer != conn).then_some(peer),
                    slot: k as usize,
                }
            })
            .collect();
        Layout {
            prefix: format!("{run_id}-a{agent}-"),
            rooms,
            members,
            conns,
            roles,
            conn_rooms,
            conn_roles,
            conn_url,
        }
    }

    /// Connection of member slot `m` of room `r`.
    pub fn member(&self, r: u32, m: u32) -> u32 {
        ((r as u64 * self.members as u64 + m as u64) % self.conns as u64) as u32
    }

    pub fn user(&self, c: u32) -> String {
        format!("{}u{c}", self.prefix)
    }

    pub fn room(&self, r: u32) -> String {
        format!("{}r{r}", self.prefix)
    }

    /// The wire name of a room key: `<prefix>r<r>`, or `dm:<a>:<b>` with the two user names
    /// in byte order (as the server names DM rooms).
    pub fn room_of_key(&self, key: Key) -> String {
        if !is_dm_key(key) {
            return self.room(key as u32);
        }
        let (a, b) = dm_users(key);
        let (a, b) = (self.user(a), self.user(b));
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        format!("dm:{a}:{b}")
    }

    /// The DM rooms connection `c` takes part in (as a sender's peer or as a sender).
    pub fn dm_keys_of(&self, c: u32) -> Vec<Key> {
        let mut keys: Vec<Key> = self
            .roles
            .iter()
            .filter_map(|r| {
                let p = r.dm_peer?;
                (r.conn == c || p == c).then(|| dm_key(r.conn, p))
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Receptions one message to `key` calls for.
    pub fn receivers(&self, key: Key) -> u64 {
        if is_dm_key(key) {
            2
        } else {
            self.members as u64
        }
    }

    fn user_index(&self, name: &[u8]) -> Option<u32> {
        let rest = name
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b"u")?;
        let c = parse_u64(rest)?;
        (c < self.conns as u64).then_some(c as u32)
    }

    /// The verification key of a room name from the wire (no allocation).
    pub fn key_of_room(&self, name: &[u8]) -> Option<Key> {
        if let Some(users) = name.strip_prefix(b"dm:") {
            let colon = users.iter().position(|&b| b == b':')?;
            let a = self.user_index(&users[..colon])?;
            let b = self.user_index(&users[colon + 1..])?;
            return Some(dm_key(a, b));
        }
        let rest = name
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b"r")?;
        let r = parse_u64(rest)?;
        (r < self.rooms as u64).then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(urls: usize, rooms: usize, members: usize, senders: usize) -> Scenario {
        Scenario {
            urls: (0..urls)
                .map(|i| format!("ws://127.0.0.1:{}", 8081 + i))
                .collect(),
            rooms,
            members,
            senders,
            ..Scenario::default()
        }
    }

    #[test]
    fn senders_and_receivers_sit_on_different_nodes() {
        let s = scenario(2, 4, 5, 4);
        let l = Layout::new(&s, "t", 0);
        assert_eq!(l.conns, 20);
        for role in &l.roles {
            let sender_node = l.conn_url[role.conn as usize];
            for m in 0..l.members {
                let c = l.member(role.room, m);
                if c != role.conn {
                    assert_ne!(l.conn_url[c as usize], sender_node);
                }
            }
        }
        // Both nodes get half of the connections.
        let on0 = l.conn_url.iter().filter(|&&u| u == 0).count();
        assert_eq!(on0, 10);
        // Every connection is in exactly one room.
        assert!(l.conn_rooms.iter().all(|r| r.len() == 1));
    }

    #[test]
    fn names_map_back_to_keys() {
        let l = Layout::new(&scenario(1, 3, 4, 3), "lgabc", 1);
        assert_eq!(l.key_of_room(l.room(2).as_bytes()), Some(2));
        assert_eq!(l.key_of_room(b"lgabc-a1-r3"), None);
        assert_eq!(l.key_of_room(b"lgabc-a0-r1"), None);
        let dm = format!("dm:{}:{}", l.user(1), l.user(10));
        assert_eq!(l.key_of_room(dm.as_bytes()), Some(dm_key(10, 1)));
        assert_eq!(dm_users(dm_key(10, 1)), (1, 10));
        assert!(l.roles.iter().all(|r| r.dm_peer.is_some()));
        for r in 0..3 {
            chat_wire::protocol::validate_room(&l.room(r)).unwrap();
        }
        chat_wire::protocol::validate_user(&l.user(11)).unwrap();
    }

    #[test]
    fn split_adds_up() {
        let s = Scenario {
            rate: 1000.0,
            connections: 0,
            ..scenario(2, 10, 10, 10)
        };
        let parts = s.split(3).unwrap();
        assert_eq!(parts.iter().map(|p| p.rooms).sum::<usize>(), 10);
        assert_eq!(parts.iter().map(|p| p.senders).sum::<usize>(), 10);
        assert_eq!(
            parts.iter().map(|p| p.connection_count()).sum::<usize>(),
            100
        );
        let rate: f64 = parts.iter().map(|p| p.rate).sum();
        assert!((rate - 1000.0).abs() < 1e-9);
        for p in &parts {
            assert!((p.rate / p.senders as f64 - 100.0).abs() < 1e-9);
        }
        assert!(s.split(11).is_err());
    }

    #[test]
    fn toml_and_flags() {
        let dir = std::env::temp_dir().join(format!("loadgen-scn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.toml");
        std::fs::write(
            &f,
            "rooms = 3\nmembers = 4\nsenders = 3\nrate = 50.0\nurls = [\"ws://127.0.0.1:9\"]\n",
        )
        .unwrap();
        let args = ScenarioArgs {
            scenario: Some(f),
            rate: Some(75.0),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!((s.rooms, s.members, s.rate), (3, 4, 75.0));
        let back: Scenario = toml::from_str(&s.to_toml()).unwrap();
        assert_eq!(back, s);
        std::fs::remove_dir_all(&dir).ok();
    }
}
