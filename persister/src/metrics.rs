//! Counters and histograms for `/metrics` (Prometheus text format), the tiny HTTP responder
//! that serves them, and the periodic one-line progress log.
//!
//! A persister is watched for three things: is it keeping up (consumer lag per partition, rows
//! per second), is it healthy (PostgreSQL errors, COPY latency), is data being refused (dead
//! letters). Updates happen once per record or batch, on relaxed atomics; a scrape reads them.

use crate::position::Partitions;
use chat_histogram::{render as render_histogram, Histogram};
use chat_process_metrics::ProcessStats;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BATCH_SIZE_BOUNDS: &[f64] = &[
    1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0, 100000.0,
];

pub struct Metrics {
    /// Kafka records taken into batches.
    pub records_consumed: AtomicU64,
    /// Rows new to `messages`.
    pub rows_written: AtomicU64,
    /// Rows skipped because `messages` (or the same batch) had them already: redeliveries.
    pub rows_duplicate: AtomicU64,
    pub batches: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Failed PostgreSQL connects and batch attempts (each one retried).
    pub pg_errors: AtomicU64,
    /// Errors reported by the Kafka consumer (librdkafka retries them itself).
    pub kafka_errors: AtomicU64,
    /// Partition assignments received from the group.
    pub rebalances: AtomicU64,
    /// Times the group left this member idle while nobody persisted waiting records, and it
    /// rejoined (see [`crate::idle_watch`]).
    pub group_rejoins: AtomicU64,
    /// Offsets that were never delivered (see [`crate::consumer::run`]).
    pub skipped_offsets: AtomicU64,
    /// Assigned partitions whose stored offset was past the high watermark (a recreated topic)
    /// or before the low one (see [`crate::start_offset`]); and records whose offset went
    /// backwards while reading (the log was replaced under a running consumer).
    pub offsets_ahead: AtomicU64,
    pub offsets_behind: AtomicU64,
    pub offsets_reset_backwards: AtomicU64,
    /// Partitions whose log turned out to be another one than the stored offset's.
    pub offsets_replaced: AtomicU64,
    /// Partitions read again from the start because the checked record was not delivered.
    pub offsets_unverified: AtomicU64,
    /// Direct COPYs that met a duplicate and went through the staging table instead.
    pub copy_fallbacks: AtomicU64,
    pub batch_records: Histogram,
    pub copy_seconds: Histogram,
    pub transaction_seconds: Histogram,
    /// Per record: from its Kafka timestamp (when the node produced it) to the commit of the
    /// transaction that stored it.
    pub lag_seconds: Histogram,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            records_consumed: AtomicU64::new(0),
            rows_written: AtomicU64::new(0),
            rows_duplicate: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            pg_errors: AtomicU64::new(0),
            kafka_errors: AtomicU64::new(0),
            rebalances: AtomicU64::new(0),
            group_rejoins: AtomicU64::new(0),
            skipped_offsets: AtomicU64::new(0),
            offsets_ahead: AtomicU64::new(0),
            offsets_behind: AtomicU64::new(0),
            offsets_reset_backwards: AtomicU64::new(0),
            offsets_replaced: AtomicU64::new(0),
            offsets_unverified: AtomicU64::new(0),
            copy_fallbacks: AtomicU64::new(0),
            batch_records: Histogram::new(BATCH_SIZE_BOUNDS, 1.0),
            copy_seconds: Histogram::latency(),
            transaction_seconds: Histogram::latency(),
            lag_seconds: Histogram::latency(),
            started: Instant::now(),
        }
    }
}

impl Metrics {
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Each record's lag, from its Kafka timestamp to `committed`.
    pub fn observe_lag(&self, timestamps_ms: &[i64], committed: SystemTime) {
        let now_ms = committed
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for &ts in timestamps_ms {
            let ms = now_ms.saturating_sub(ts).max(0) as u64;
            self.lag_seconds.observe(Duration::from_millis(ms));
        }
    }

    /// The whole exposition text.
    pub fn render(&self, partitions: &Partitions) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, c: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Relaxed)
            );
        };
        counter(
            &mut out,
            "chat_persister_records_consumed_total",
            "Kafka records taken into batches.",
            &self.records_consumed,
        );
        counter(
            &mut out,
            "chat_persister_rows_written_total",
            "Rows inserted into messages.",
            &self.rows_written,
        );
        counter(
            &mut out,
            "chat_persister_rows_duplicate_total",
            "Redelivered rows skipped because messages already had their (room, seq).",
            &self.rows_duplicate,
        );
        counter(
            &mut out,
            "chat_persister_batches_total",
            "Batches committed.",
            &self.batches,
        );
        counter(
            &mut out,
            "chat_persister_dead_letters_total",
            "Poison records stored in persister_dead_letters.",
            &self.dead_letters,
        );
        counter(
            &mut out,
            "chat_persister_pg_errors_total",
            "Failed PostgreSQL connects and batch attempts (all retried).",
            &self.pg_errors,
        );
        counter(
            &mut out,
            "chat_persister_kafka_errors_total",
            "Errors reported by the Kafka consumer.",
            &self.kafka_errors,
        );
        counter(
            &mut out,
            "chat_persister_rebalances_total",
            "Partition assignments received from the consumer group.",
            &self.rebalances,
        );
        counter(
            &mut out,
            "chat_persister_group_rejoins_total",
            "Rejoins of the consumer group after it left this persister idle while nobody persisted waiting records.",
            &self.group_rejoins,
        );
        counter(
            &mut out,
            "chat_persister_skipped_offsets_total",
            "Offsets never delivered: deleted by retention before they were persisted (data lost upstream), or transaction markers.",
            &self.skipped_offsets,
        );
        let _ = writeln!(
            out,
            "# HELP chat_persister_offsets_out_of_range_total Assigned partitions whose stored offset lay outside the log (ahead: past the high watermark, a recreated topic or replaced broker; behind: before the low watermark, records deleted unpersisted), records whose offset went backwards while reading (reset), and partitions whose record before the stored offset was another one than the one persisted (replaced).\n\
             # TYPE chat_persister_offsets_out_of_range_total counter\n\
             chat_persister_offsets_out_of_range_total{{case=\"ahead\"}} {}\n\
             chat_persister_offsets_out_of_range_total{{case=\"behind\"}} {}\n\
             chat_persister_offsets_out_of_range_total{{case=\"reset\"}} {}\n\
             chat_persister_offsets_out_of_range_total{{case=\"replaced\"}} {}\n\
             chat_persister_offsets_out_of_range_total{{case=\"unverified\"}} {}",
            self.offsets_ahead.load(Relaxed),
            self.offsets_behind.load(Relaxed),
            self.offsets_reset_backwards.load(Relaxed),
            self.offsets_replaced.load(Relaxed),
            self.offsets_unverified.load(Relaxed),
        );
        counter(
            &mut out,
            "chat_persister_copy_fallbacks_total",
            "Direct COPYs into messages that met a duplicate and were redone through the staging table.",
            &self.copy_fallbacks,
        );
        for (name, help, h) in [
            (
                "chat_persister_batch_records",
                "Kafka records per committed batch.",
                &self.batch_records,
            ),
            (
                "chat_persister_copy_seconds",
                "Time of one batch's binary COPY (and its insert from staging when it took that path).",
                &self.copy_seconds,
            ),
            (
                "chat_persister_transaction_seconds",
                "Time of one batch's whole transaction (COPY, insert, offsets, commit).",
                &self.transaction_seconds,
            ),
            (
                "chat_persister_lag_seconds",
                "Per record: from its Kafka timestamp to the commit that stored it in PostgreSQL.",
                &self.lag_seconds,
            ),
        ] {
            render_histogram(&mut out, name, help, [h]);
        }

        let snapshot = partitions.snapshot();
        let _ = writeln!(
            out,
            "# HELP chat_persister_assigned_partitions Partitions this persister owns.\n\
             # TYPE chat_persister_assigned_partitions gauge\n\
             chat_persister_assigned_partitions {}",
            snapshot.len()
        );
        let topic = partitions.topic();
        for (name, help, pick) in [
            (
                "chat_persister_consumer_lag",
                "Records in Kafka not yet in PostgreSQL: high watermark minus stored offset.",
                0,
            ),
            (
                "chat_persister_stored_offset",
                "Next offset to read, as stored in PostgreSQL.",
                1,
            ),
            (
                "chat_persister_high_watermark",
                "Partition high watermark at the last fetch.",
                2,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (partition, p) in &snapshot {
                let value = match pick {
                    0 => p.lag(),
                    1 => p.stored,
                    _ => p.high,
                };
                if let Some(v) = value {
                    let _ = writeln!(
                        out,
                        "{name}{{topic=\"{topic}\",partition=\"{partition}\"}} {v}"
                    );
                }
            }
        }

        ProcessStats::read().render(&mut out);
        out
    }

    /// Logs one line every `every`: rows/s, batches, lag, dead letters. Runs forever.
    pub async fn log_progress(self: Arc<Self>, partitions: Arc<Partitions>, every: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut last = (Instant::now(), 0u64, 0u64);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let rows = self.rows_written.load(Relaxed);
            let batches = self.batches.load(Relaxed);
            let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
            let lag: i64 = partitions
                .snapshot()
                .iter()
                .filter_map(|(_, p)| p.lag())
                .sum();
            tracing::info!(
                "{:.0} rows/s, {} batches, lag {}, {} dead letters ({} rows in {:.0} s)",
                (rows - last.1) as f64 / secs,
                batches - last.2,
                lag,
                self.dead_letters.load(Relaxed),
                rows,
                self.started.elapsed().as_secs_f64()
            );
            last = (now, rows, batches);
        }
    }
}

/// Serves `GET /metrics` and `GET /healthz` on `listener`, one short connection per request.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, partitions: Arc<Partitions>) {
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let partitions = partitions.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                respond(socket, &metrics, &partitions),
            )
            .await;
        });
    }
}

async fn respond(
    mut socket: TcpStream,
    metrics: &Metrics,
    partitions: &Partitions,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(partitions),
        ),
        (b"GET", b"/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_measured_from_the_record_timestamp_to_the_commit() {
        let m = Metrics::default();
        let commit = UNIX_EPOCH + Duration::from_millis(10_000);
        // 3 ms, 40 ms and 20 s old; a timestamp after the commit (clock skew) counts as 0.
        m.observe_lag(&[9_997, 9_960, -10_000, 10_005], commit);
        let mut out = String::new();
        render_histogram(&mut out, "lag", "t", [&m.lag_seconds]);
        assert!(out.contains("lag_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("lag_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("lag_bucket{le=\"0.05\"} 3\n"), "{out}");
        assert!(out.contains("lag_bucket{le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("lag_count 4\n"), "{out}");
    }
}
