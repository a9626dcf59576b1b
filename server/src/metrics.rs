//! Counters for `/metrics`, in the Prometheus text format.
//!
//! Each core writes only its own [`CoreCounters`] (cache-line aligned, relaxed atomics), so
//! counting never contends; a scrape reads them all and adds the standard process metrics from
//! `/proc/self`. Latency histograms follow the same rule: one per core (or the bus thread's),
//! merged into a single series when scraped ([`chat_histogram`]).

use chat_histogram::{render as render_histogram, Histogram};
use chat_process_metrics::ProcessStats;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One core's counters. Gauges go up and down; the rest only go up.
#[derive(Default)]
#[repr(align(128))]
pub struct CoreCounters {
    /// Open WebSocket connections (gauge).
    pub connections: AtomicU64,
    /// Accepted sockets still sending their request head (gauge), and heads that timed out.
    pub handshaking: AtomicU64,
    pub head_timeouts: AtomicU64,
    /// Connections to a TLS port that did not finish the handshake in time, failed it, or were
    /// not TLS at all (plain HTTP is answered 400).
    pub tls_handshake_failures: AtomicU64,
    /// Accepts that failed for want of a file descriptor (EMFILE/ENFILE; see accept.rs).
    pub accept_fd_exhausted: AtomicU64,
    pub connections_total: AtomicU64,
    pub http_requests: AtomicU64,
    /// Client requests decoded (any type).
    pub requests: AtomicU64,
    /// Messages this core ordered as a room owner (`seq` assigned).
    pub messages_published: AtomicU64,
    /// `msg` frames queued to this core's connections.
    pub messages_delivered: AtomicU64,
    /// v1.1 event frames (`online`, `offline`, `typing`, `read`, coalesced `presence`) queued.
    pub events_delivered: AtomicU64,
    /// Frames written to sockets, and their bytes.
    pub frames_out: AtomicU64,
    /// 1 when the core runs on io_uring, 0 on epoll (`--io-driver`).
    pub io_uring: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Requests answered with `error`.
    pub errors: AtomicU64,
    /// Connections closed for breaking RFC 6455 (1002/1003/1007/1009).
    pub frames_rejected: AtomicU64,
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumers: AtomicU64,
    /// permessage-deflate: compressed frames made (one per message per core, whatever the
    /// number of members), and compressed frames queued to connections.
    pub deflate_compressed: AtomicU64,
    pub deflate_sent: AtomicU64,
    /// Cross-core batches received, and the messages in them.
    pub mail_batches: AtomicU64,
    pub mail_messages: AtomicU64,
    /// Rooms owned by this core (gauge).
    pub rooms: AtomicU64,
    /// Standalone: `(room, from, cid)` pairs remembered for retries (gauge), and those forgotten
    /// before their window ended because the window was full (`--dedupe-capacity`).
    pub dedupe_pairs: AtomicU64,
    pub dedupe_evicted_early: AtomicU64,
    /// Standalone: bytes of the recent messages this core's rooms hold (gauge), and messages
    /// evicted to stay within `--history-memory`.
    pub history_bytes: AtomicU64,
    pub history_evicted: AtomicU64,
    /// From reading a `send`/`dm` to queueing its `ack` (in request order) on the connection.
    pub ack_latency: Histogram,
    /// Per `writev`: how long the oldest frame of the batch waited in the outbound queue.
    pub outbound_wait: Histogram,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Counters of the cluster bus thread (cluster mode only).
#[derive(Default)]
pub struct BusCounters {
    /// Pipelined round trips of the publish step, and the messages they carried.
    pub redis_round_trips: AtomicU64,
    pub redis_messages: AtomicU64,
    pub redis_retries: AtomicU64,
    pub redis_disconnects: AtomicU64,
    /// Redis round trips whose writes the replicas did not confirm in time (`--redis-replicas`),
    /// and changes of the Redis Cluster's slot-to-master map seen (failovers, resharding).
    pub redis_unreplicated: AtomicU64,
    pub redis_topology_changes: AtomicU64,
    /// Cluster clients replaced because the old one answered nothing (see bus/cluster/topology.rs).
    pub redis_client_rebuilds: AtomicU64,
    /// Kafka producers replaced because stuck or failed for good (see log/kafka.rs).
    pub kafka_producer_renewals: AtomicU64,
    pub pubsub_messages: AtomicU64,
    /// Gaps found in a room's stream, messages filled from the cache, and gaps the cache could
    /// not fill.
    pub gap_fills: AtomicU64,
    pub gap_messages: AtomicU64,
    pub gap_unrecoverable: AtomicU64,
    pub kafka_delivered: AtomicU64,
    pub kafka_failed: AtomicU64,
    /// Sends refused with `unavailable` because the Kafka backlog was full.
    pub unavailable: AtomicU64,
    /// Failed PostgreSQL reads (history/resume past the cache).
    pub pg_errors: AtomicU64,
    /// Replays answered `unavailable` for want of a place to read PostgreSQL (`--pg-replays`).
    pub pg_replays_refused: AtomicU64,
    /// 1 while the Redis links work, 0 after a lost link or a failed publish (gauge).
    pub redis_up: AtomicU64,
    /// Messages produced to Kafka and not yet confirmed (gauge).
    pub kafka_backlog: AtomicU64,
    /// One pipelined publish round trip (a batch of `EVALSHA`s).
    pub redis_batch: Histogram,
    /// From producing a message to Kafka's confirmation.
    pub kafka_delivery: Histogram,
    /// One PostgreSQL read for `history` or `resume`.
    pub pg_read: Histogram,
}

/// All cores' counters, and the bus's.
pub struct Metrics {
    pub cores: Box<[CoreCounters]>,
    pub bus: BusCounters,
}

impl Metrics {
    pub fn new(cores: usize) -> Self {
        Metrics {
            cores: (0..cores).map(|_| CoreCounters::default()).collect(),
            bus: BusCounters::default(),
        }
    }

    /// The whole `/metrics` page.
    pub fn render(&self, draining: bool) -> String {
        let mut out = String::with_capacity(4096);
        type Field = fn(&CoreCounters) -> &AtomicU64;
        let series: [(&str, &str, &str, Field); 27] = [
            (
                "chat_connections",
                "gauge",
                "Open WebSocket connections.",
                |c| &c.connections,
            ),
            (
                "chat_handshaking_connections",
                "gauge",
                "Accepted sockets still sending their request head.",
                |c| &c.handshaking,
            ),
            (
                "chat_head_timeouts_total",
                "counter",
                "Request heads not finished within --head-timeout-ms (answered 408, closed).",
                |c| &c.head_timeouts,
            ),
            (
                "chat_tls_handshake_failures_total",
                "counter",
                "Connections to the TLS port that failed or did not finish the handshake within --head-timeout-ms, or were not TLS.",
                |c| &c.tls_handshake_failures,
            ),
            (
                "chat_accept_fd_exhausted_total",
                "counter",
                "Accepts that failed for want of a file descriptor (the waiting connection is answered 503).",
                |c| &c.accept_fd_exhausted,
            ),
            (
                "chat_connections_total",
                "counter",
                "WebSocket connections accepted.",
                |c| &c.connections_total,
            ),
            (
                "chat_http_requests_total",
                "counter",
                "Plain HTTP requests served.",
                |c| &c.http_requests,
            ),
            (
                "chat_requests_total",
                "counter",
                "Client requests received (messages in).",
                |c| &c.requests,
            ),
            (
                "chat_messages_published_total",
                "counter",
                "Messages ordered (seq assigned) by this core.",
                |c| &c.messages_published,
            ),
            (
                "chat_messages_delivered_total",
                "counter",
                "msg frames queued to connections (messages out).",
                |c| &c.messages_delivered,
            ),
            (
                "chat_events_delivered_total",
                "counter",
                "Presence, typing and read events queued to connections.",
                |c| &c.events_delivered,
            ),
            (
                "chat_core_io_uring",
                "gauge",
                "1 when the core's I/O driver is io_uring, 0 when it is epoll (--io-driver).",
                |c| &c.io_uring,
            ),
            (
                "chat_frames_out_total",
                "counter",
                "Frames written to sockets.",
                |c| &c.frames_out,
            ),
            (
                "chat_bytes_out_total",
                "counter",
                "Bytes written to sockets.",
                |c| &c.bytes_out,
            ),
            (
                "chat_bytes_in_total",
                "counter",
                "Bytes read from sockets.",
                |c| &c.bytes_in,
            ),
            (
                "chat_errors_total",
                "counter",
                "Requests answered with an error.",
                |c| &c.errors,
            ),
            (
                "chat_frames_rejected_total",
                "counter",
                "Connections closed for protocol violations.",
                |c| &c.frames_rejected,
            ),
            (
                "chat_slow_consumer_disconnects_total",
                "counter",
                "Connections closed because their outbound queue overflowed.",
                |c| &c.slow_consumers,
            ),
            (
                "chat_deflate_compressed_total",
                "counter",
                "permessage-deflate frames compressed (once per message per core, shared by its members).",
                |c| &c.deflate_compressed,
            ),
            (
                "chat_deflate_frames_sent_total",
                "counter",
                "permessage-deflate frames queued to connections.",
                |c| &c.deflate_sent,
            ),
            (
                "chat_core_mail_batches_total",
                "counter",
                "Cross-core batches received.",
                |c| &c.mail_batches,
            ),
            (
                "chat_core_mail_messages_total",
                "counter",
                "Cross-core messages received.",
                |c| &c.mail_messages,
            ),
            ("chat_rooms", "gauge", "Rooms owned by this core.", |c| {
                &c.rooms
            }),
            (
                "chat_dedupe_pairs",
                "gauge",
                "Standalone: (room, from, cid) pairs remembered to answer retries.",
                |c| &c.dedupe_pairs,
            ),
            (
                "chat_dedupe_evicted_early_total",
                "counter",
                "Standalone: pairs forgotten before their window ended (--dedupe-capacity full).",
                |c| &c.dedupe_evicted_early,
            ),
            (
                "chat_history_bytes",
                "gauge",
                "Standalone: bytes of recent messages held for history/resume (--history-memory).",
                |c| &c.history_bytes,
            ),
            (
                "chat_history_evicted_total",
                "counter",
                "Standalone: messages evicted from recent history to stay within --history-memory.",
                |c| &c.history_evicted,
            ),
        ];
        for (name, kind, help, field) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, c) in self.cores.iter().enumerate() {
                let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", field(c).load(Relaxed));
            }
        }
        let b = &self.bus;
        let bus: [(&str, &str, &AtomicU64); 17] = [
            (
                "chat_redis_round_trips_total",
                "Pipelined round trips of the publish step.",
                &b.redis_round_trips,
            ),
            (
                "chat_redis_published_total",
                "Messages carried by those round trips.",
                &b.redis_messages,
            ),
            (
                "chat_redis_retries_total",
                "Redis requests retried after a failure.",
                &b.redis_retries,
            ),
            (
                "chat_redis_disconnects_total",
                "Redis links lost.",
                &b.redis_disconnects,
            ),
            (
                "chat_redis_unreplicated_total",
                "Redis round trips the replicas did not confirm in time (--redis-replicas); retried, then unavailable.",
                &b.redis_unreplicated,
            ),
            (
                "chat_redis_topology_changes_total",
                "Changes of the Redis Cluster slot-to-master map seen (failover, resharding): every channel re-subscribed, gaps filled.",
                &b.redis_topology_changes,
            ),
            (
                "chat_redis_client_rebuilds_total",
                "Redis Cluster clients replaced by a new one from the seeds after the old one answered nothing for 3 s.",
                &b.redis_client_rebuilds,
            ),
            (
                "chat_kafka_producer_renewals_total",
                "Kafka producers replaced by a new one: a fatal error, or records waiting 5 s with none delivered while the broker answers (a broker that forgot the producer id).",
                &b.kafka_producer_renewals,
            ),
            (
                "chat_pubsub_messages_total",
                "Messages received through Redis pub/sub.",
                &b.pubsub_messages,
            ),
            (
                "chat_gap_fills_total",
                "Gaps in a room's stream filled from the Redis cache.",
                &b.gap_fills,
            ),
            (
                "chat_gap_messages_total",
                "Messages delivered by gap fills.",
                &b.gap_messages,
            ),
            (
                "chat_gap_unrecoverable_total",
                "Gaps the cache could no longer fill.",
                &b.gap_unrecoverable,
            ),
            (
                "chat_kafka_delivered_total",
                "Messages Kafka confirmed (acks=all).",
                &b.kafka_delivered,
            ),
            (
                "chat_kafka_failed_total",
                "Messages Kafka did not take in time (no ack sent).",
                &b.kafka_failed,
            ),
            (
                "chat_unavailable_total",
                "Sends refused because the Kafka backlog was full.",
                &b.unavailable,
            ),
            (
                "chat_postgres_errors_total",
                "Failed PostgreSQL reads for history or resume.",
                &b.pg_errors,
            ),
            (
                "chat_postgres_replays_refused_total",
                "History/resume replays refused: no place to read PostgreSQL within --pg-replay-wait.",
                &b.pg_replays_refused,
            ),
        ];
        for (name, help, v) in bus {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP chat_redis_up 1 while the Redis links work (cluster mode; 0 after a lost link or failed publish).\n# TYPE chat_redis_up gauge\nchat_redis_up {}", b.redis_up.load(Relaxed));
        let _ = writeln!(out, "# HELP chat_kafka_backlog Messages produced to Kafka and not yet confirmed.\n# TYPE chat_kafka_backlog gauge\nchat_kafka_backlog {}", b.kafka_backlog.load(Relaxed));
        self.render_histograms(&mut out);
        let _ = writeln!(out, "# HELP chat_draining 1 while the server drains after SIGTERM.\n# TYPE chat_draining gauge\nchat_draining {}", draining as u8);
        let p = ProcessStats::read();
        p.render(&mut out);
        p.render_threads(&mut out);
        out
    }
}

impl Metrics {
    /// The latency histograms: the cores' merged, then the bus thread's.
    fn render_histograms(&self, out: &mut String) {
        let b = &self.bus;
        let all: [(&str, &str, Vec<&Histogram>); 5] = [
            (
                "chat_ack_latency_seconds",
                "From reading a send/dm to queueing its ack, in request order.",
                self.per_core(|c| &c.ack_latency),
            ),
            (
                "chat_outbound_queue_wait_seconds",
                "Per socket write: how long its oldest frame waited in the connection's outbound queue.",
                self.per_core(|c| &c.outbound_wait),
            ),
            (
                "chat_redis_batch_seconds",
                "One pipelined Redis publish round trip (a batch of sends).",
                vec![&b.redis_batch],
            ),
            (
                "chat_kafka_delivery_seconds",
                "From producing a message to Kafka's confirmation (acks=all).",
                vec![&b.kafka_delivery],
            ),
            (
                "chat_postgres_read_seconds",
                "One PostgreSQL read for history or resume past the Redis cache.",
                vec![&b.pg_read],
            ),
        ];
        for (name, help, parts) in all {
            render_histogram(out, name, help, parts);
        }
    }

    /// One histogram of every core, to be merged into one series.
    fn per_core(&self, field: fn(&CoreCounters) -> &Histogram) -> Vec<&Histogram> {
        self.cores.iter().map(field).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_per_core_series_and_process_metrics() {
        let m = Metrics::new(2);
        inc(&m.cores[1].requests);
        let text = m.render(false);
        assert!(text.contains("chat_requests_total{core=\"0\"} 0\n"));
        assert!(text.contains("chat_requests_total{core=\"1\"} 1\n"));
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 1e5, "resident memory is read from /proc: {rss}");
        assert!(text.contains("process_cpu_seconds_total "));
    }

    #[test]
    fn histograms_merge_the_cores_into_one_series() {
        let m = Metrics::new(3);
        m.cores[0].ack_latency.observe(Duration::from_micros(300));
        m.cores[2].ack_latency.observe(Duration::from_millis(30));
        m.bus.kafka_delivery.observe(Duration::from_millis(2));
        let text = m.render(false);
        assert!(text.contains("# TYPE chat_ack_latency_seconds histogram\n"));
        assert!(text.contains("chat_ack_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("chat_ack_latency_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("chat_ack_latency_seconds_count 2\n"));
        assert!(text.contains("chat_kafka_delivery_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("chat_outbound_queue_wait_seconds_count 0\n"));
        assert!(text.contains("chat_redis_up 0\n"));
    }
}
