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
use crate::copy::{self, Backoff};
use crate::idle_watch::IdleWatch;
use crate::metrics::Metrics;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub type Kafka = BaseConsumer<Context>;

/// Longest single `poll` wait, so that a stop request is seen quickly.
const POLL_MAX: Duration = Duration::from_millis(100);
/// Poll wait while a due batch waits for the writer to take it.
const POLL_WHILE_WAITING: Duration = Duration::from_millis(5);
/// Longest wait for one partition's watermarks.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(1);

/// What this persister knows about each partition it owns (for the lag gauges and for
/// committing to Kafka only what it owns).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    /// Next offset to read as stored in PostgreSQL (`None`: nothing stored yet).
    pub stored: Option<i64>,
    /// Watermarks at the last fetch.
    pub low: Option<i64>,
    pub high: Option<i64>,
}

impl PartitionState {
    /// High watermark minus the stored offset (or the low watermark when nothing is stored).
    pub fn lag(&self) -> Option<i64> {
        let from = self.stored.or(self.low)?;
        Some((self.high? - from).max(0))
    }
}

/// The partitions this persister owns now.
pub struct Partitions {
    topic: String,
    owned: Mutex<BTreeMap<i32, PartitionState>>,
    /// Bumped by every assignment change (the polling thread resets its offset checks).
    generation: AtomicU64,
}

impl Partitions {
    pub fn new(topic: &str) -> Partitions {
        Partitions {
            topic: topic.to_string(),
            owned: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, PartitionState>> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Vec<(i32, PartitionState)> {
        self.lock().iter().map(|(p, s)| (*p, *s)).collect()
    }

    fn add(&self, partition: i32, stored: Option<i64>) {
        self.lock().insert(
            partition,
            PartitionState {
                stored,
                ..Default::default()
            },
        );
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn remove(&self, partition: i32) {
        self.lock().remove(&partition);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn clear(&self) {
        self.lock().clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Records offsets just committed to PostgreSQL (owned partitions only, forward only).
    pub fn stored(&self, offsets: &BTreeMap<i32, i64>) {
        let mut owned = self.lock();
        for (p, next) in offsets {
            if let Some(s) = owned.get_mut(p) {
                s.stored = Some(s.stored.map_or(*next, |o| o.max(*next)));
            }
        }
    }

    fn set_watermarks(&self, partition: i32, low: i64, high: i64) {
        if let Some(s) = self.lock().get_mut(&partition) {
            s.low = Some(low);
            s.high = Some(high);
        }
    }

    /// Owns no partition (a lock, no copy: the polling thread asks on every turn).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.lock().contains_key(&partition)
    }
}

/// The consumer's context: the rebalance callback that positions new partitions from
/// PostgreSQL.
pub struct Context {
    topic: String,
    pg: tokio_postgres::Config,
    runtime: tokio::runtime::Handle,
    partitions: Arc<Partitions>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    retry_max: Duration,
}

impl Context {
    pub fn new(
        config: &Config,
        pg: tokio_postgres::Config,
        runtime: tokio::runtime::Handle,
        partitions: Arc<Partitions>,
        stop: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Context {
        Context {
            topic: config.topic.clone(),
            pg,
            runtime,
            partitions,
            stop,
            metrics,
            retry_max: config.retry_max(),
        }
    }

    /// The stored next offsets of `partitions`, retried until PostgreSQL answers. `None` when
    /// the persister is stopping meanwhile. Blocks the polling thread, on purpose: reading may
    /// not start before the position is known.
    pub(crate) fn load_offsets(&self, partitions: &[i32]) -> Option<HashMap<i32, i64>> {
        let mut backoff = Backoff::new(self.retry_max);
        loop {
            let result = self.runtime.block_on(async {
                let client = copy::connect(&self.pg).await?;
                copy::stored_offsets(&client, &self.topic, partitions).await
            });
            match result {
                Ok(rows) => return Some(rows.into_iter().collect()),
                Err(e) => {
                    self.metrics.inc(&self.metrics.pg_errors);
                    if self.stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    let pause = backoff.next();
                    tracing::warn!(error = %copy::chain(&e), retry_in = ?pause, "reading stored offsets for a new assignment failed");
                    std::thread::sleep(pause);
                }
            }
        }
    }

    fn assign(&self, consumer: &Kafka, tpl: &mut TopicPartitionList) {
        let ours: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let Some(stored) = self.load_offsets(&ours) else {
            tracing::warn!("stopping: assignment not taken");
            return;
        };
        for &p in &ours {
            let offset = stored
                .get(&p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            if let Err(e) = tpl.set_partition_offset(&self.topic, p, offset) {
                tracing::error!(partition = p, error = %e, "cannot set the start offset");
            }
            self.partitions.add(p, stored.get(&p).copied());
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        match result {
            Ok(()) => {
                self.metrics.inc(&self.metrics.rebalances);
                let mut positions: Vec<String> = ours
                    .iter()
                    .map(|p| match stored.get(p) {
                        Some(o) => format!("{p}@{o}"),
                        None => format!("{p}@beginning"),
                    })
                    .collect();
                positions.sort();
                tracing::info!(topic = %self.topic, partitions = %positions.join(" "), "assigned; reading from the offsets stored in PostgreSQL");
            }
            Err(e) => tracing::error!(error = %e, "assign failed"),
        }
    }

    fn revoke(&self, consumer: &Kafka, tpl: &TopicPartitionList) {
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => {
                for e in tpl.elements_for_topic(&self.topic) {
                    self.partitions.remove(e.partition());
                }
                consumer.incremental_unassign(tpl)
            }
            _ => {
                self.partitions.clear();
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "unassign failed");
        }
        tracing::info!(partitions = tpl.count(), "partitions revoked");
    }
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn rebalance(&self, consumer: &Kafka, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                self.partitions.clear();
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "Kafka offset commit (best effort) failed");
        }
    }
}

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
    // Partition -> the offset the next record should have.
    let mut expected: HashMap<i32, i64> = HashMap::new();
    let mut generation = u64::MAX;
    while !stop.load(Ordering::Relaxed) {
        idle.check(&consumer, &partitions, &metrics);
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
                    expected = partitions
                        .snapshot()
                        .into_iter()
                        .filter_map(|(p, s)| Some((p, s.stored?)))
                        .collect();
                }
                let (partition, offset) = (m.partition(), m.offset());
                if let Some(&want) = expected.get(&partition) {
                    if offset > want {
                        metrics.add(&metrics.skipped_offsets, (offset - want) as u64);
                        gaps.log_gap(partition, want, offset);
                    }
                }
                expected.insert(partition, offset + 1);
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
            for p in owned {
                if halt.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok((low, high)) = c.fetch_watermarks(parts.topic(), p, WATERMARK_TIMEOUT) {
                    parts.set_watermarks(p, low, high);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_uses_stored_offset_then_low_watermark() {
        let mut s = PartitionState::default();
        assert_eq!(s.lag(), None);
        s.high = Some(100);
        s.low = Some(10);
        assert_eq!(s.lag(), Some(90));
        s.stored = Some(95);
        assert_eq!(s.lag(), Some(5));
        s.stored = Some(120);
        assert_eq!(s.lag(), Some(0));
    }

    #[test]
    fn stored_offsets_move_forward_for_owned_partitions() {
        let p = Partitions::new("t");
        p.add(0, Some(10));
        p.stored(&BTreeMap::from([(0, 20), (1, 5)]));
        p.stored(&BTreeMap::from([(0, 15)]));
        assert_eq!(
            p.snapshot(),
            vec![(
                0,
                PartitionState {
                    stored: Some(20),
                    ..Default::default()
                }
            )]
        );
        assert!(!p.owns(1));
    }
}
