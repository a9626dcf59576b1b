//! Where each owned partition is read from: the rebalance callback that positions new
//! partitions from PostgreSQL (checked by [`crate::start_offset`]), and the check of every
//! partition's log after an outage of all brokers.
//!
//! See [`crate::consumer`] for why the position comes from PostgreSQL and not from Kafka.

use crate::config::Config;
use crate::copy::{self, Backoff, Stored};
use crate::metrics::Metrics;
use crate::start_offset::{self, Continuity, OutOfRangePolicy, Placement};
use rdkafka::consumer::BaseConsumer;
use rdkafka::consumer::{Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type Kafka = BaseConsumer<Context>;

/// Longest wait for one partition's watermarks.
pub const WATERMARK_TIMEOUT: Duration = Duration::from_secs(1);

/// What this persister knows about each partition it owns (for the lag gauges and for
/// committing to Kafka only what it owns).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    /// Next offset to read as stored in PostgreSQL (`None`: nothing stored yet).
    pub stored: Option<i64>,
    /// Watermarks at the last fetch.
    pub low: Option<i64>,
    pub high: Option<i64>,
    /// Where reading started (`None`: the beginning), and the record it must start with
    /// ([`crate::start_offset::Placement::check`]).
    pub start: Option<i64>,
    pub check: Option<(i64, i64)>,
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
    /// Watermark refreshes in a row that saw a stored offset past its partition's end (the log
    /// was replaced under a running persister); at 2 the polling thread rejoins the group.
    beyond_end: AtomicU64,
}

impl Partitions {
    pub fn new(topic: &str) -> Partitions {
        Partitions {
            topic: topic.to_string(),
            owned: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            beyond_end: AtomicU64::new(0),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
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

    pub(crate) fn add(
        &self,
        partition: i32,
        stored: Option<i64>,
        start: Option<i64>,
        check: Option<(i64, i64)>,
    ) {
        self.lock().insert(
            partition,
            PartitionState {
                stored,
                start,
                check,
                ..Default::default()
            },
        );
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn remove(&self, partition: i32) {
        self.lock().remove(&partition);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn clear(&self) {
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

    /// Records a partition's watermarks; returns its stored offset (to compare with them).
    pub(crate) fn set_watermarks(&self, partition: i32, low: i64, high: i64) -> Option<i64> {
        let mut owned = self.lock();
        let s = owned.get_mut(&partition)?;
        s.low = Some(low);
        s.high = Some(high);
        s.stored
    }

    /// A watermark refresh's verdict: did any owned partition's stored offset lie past its
    /// high watermark?
    pub(crate) fn saw_beyond_end(&self, beyond: bool) {
        if beyond {
            self.beyond_end.fetch_add(1, Ordering::AcqRel);
        } else {
            self.beyond_end.store(0, Ordering::Release);
        }
    }

    /// True once two refreshes in a row saw a stored offset past the end (then resets).
    pub(crate) fn take_beyond_end(&self) -> bool {
        self.beyond_end.load(Ordering::Acquire) >= 2 && {
            self.beyond_end.store(0, Ordering::Release);
            true
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
    out_of_range: OutOfRangePolicy,
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
            out_of_range: config.offset_out_of_range,
        }
    }

    /// The stored next offsets of `partitions`, retried until PostgreSQL answers. `None` when
    /// the persister is stopping meanwhile. Blocks the polling thread, on purpose: reading may
    /// not start before the position is known.
    pub(crate) fn load_offsets(&self, partitions: &[i32]) -> Option<HashMap<i32, Stored>> {
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
        let mut starts = BTreeMap::new();
        for &p in &ours {
            let stored = stored.get(&p).copied();
            let Some(placement) = self.place(consumer, p, stored) else {
                return;
            };
            let start = placement.start();
            let offset = start.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = tpl.set_partition_offset(&self.topic, p, offset) {
                tracing::error!(partition = p, error = %e, "cannot set the start offset");
            }
            self.partitions
                .add(p, stored.map(|s| s.next), start, placement.check());
            starts.insert(p, start);
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        match result {
            Ok(()) => {
                self.metrics.inc(&self.metrics.rebalances);
                let mut positions: Vec<String> = starts
                    .iter()
                    .map(|(p, start)| match start {
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

    /// Where partition `p` starts ([`crate::start_offset`]): its stored offset checked
    /// against the watermarks; `None` when the policy says stop (nothing is assigned then).
    fn place(&self, consumer: &Kafka, p: i32, stored: Option<Stored>) -> Option<Placement> {
        let watermarks = match stored {
            None => None,
            Some(_) => match consumer.fetch_watermarks(&self.topic, p, WATERMARK_TIMEOUT * 5) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "no watermarks for a new assignment; checking the first record only");
                    None
                }
            },
        };
        let placement = Placement::of(stored.map(|s| (s.next, s.last_hash)), watermarks);
        let Some(case) = placement.case() else {
            return Some(placement);
        };
        let m = &self.metrics;
        m.inc(if case == "ahead" {
            &m.offsets_ahead
        } else {
            &m.offsets_behind
        });
        m.add(&m.skipped_offsets, placement.lost());
        let (low, high) = watermarks.unwrap_or_default();
        tracing::error!(
            topic = %self.topic, partition = p, stored = stored.map_or(0, |s| s.next), low, high, case,
            policy = ?self.out_of_range,
            "the stored offset lies outside the partition's log (ahead: the topic was recreated or the broker replaced; behind: records were deleted before they were persisted)"
        );
        if self.out_of_range == OutOfRangePolicy::Stop {
            return self.refuse();
        }
        if case == "ahead" && !self.rebase(p, low) {
            return None;
        }
        tracing::warn!(
            partition = p,
            from = low,
            "reading the partition again from its low watermark"
        );
        Some(placement)
    }

    /// [`start_offset::rebase`], retried until PostgreSQL answers; false when stopping.
    pub(crate) fn rebase(&self, partition: i32, to: i64) -> bool {
        let mut backoff = Backoff::new(self.retry_max);
        loop {
            let result = self.runtime.block_on(async {
                let client = copy::connect(&self.pg).await?;
                start_offset::rebase(&client, &self.topic, partition, to).await
            });
            match result {
                Ok(_) => return true,
                Err(_) if self.stop.load(Ordering::Relaxed) => return false,
                Err(e) => {
                    self.metrics.inc(&self.metrics.pg_errors);
                    let pause = backoff.next();
                    tracing::warn!(error = %copy::chain(&e), retry_in = ?pause, "lowering a stored offset failed");
                    std::thread::sleep(pause);
                }
            }
        }
    }

    /// `--offset-out-of-range stop`: no assignment, and the process stops with status 3.
    fn refuse<T>(&self) -> Option<T> {
        tracing::error!("stopping (--offset-out-of-range stop)");
        start_offset::REFUSED.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        None
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

pub(crate) fn all_brokers_down(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown)
            | KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)
    )
}

/// After every broker was unreachable: once one answers again, read each partition's last
/// record again and check it ([`Continuity::recheck`]); a partition whose log is now shorter
/// than that is a new log at once. Returns true while the brokers do not answer yet.
pub(crate) fn recheck(
    consumer: &Kafka,
    partitions: &Partitions,
    continuity: &mut Continuity,
    metrics: &Metrics,
) -> bool {
    let topic = partitions.topic();
    let owned: Vec<i32> = partitions.snapshot().iter().map(|(p, _)| *p).collect();
    let Some(&first) = owned.first() else {
        return false;
    };
    if consumer
        .fetch_watermarks(topic, first, WATERMARK_TIMEOUT)
        .is_err()
    {
        return true;
    }
    for (p, offset) in continuity.recheck() {
        if !partitions.owns(p) {
            continuity.forget(p);
            continue;
        }
        match consumer.fetch_watermarks(topic, p, WATERMARK_TIMEOUT) {
            Ok((low, high)) if offset < low || offset >= high => {
                read_again(
                    consumer,
                    partitions,
                    p,
                    (offset, high),
                    Reread::Replaced,
                    metrics,
                );
                continuity.forget(p);
            }
            Ok(_) => {
                if let Err(e) = consumer.seek(topic, p, Offset::Offset(offset), WATERMARK_TIMEOUT) {
                    tracing::warn!(partition = p, error = %e, "cannot move back to check the last record");
                    continuity.forget(p);
                }
            }
            Err(_) => return true,
        }
    }
    tracing::info!("brokers reachable again; checking that each partition is still the same log");
    false
}

/// Why a partition is read again from its beginning ([`read_again`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reread {
    /// The log of the partition is not the one read so far (a recreated topic, a replaced
    /// broker): the record before the stored offset is another one than the one persisted.
    /// Reading restarts at the log's beginning, and the stored offset is rebased there (see
    /// [`crate::start_offset`]).
    Replaced,
    /// The checked record was not delivered ([`crate::start_offset::Seen::Unverified`]), so
    /// the log cannot be checked: reading restarts at the beginning (harmless: rows are unique
    /// by `(room, seq)`), keeping the stored offset.
    Unverified,
}

/// Reads `partition` again from its beginning, never skipping a record: counted, logged
/// (`expected` is the offset of the record that was checked, `found` the one seen there) and,
/// for [`Reread::Replaced`], with the stored offset rebased to the log's start.
pub(crate) fn read_again(
    consumer: &Kafka,
    partitions: &Partitions,
    partition: i32,
    (expected, found): (i64, i64),
    why: Reread,
    metrics: &Metrics,
) {
    let topic = partitions.topic();
    match why {
        Reread::Replaced => {
            metrics.inc(&metrics.offsets_replaced);
            tracing::error!(
                %topic, partition, expected_record = expected, found,
                "the partition's log was replaced (the topic was recreated or the broker replaced): the record before the stored offset is not the one persisted; reading the partition again from its beginning"
            );
        }
        Reread::Unverified => {
            metrics.inc(&metrics.offsets_unverified);
            tracing::warn!(
                %topic, partition, expected_record = expected, found,
                "the broker did not deliver the record before the stored offset, so the log cannot be checked; reading the partition again from its beginning (never skipping a record)"
            );
        }
    }
    let low = low_of(consumer, partitions, partition);
    if why == Reread::Replaced {
        consumer.context().rebase(partition, low);
    }
    read_from(consumer, partitions, partition, low);
}

fn low_of(consumer: &Kafka, partitions: &Partitions, partition: i32) -> i64 {
    match consumer.fetch_watermarks(partitions.topic(), partition, WATERMARK_TIMEOUT) {
        Ok((low, _)) => low,
        Err(_) => 0,
    }
}

fn read_from(consumer: &Kafka, partitions: &Partitions, partition: i32, low: i64) {
    if let Err(e) = consumer.seek(
        partitions.topic(),
        partition,
        Offset::Offset(low),
        WATERMARK_TIMEOUT,
    ) {
        tracing::error!(partition, error = %e, "cannot move to the beginning of the partition");
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
        p.add(0, Some(10), Some(10), None);
        p.stored(&BTreeMap::from([(0, 20), (1, 5)]));
        p.stored(&BTreeMap::from([(0, 15)]));
        assert_eq!(
            p.snapshot(),
            vec![(
                0,
                PartitionState {
                    stored: Some(20),
                    start: Some(10),
                    ..Default::default()
                }
            )]
        );
        assert!(!p.owns(1));
    }
}
