//! Counters and histograms for `/metrics` (Prometheus text format): what the consumer, the
//! writer and the PostgreSQL retry loops write to. It needs nothing else of the crate;
//! [`crate::status`] serves it, with the partitions' gauges, and logs the progress line.
//!
//! A persister is watched for three things: is it keeping up (consumer lag per partition, rows
//! per second), is it healthy (PostgreSQL errors, COPY latency), is data being refused (dead
//! letters). Updates happen once per record or batch, on relaxed atomics; a scrape reads them.

use chat_histogram::{render as render_histogram, Histogram};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

    /// Time since the persister started (when these metrics were made).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The counters and histograms in the exposition format, appended to `out` (the rest of
    /// `/metrics` is [`crate::status::render`]'s).
    pub fn render(&self, out: &mut String) {
        let counter = |out: &mut String, name: &str, help: &str, c: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Relaxed)
            );
        };
        counter(
            out,
            "chat_persister_records_consumed_total",
            "Kafka records taken into batches.",
            &self.records_consumed,
        );
        counter(
            out,
            "chat_persister_rows_written_total",
            "Rows inserted into messages.",
            &self.rows_written,
        );
        counter(
            out,
            "chat_persister_rows_duplicate_total",
            "Redelivered rows skipped because messages already had their (room, seq).",
            &self.rows_duplicate,
        );
        counter(
            out,
            "chat_persister_batches_total",
            "Batches committed.",
            &self.batches,
        );
        counter(
            out,
            "chat_persister_dead_letters_total",
            "Poison records stored in persister_dead_letters.",
            &self.dead_letters,
        );
        counter(
            out,
            "chat_persister_pg_errors_total",
            "Failed PostgreSQL connects and batch attempts (all retried).",
            &self.pg_errors,
        );
        counter(
            out,
            "chat_persister_kafka_errors_total",
            "Errors reported by the Kafka consumer.",
            &self.kafka_errors,
        );
        counter(
            out,
            "chat_persister_rebalances_total",
            "Partition assignments received from the consumer group.",
            &self.rebalances,
        );
        counter(
            out,
            "chat_persister_group_rejoins_total",
            "Rejoins of the consumer group after it left this persister idle while nobody persisted waiting records.",
            &self.group_rejoins,
        );
        counter(
            out,
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
            out,
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
            render_histogram(out, name, help, [h]);
        }
    }
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
