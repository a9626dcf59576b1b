//! Where each owned partition is read from: the rebalance callback that positions new
//! partitions from the offsets stored in PostgreSQL ([`crate::pg::offsets`], checked by
//! [`crate::start_offset`]) and records them in [`crate::partitions`], and the check of every
//! partition's log after an outage of all brokers.
//!
//! See [`crate::consumer`] for why the position comes from PostgreSQL and not from Kafka.

use crate::config::{Config, OutOfRangePolicy};
use crate::metrics::Metrics;
use crate::partitions::Partitions;
use crate::pg::offsets::{OffsetStore, Stored};
use crate::start_offset::{self, Continuity, Placement};
use rdkafka::consumer::BaseConsumer;
use rdkafka::consumer::{Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub type Kafka = BaseConsumer<Context>;

/// Longest wait for one partition's watermarks.
pub const WATERMARK_TIMEOUT: Duration = Duration::from_secs(1);

/// The consumer's context: the rebalance callback that positions new partitions from
/// PostgreSQL.
pub struct Context {
    topic: String,
    offsets: OffsetStore,
    partitions: Arc<Partitions>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
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
        let offsets = OffsetStore::new(
            config.topic.clone(),
            pg,
            runtime,
            stop.clone(),
            metrics.clone(),
            config.retry_max(),
        );
        Context {
            topic: config.topic.clone(),
            offsets,
            partitions,
            stop,
            metrics,
            out_of_range: config.offset_out_of_range,
        }
    }

    /// The stored offsets, read and lowered from the polling thread (blocking, retried).
    pub fn offsets(&self) -> &OffsetStore {
        &self.offsets
    }

    fn assign(&self, consumer: &Kafka, tpl: &mut TopicPartitionList) {
        let ours: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let Some(stored) = self.offsets.load(&ours) else {
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
        if case == "ahead" && !self.offsets.rebase(p, low) {
            return None;
        }
        tracing::warn!(
            partition = p,
            from = low,
            "reading the partition again from its low watermark"
        );
        Some(placement)
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
        consumer.context().offsets().rebase(partition, low);
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
