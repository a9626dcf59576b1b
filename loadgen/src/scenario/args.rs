//! The scenario flags of `loadgen run` and `loadgen sweep`: each one overrides the TOML file's
//! value, which overrides the default.

use super::{Pause, Scenario};

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
    /// v1.1 mix: users that come and go in the rooms (presence churn).
    #[arg(long)]
    pub churn: Option<usize>,
    /// Seconds between one churning user's connects (it stays for the first half).
    #[arg(long)]
    pub churn_period: Option<f64>,
    /// `typing` requests/s over all churning users.
    #[arg(long)]
    pub typing_rate: Option<f64>,
    /// `read` requests/s over all rooms.
    #[arg(long)]
    pub read_rate: Option<f64>,
    /// Users that join rooms of their own before the start and stay (presence held).
    #[arg(long)]
    pub present: Option<usize>,
    /// After the run, measure the kernel's floor for the same deliveries (`loadgen floor`) and
    /// report the server's CPU per delivery as a multiple of it.
    #[arg(long)]
    pub floor: bool,
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
            stall_at,
            churn,
            churn_period,
            typing_rate,
            read_rate,
            present
        );
        s.reconnect |= self.reconnect;
        s.floor |= self.floor;
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
