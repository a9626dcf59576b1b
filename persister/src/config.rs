//! Command-line flags, each with an environment fallback (`CHAT_*`), as the server has them,
//! and the choices they name ([`CopyMode`], [`OutOfRangePolicy`]). Nothing of the crate below
//! it: every other module may read the flags.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// How batches reach `messages` (`--copy-mode`; see [`crate::copy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CopyMode {
    /// Direct COPY into `messages` under a savepoint; staging after a duplicate.
    Auto,
    /// Always COPY into the staging table, then `INSERT ... ON CONFLICT DO NOTHING`.
    Staging,
}

/// `--offset-out-of-range` (see [`crate::start_offset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutOfRangePolicy {
    /// Read again from the low watermark (records that exist are never skipped).
    Reread,
    /// Refuse the assignment and exit (status 3).
    Stop,
}

/// Consumes the chat Kafka topic and writes every `msg` record to PostgreSQL's `messages` table
/// with binary COPY, exactly once in effect: the consumed offsets are stored in PostgreSQL in
/// the same transaction as the rows, and consumption resumes from there.
#[derive(Parser, Debug, Clone)]
#[command(name = "chat-persister", version)]
pub struct Config {
    /// Kafka bootstrap servers (`host:port[,host:port...]`).
    #[arg(long, env = "CHAT_KAFKA_BROKERS")]
    pub kafka: String,

    /// PostgreSQL connection string (`postgres://user@host:port/db` or `key=value` form).
    #[arg(long, env = "CHAT_POSTGRES_URL")]
    pub postgres: String,

    /// Topic to consume (the server's `--kafka-topic`; `--kafka-topic` works here too).
    #[arg(
        long,
        alias = "kafka-topic",
        env = "CHAT_KAFKA_TOPIC",
        default_value = "chat.messages"
    )]
    pub topic: String,

    /// Kafka consumer group. Persisters of one group share the topic's partitions.
    #[arg(long, env = "CHAT_PERSISTER_GROUP", default_value = "chat-persister")]
    pub group: String,

    /// Most records in one batch (one PostgreSQL transaction).
    #[arg(long, env = "CHAT_PERSISTER_BATCH_MAX", default_value_t = 10_000)]
    pub batch_max: usize,

    /// Milliseconds a batch waits for more records after its first one. While the previous
    /// batch is still being written, the next one keeps growing (up to `--batch-max`).
    #[arg(long, env = "CHAT_PERSISTER_BATCH_WAIT_MS", default_value_t = 50)]
    pub batch_wait_ms: u64,

    /// Address of the `/metrics` endpoint (Prometheus text). Port 0 picks a free port; the
    /// address is printed first on stdout as `metrics on http://ADDR`.
    #[arg(
        long,
        env = "CHAT_PERSISTER_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_listen: SocketAddr,

    /// Seconds between the one-line progress logs (rows/s, batches, lag, dead letters); 0 = off.
    #[arg(long, env = "CHAT_PERSISTER_LOG_INTERVAL", default_value_t = 10)]
    pub log_interval: u64,

    /// Milliseconds between watermark fetches for the consumer-lag gauges.
    #[arg(long, env = "CHAT_PERSISTER_LAG_INTERVAL_MS", default_value_t = 5_000)]
    pub lag_interval_ms: u64,

    /// Kafka consumer-group session timeout in milliseconds: how long a crashed persister's
    /// partitions wait before the group hands them to another member.
    #[arg(
        long,
        env = "CHAT_PERSISTER_SESSION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub session_timeout_ms: u64,

    /// Longest pause between two attempts of a failed PostgreSQL write (the backoff doubles
    /// from 100 ms up to this). A batch is retried until it is written, never skipped.
    #[arg(long, env = "CHAT_PERSISTER_RETRY_MAX_MS", default_value_t = 5_000)]
    pub retry_max_ms: u64,

    /// Milliseconds one batch's transaction may take before the connection is dropped and the
    /// batch retried on a new one (guards against a silently dead link).
    #[arg(
        long,
        env = "CHAT_PERSISTER_WRITE_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub write_timeout_ms: u64,

    /// How rows reach `messages`: `auto` copies straight into it under a savepoint and falls
    /// back to the staging table when a batch meets a row that is there already; `staging`
    /// always goes through the staging table. Both are exactly once.
    #[arg(long, env = "CHAT_PERSISTER_COPY_MODE", value_enum, default_value_t = CopyMode::Auto)]
    pub copy_mode: CopyMode,

    /// What to do when a partition's stored offset lies outside its log (ahead of the high
    /// watermark: the topic was recreated or the broker replaced; behind the low watermark:
    /// retention deleted records before they were persisted). Either case is logged as an
    /// error and counted. `reread` starts at the low watermark, never skipping a record that
    /// exists (`(room, seq)` makes re-reading harmless); `stop` exits with status 3.
    #[arg(long, env = "CHAT_PERSISTER_OFFSET_OUT_OF_RANGE", value_enum, default_value_t = OutOfRangePolicy::Reread)]
    pub offset_out_of_range: OutOfRangePolicy,

    /// Extra librdkafka consumer settings, `key=value`, repeatable (say
    /// `--kafka-option fetch.max.bytes=104857600`).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
}

impl Config {
    /// Checks what clap cannot; the message is for a human.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_max == 0 {
            return Err("--batch-max must be at least 1".into());
        }
        if self.topic.is_empty() {
            return Err("--topic must not be empty".into());
        }
        if self.group.is_empty() {
            return Err("--group must not be empty".into());
        }
        for option in &self.kafka_options {
            if !option.contains('=') {
                return Err(format!("--kafka-option {option:?}: expected KEY=VALUE"));
            }
        }
        self.postgres
            .parse::<tokio_postgres::Config>()
            .map_err(|e| format!("--postgres: {e}"))?;
        Ok(())
    }

    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_wait_ms)
    }

    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.retry_max_ms.max(100))
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms.max(1))
    }
}
