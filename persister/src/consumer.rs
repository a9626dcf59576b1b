//! The Kafka side: a consumer-group member whose reading position comes from PostgreSQL.
//!
//! # Where reading starts
//!
//! Kafka auto-commit and the automatic offset store are off: Kafka's committed offsets play no
//! part in where the persister reads. The group's rebalance callback ([`Context::rebalance`])
//! receives each new assignment *before* it takes effect, reads `persister_offsets` for those
//! partitions, writes the stored next offset into the assignment list (`Offset::Beginning` for
//! a partition with nothing stored yet) and only then calls `assign`. librdkafka starts fetching
//! exactly there, so no record is delivered from any other position: there is no window in
//! which a later `seek` would have to catch up with records fetched from Kafka's committed
//! offset. This is librdkafka's documented way to keep offsets in an external store. The
//! rebalance protocol is the eager one (`range,roundrobin`): every assignment is complete, and
//! a revocation drops everything; a cooperative strategy set through `--kafka-option` is
//! handled too (incremental assign/unassign).
//!
//! # Why that is exactly once in effect
//!
//! A batch's rows, its dead letters and the partitions' next offsets commit in one PostgreSQL
//! transaction ([`crate::copy`]). After a crash, whatever was not committed is read again from
//! the stored offsets; whatever was committed is not lost. Records read twice (a crash between
//! COPY and commit does not matter: nothing of it stayed; a rebalance where the old owner still
//! commits a batch the new owner reads too) meet `ON CONFLICT (room, seq) DO NOTHING` and the
//! offsets' `GREATEST`, so the table ends up with each row once whichever order the two
//! persisters commit in. No coordination between members is needed for correctness.
//!
//! # Threads
//!
//! Polling runs on a dedicated thread ([`run`]) because the rebalance callback runs inside
//! `poll` and has to wait for PostgreSQL (blocking on the tokio runtime from a plain thread is
//! allowed; from a runtime worker it is not). The same thread parses records into batches
//! ([`crate::batch::Gather`]) and hands each to the writer task through a one-slot channel: the
//! next batch fills up while the previous one is written, and when the writer falls behind,
//! batches grow to `--batch-max` instead of queueing (fewer, larger transactions, which is
//! what catches up fastest).
//!
//! After each commit to PostgreSQL, the offsets are also committed to Kafka asynchronously, best
//! effort, for the benefit of tools that watch the group's lag; nothing reads them back.

use crate::batch::{Batch, Gather};
use crate::config::Config;
use crate::idle_watch::IdleWatch;
use crate::metrics::Metrics;
use crate::partitions::Partitions;
use crate::position::{self, Context, Kafka, Reread, WATERMARK_TIMEOUT};
use crate::start_offset::{Continuity, Seen};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Whether an outage of every broker makes the polling thread check each partition's log
/// (`position::recheck`). Off: with tansu 0.6 the seek/watermark calls it makes while the broker
/// comes back crashed librdkafka (SIGSEGV, drill topic-recreated); a recreated log is then
/// caught by the watermark check instead (`refresh_watermarks`: a high watermark below the
/// stored offset makes the member rejoin, and the assignment reads the new log from its start).
const RECHECK_AFTER_OUTAGE: bool = false;

/// Longest single `poll` wait, so that a stop request is seen quickly.
const POLL_MAX: Duration = Duration::from_millis(100);
/// Poll wait while a due batch waits for the writer to take it.
const POLL_WHILE_WAITING: Duration = Duration::from_millis(5);

/// Creates the consumer (not subscribed yet).
pub fn create(config: &Config, context: Context) -> KafkaResult<Kafka> {
    let session = config.session_timeout_ms.max(1);
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka)
        .set("group.id", &config.group)
        .set("client.id", "chat-persister")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("partition.assignment.strategy", "range,roundrobin")
        .set("session.timeout.ms", session.to_string())
        .set(
            "heartbeat.interval.ms",
            (session / 3).clamp(1, 3000).to_string(),
        )
        // librdkafka's 500 ms default lets a fetch idle at the broker; with tansu that halved
        // the rate at which a backlog drains (bench.sh). 100 ms costs little when idle.
        .set("fetch.wait.max.ms", "100");
    for option in &config.kafka_options {
        if let Some((k, v)) = option.split_once('=') {
            cc.set(k.trim(), v.trim());
        }
    }
    cc.create_with_context(context)
}

/// The polling thread: records into batches, batches to the writer, until `stop`; then hands
/// over the last partial batch and returns (dropping the sender tells the writer it is over).
///
/// It also watches for offsets that never arrive: a partition whose records were deleted by
/// retention before they were persisted resumes at the earliest offset Kafka still has
/// (`auto.offset.reset=earliest`), and that loss must not pass silently.
pub fn run(
    consumer: Arc<Kafka>,
    partitions: Arc<Partitions>,
    mut gather: Gather,
    tx: mpsc::Sender<Batch>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    mut idle: IdleWatch,
) {
    let mut errors = ErrorLog::default();
    let mut gaps = ErrorLog::default();
    // Per partition: the record the next one must be, and the last one read.
    let mut continuity = Continuity::default();
    let mut generation = u64::MAX;
    // Set when every broker was unreachable: on its way back the log may be a new one.
    let mut recheck_due: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        idle.check(&consumer, &partitions, &metrics);
        if partitions.take_beyond_end() {
            // The log was replaced under us (a stored offset past its end, twice in a row):
            // join the group again, and the new assignment reads it from its start.
            tracing::error!("a stored offset lies past its partition's end: the log was replaced; joining the group again");
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&[partitions.topic()]) {
                tracing::error!(error = %e, "subscribe failed");
            }
        }
        if recheck_due.is_some_and(|due| Instant::now() >= due) {
            recheck_due = position::recheck(&consumer, &partitions, &mut continuity, &metrics)
                .then(|| Instant::now() + Duration::from_millis(500));
        }
        let now = Instant::now();
        let mut waiting = false;
        if gather.is_full() {
            // Full: wait for the writer (it takes a batch the moment it starts writing one).
            if tx.blocking_send(gather.take()).is_err() {
                return;
            }
        } else if gather.is_due(now) {
            // Due by time: hand over if the writer can take it now, else keep filling it.
            match tx.try_reserve() {
                Ok(permit) => permit.send(gather.take()),
                Err(mpsc::error::TrySendError::Full(())) => waiting = true,
                Err(mpsc::error::TrySendError::Closed(())) => return,
            }
        }
        let timeout = if waiting {
            POLL_WHILE_WAITING
        } else {
            gather
                .deadline()
                .map_or(POLL_MAX, |d| d.saturating_duration_since(now).min(POLL_MAX))
        };
        match consumer.poll(timeout) {
            None => {}
            Some(Ok(m)) => {
                metrics.inc(&metrics.records_consumed);
                if partitions.generation() != generation {
                    // A new assignment: each partition starts where PostgreSQL said.
                    generation = partitions.generation();
                    continuity.assigned(
                        partitions
                            .snapshot()
                            .into_iter()
                            .map(|(p, s)| (p, s.start, s.check)),
                    );
                }
                let (partition, offset) = (m.partition(), m.offset());
                match continuity.on_record(partition, offset, m.payload()) {
                    Seen::Take => {}
                    Seen::Confirmed => continue,
                    seen @ (Seen::Replaced { at } | Seen::Unverified { at }) => {
                        let why = match seen {
                            Seen::Replaced { .. } => Reread::Replaced,
                            _ => Reread::Unverified,
                        };
                        let checked = (at, offset);
                        position::read_again(
                            &consumer,
                            &partitions,
                            partition,
                            checked,
                            why,
                            &metrics,
                        );
                        continue;
                    }
                    Seen::Gap { want } => {
                        metrics.add(&metrics.skipped_offsets, (offset - want) as u64);
                        gaps.log_gap(partition, want, offset);
                    }
                    Seen::Backwards { want } => {
                        // librdkafka reset a running consumer to the earliest offset of a new
                        // log. Nothing is skipped; say it loudly.
                        metrics.inc(&metrics.offsets_reset_backwards);
                        tracing::error!(partition, expected = want, got = offset, "the partition's offsets went backwards: the topic was recreated or the broker replaced; reading the new log from its start");
                    }
                }
                gather.push(
                    m.partition(),
                    m.offset(),
                    m.key(),
                    m.payload(),
                    m.timestamp().to_millis(),
                );
            }
            Some(Err(e)) => {
                metrics.inc(&metrics.kafka_errors);
                if RECHECK_AFTER_OUTAGE && position::all_brokers_down(&e) && recheck_due.is_none() {
                    recheck_due = Some(Instant::now() + Duration::from_millis(500));
                }
                errors.log(&e);
            }
        }
    }
    if !gather.is_empty() {
        let _ = tx.blocking_send(gather.take());
    }
}

/// Logs consumer errors without flooding: the first at once, then a count every 10 s (a broker
/// outage produces one per connection attempt).
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn log(&mut self, e: &KafkaError) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %e, suppressed = self.suppressed, "Kafka consumer error (librdkafka retries)");
        self.last = Some(now);
        self.suppressed = 0;
    }

    fn log_gap(&mut self, partition: i32, want: i64, got: i64) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            self.suppressed += 1;
            return;
        }
        tracing::error!(
            partition,
            missing = %format!("{want}..{got}"),
            suppressed = self.suppressed,
            "offsets skipped: Kafka no longer had them (retention deleted records not yet persisted) or they were transaction markers"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Best-effort asynchronous commit of `offsets` to Kafka, for partitions still owned.
pub fn commit_to_kafka(consumer: &Kafka, partitions: &Partitions, offsets: &BTreeMap<i32, i64>) {
    let mut tpl = TopicPartitionList::new();
    for (&p, &next) in offsets {
        if partitions.owns(p) {
            let _ = tpl.add_partition_offset(partitions.topic(), p, Offset::Offset(next));
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "Kafka offset commit (best effort) not sent");
        }
    }
}

/// Fetches the owned partitions' watermarks every `every`, for the lag gauges. Runs until
/// `stop`.
pub async fn refresh_watermarks(
    consumer: Arc<Kafka>,
    partitions: Arc<Partitions>,
    stop: Arc<AtomicBool>,
    every: Duration,
) {
    while !stop.load(Ordering::Relaxed) {
        let owned: Vec<i32> = partitions.snapshot().iter().map(|(p, _)| *p).collect();
        let (c, parts, halt) = (consumer.clone(), partitions.clone(), stop.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let mut beyond = false;
            for p in owned {
                if halt.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok((low, high)) = c.fetch_watermarks(parts.topic(), p, WATERMARK_TIMEOUT) {
                    let stored = parts.set_watermarks(p, low, high);
                    beyond |= stored.is_some_and(|s| s > high);
                }
            }
            parts.saw_beyond_end(beyond);
        })
        .await;
        tokio::time::sleep(every).await;
    }
}

/// Leaves the group cleanly (revocation, `LeaveGroup`) once every other holder of `consumer`
/// has let go, giving up after `timeout` (then the group notices through the session
/// timeout). Must not run on a runtime worker: closing polls the consumer.
pub fn close(consumer: Arc<Kafka>, timeout: Duration) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        while Arc::strong_count(&consumer) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(consumer);
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(timeout).is_err() {
        tracing::warn!("the Kafka consumer did not close in time; leaving without it");
    }
}
