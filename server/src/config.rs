//! Command-line flags, each with an environment fallback (`CHAT_*`).

use clap::Parser;
use std::net::SocketAddr;

/// A thread-per-core WebSocket chat server.
///
/// Standalone unless told where Redis, Kafka and PostgreSQL are: then every room lives in this
/// process, ordered by the core that owns it, and history is kept in memory.
#[derive(Parser, Debug, Clone)]
#[command(name = "chat-server", version)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port; the chosen address is printed as
    /// `listening on http://ADDR` (`https://` with `--tls-cert`) once every core accepts
    /// connections.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PEM certificate chain (leaf first): with `--tls-key`, the listen port speaks TLS only
    /// (`wss://`, `https://`; TLS 1.2 and 1.3, ALPN `http/1.1`). SIGHUP reads both files again
    /// without dropping connections; a reload that fails keeps the current certificate.
    #[arg(long, env = "CHAT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "CHAT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Event-loop threads, one per core (default: the number of cores).
    #[arg(long, env = "CHAT_THREADS")]
    pub threads: Option<usize>,

    /// Each core's I/O driver: `auto` (io_uring where the kernel allows it, else epoll) or
    /// `epoll` (always). `chat_core_io_uring` in /metrics says which one runs.
    #[arg(long, env = "CHAT_IO_DRIVER", value_enum, default_value_t = IoDriver::Auto)]
    pub io_driver: IoDriver,

    /// Largest accepted frame and message, in bytes. A frame over it is closed with 1009; a
    /// fragmented message over it is answered `too_large`.
    #[arg(long, env = "CHAT_MAX_FRAME", default_value_t = 64 * 1024)]
    pub max_frame: usize,

    /// Largest accepted message `body`, in bytes (`too_large` beyond).
    #[arg(long, env = "CHAT_MAX_BODY", default_value_t = chat_wire::protocol::MAX_BODY)]
    pub max_body: usize,

    /// Recent messages kept per room for history and resume.
    #[arg(long, env = "CHAT_HISTORY_LEN", default_value_t = 1000)]
    pub history_len: usize,

    /// Standalone: bytes the recent messages of all rooms may take together (MiB), whatever
    /// the clients send; past it the oldest messages of any room are evicted first (their
    /// room keeps its seq, and `resume` reports `complete: false` beyond what is left).
    /// Cluster mode keeps this cache in Redis (bounded by --history-len per room).
    #[arg(long, env = "CHAT_HISTORY_MEMORY_MB", default_value_t = 512)]
    pub history_memory_mb: usize,

    /// Bytes queued for one slow connection before it is disconnected (close 1008).
    #[arg(long, env = "CHAT_OUTBOUND_LIMIT", default_value_t = 4 * 1024 * 1024)]
    pub outbound_limit: usize,

    /// SO_SNDBUF of every connection, bytes (0: the kernel's default, which autotunes up to
    /// net.ipv4.tcp_wmem's maximum, 4 MiB by default). A client that stops reading holds up
    /// to this much in the kernel besides its --outbound-limit queue; set it to make the
    /// slow-consumer bound a tight one.
    #[arg(long, env = "CHAT_SOCKET_SEND_BUFFER", default_value_t = 0)]
    pub socket_send_buffer: usize,

    /// Requests one connection may have in flight before the server stops reading from it.
    #[arg(long, env = "CHAT_MAX_INFLIGHT", default_value_t = 1024)]
    pub max_inflight: usize,

    /// Sustained `send`/`dm` rate allowed per connection, messages per second (0 = unlimited).
    #[arg(long, env = "CHAT_RATE_LIMIT", default_value_t = 1000.0)]
    pub rate_limit: f64,

    /// Burst allowed above the sustained rate, messages.
    #[arg(long, env = "CHAT_RATE_BURST", default_value_t = 2000.0)]
    pub rate_burst: f64,

    /// Sustained `join`/`history`/`resume` rate allowed per connection, requests per second
    /// (0 = unlimited); each reads the room's state, and in cluster mode Redis or PostgreSQL.
    #[arg(long, env = "CHAT_ROOM_RATE_LIMIT", default_value_t = 100.0)]
    pub room_rate_limit: f64,

    /// Burst allowed above the sustained `join`/`history`/`resume` rate, requests.
    #[arg(long, env = "CHAT_ROOM_RATE_BURST", default_value_t = 500.0)]
    pub room_rate_burst: f64,

    /// Most rooms one connection may be a member of at once (direct-message rooms not counted).
    #[arg(long, env = "CHAT_MAX_ROOMS_PER_CONN", default_value_t = 1000)]
    pub max_rooms_per_conn: usize,

    /// Seconds of silence before a connection is pinged; silent for twice this, it is closed.
    #[arg(long, env = "CHAT_IDLE_PING", default_value_t = 30)]
    pub idle_ping: u64,

    /// Milliseconds a new connection has to send its whole request head; past it the server
    /// answers 408 and closes (an unfinished head is never kept). Sockets still sending their
    /// head count against `--max-connections`.
    #[arg(long, env = "CHAT_HEAD_TIMEOUT_MS", default_value_t = 5_000)]
    pub head_timeout_ms: u64,

    /// Seconds a closing connection gets to finish the close handshake (and a slow consumer to
    /// read up to its close frame) before it is cut.
    #[arg(long, env = "CHAT_CLOSE_TIMEOUT", default_value_t = 10.0)]
    pub close_timeout: f64,

    /// Seconds a `(from, cid)` pair is remembered to answer retries with the first message.
    #[arg(long, env = "CHAT_DEDUPE_WINDOW", default_value_t = 300)]
    pub dedupe_window: u64,

    /// Most `(from, cid)` pairs remembered per core (kept in 256 shards of capacity/256 each;
    /// beyond it a shard forgets its oldest first).
    #[arg(long, env = "CHAT_DEDUPE_CAPACITY", default_value_t = 1_000_000)]
    pub dedupe_capacity: usize,

    /// Redis for cluster mode: one URL (`redis://127.0.0.1:6379`), or several comma-separated
    /// seeds of a Redis Cluster (a single URL of a cluster node works too).
    #[arg(long, env = "CHAT_REDIS_URL", value_delimiter = ',')]
    pub redis: Vec<String>,

    /// Replicas every Redis write must reach (`WAIT`) before its message is published, produced
    /// to Kafka and acked, and before a read (join, history, resume, gap fill) is answered. Set
    /// it to the replicas per master of a Redis with replicas: then a failover that promotes a
    /// replica never loses a seq anyone saw, so no seq is ever given twice (see
    /// server/src/bus/replication.rs). 0 (default): no replicas are waited for.
    #[arg(long, env = "CHAT_REDIS_REPLICAS", default_value_t = 0)]
    pub redis_replicas: u32,

    /// How long one `WAIT` for `--redis-replicas` may take, ms; past it the writes count as
    /// not replicated and their senders get `unavailable` (they retry with the same `cid`).
    #[arg(long, env = "CHAT_REDIS_WAIT_MS", default_value_t = 1_000)]
    pub redis_wait_ms: u64,

    /// Cluster mode: seconds after which the users of a node that stopped answering (its
    /// heartbeat in Redis is older) go `offline` (v1.1 presence). Standalone: unused (a dead
    /// process takes its presence with it).
    #[arg(long, env = "CHAT_PRESENCE_TTL", default_value_t = 15.0)]
    pub presence_ttl: f64,

    /// Kafka bootstrap servers (`host:port,...`): every message is produced there before its
    /// sender gets `ack`. Needs `--redis`.
    #[arg(long, env = "CHAT_KAFKA_BROKERS")]
    pub kafka: Option<String>,

    /// Kafka topic of the messages.
    #[arg(long, env = "CHAT_KAFKA_TOPIC", default_value = "chat.messages")]
    pub kafka_topic: String,

    /// Messages waiting for Kafka at most; past it sends get `unavailable`.
    #[arg(long, env = "CHAT_KAFKA_BACKLOG", default_value_t = 100_000)]
    pub kafka_backlog: usize,

    /// How long a message may wait for Kafka (an outage included) before its sender gets
    /// `unavailable` instead of `ack`, ms.
    #[arg(long, env = "CHAT_KAFKA_TIMEOUT_MS", default_value_t = 30_000)]
    pub kafka_timeout_ms: u64,

    /// How long the Kafka producer waits to fill a batch, ms.
    #[arg(long, env = "CHAT_KAFKA_LINGER_MS", default_value_t = 1)]
    pub kafka_linger_ms: u64,

    /// PostgreSQL written by the persister (`postgres://user@host/db`): `history` and `resume`
    /// read past the Redis cache from it. Needs `--redis`.
    #[arg(long, env = "CHAT_POSTGRES_URL")]
    pub postgres: Option<String>,

    /// Most `history`/`resume` replays reading PostgreSQL at once on this node (a reconnect
    /// storm cannot melt the database); the others wait, up to --pg-replay-wait seconds, and
    /// are then answered `unavailable`. A replay holds its place while its client reads it.
    #[arg(long, env = "CHAT_PG_REPLAYS", default_value_t = 16)]
    pub pg_replays: usize,

    /// How long a replay waits for one of the --pg-replays places, seconds.
    #[arg(long, env = "CHAT_PG_REPLAY_WAIT", default_value_t = 10.0)]
    pub pg_replay_wait: f64,

    /// HS256 secret: when set, every WebSocket needs `?token=<JWT>` (`sub` = user id, `exp`
    /// checked) and `?user=` is ignored; a bad or missing token gets 401 before the upgrade.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Bearer key of the server publish API (`POST /api/publish`, `GET /api/history`): backends
    /// send `Authorization: Bearer <key>`. Unset: the API is off and `/api/*` answers 404.
    #[arg(long, env = "CHAT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Browser origins allowed to open a WebSocket (comma-separated, e.g.
    /// `https://chat.example.com`). Empty: any. Requests without an Origin header (non-browser
    /// clients) are always allowed.
    #[arg(long, env = "CHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// With `--allowed-origins`: refuse (403) upgrades without an Origin header too, so that
    /// only the listed browser origins can connect (no non-browser clients).
    #[arg(long, env = "CHAT_REQUIRE_ORIGIN")]
    pub require_origin: bool,

    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it: text messages of
    /// 128 bytes or more go out compressed, once per message per core. `false` answers every
    /// offer uncompressed.
    #[arg(long, env = "CHAT_DEFLATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub deflate: bool,

    /// Most open WebSocket connections on this node; more get 503 before the upgrade.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 200_000)]
    pub max_connections: u64,

    /// Most sockets one client address may hold at once, upgraded or handshaking (0 = no
    /// limit; behind a proxy every client shares its address). `429` beyond.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,

    /// Seconds to keep serving after SIGTERM (health turns 503, new sends get `unavailable`)
    /// before connections are closed with 1001.
    #[arg(long, env = "CHAT_DRAIN_GRACE", default_value_t = 2.0)]
    pub drain_grace: f64,
}

impl Config {
    /// Checks combinations clap cannot.
    pub fn validate(&self) -> Result<usize, String> {
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 || threads > crate::bus::memory::CoreSet::MAX_CORES {
            return Err(format!(
                "--threads must be 1-{}",
                crate::bus::memory::CoreSet::MAX_CORES
            ));
        }
        if self
            .jwt_secret
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(
                "--jwt-secret must not be empty (any token would be signed with it)".into(),
            );
        }
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err("--api-key must not be empty (anyone could publish as anyone)".into());
        }
        if self.require_origin && self.allowed_origins.is_empty() {
            return Err("--require-origin needs --allowed-origins".into());
        }
        if self.max_frame < 1024 {
            return Err("--max-frame must be at least 1024 bytes".into());
        }
        if self.idle_ping == 0 {
            return Err("--idle-ping must be at least 1 second".into());
        }
        if self.postgres.is_some() && self.redis.is_empty() {
            return Err("--postgres needs --redis (cluster mode)".into());
        }
        if self.kafka.is_some() && self.redis.is_empty() {
            return Err("--kafka needs --redis (cluster mode)".into());
        }
        if self.rate_limit < 0.0 || self.rate_burst < 1.0 {
            return Err("--rate-limit must be >= 0 and --rate-burst >= 1".into());
        }
        if self.room_rate_limit < 0.0 || self.room_rate_burst < 1.0 {
            return Err("--room-rate-limit must be >= 0 and --room-rate-burst >= 1".into());
        }
        if self.max_rooms_per_conn == 0 {
            return Err("--max-rooms-per-conn must be at least 1".into());
        }
        Ok(threads)
    }
}

/// `--io-driver`: what each core's monoio runtime is built on.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring where the kernel allows it, else epoll (monoio's `FusionDriver`).
    Auto,
    /// epoll always (monoio's `LegacyDriver`).
    Epoll,
}
