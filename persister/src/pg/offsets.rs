//! The stored offsets, `persister_offsets`: per (topic, partition) the next record to read and
//! the fingerprint of the one before it ([`crate::start_offset`]). The source of truth for
//! where reading resumes (see [`crate::consumer`]): written by a batch's transaction
//! ([`UPSERT`], in [`crate::copy`]), read when partitions are assigned ([`OffsetStore::load`])
//! and lowered when a partition's log turned out to be a new one ([`OffsetStore::rebase`]).

use super::{chain, connect, Backoff};
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// Offsets only move forward; the fingerprint goes with the offset it belongs to.
pub const UPSERT: &str =
    "INSERT INTO persister_offsets (topic, partition, next_offset, last_hash) \
     SELECT $1, o.partition, o.next_offset, o.last_hash \
     FROM unnest($2::int4[], $3::int8[], $4::int8[]) AS o(partition, next_offset, last_hash) \
     ON CONFLICT (topic, partition) DO UPDATE \
     SET next_offset = GREATEST(persister_offsets.next_offset, EXCLUDED.next_offset), \
         last_hash = CASE WHEN EXCLUDED.next_offset >= persister_offsets.next_offset \
                     THEN EXCLUDED.last_hash ELSE persister_offsets.last_hash END, \
         updated_at = now()";

/// A partition's stored position: the next offset to read and the fingerprint of the record
/// before it (`None` for rows stored before fingerprints existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub next: i64,
    pub last_hash: Option<i64>,
}

/// Reads the stored next offsets of `partitions` of `topic` (absent: nothing stored yet).
pub async fn stored_offsets(
    client: &Client,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<(i32, Stored)>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT partition, next_offset, last_hash FROM persister_offsets \
             WHERE topic = $1 AND partition = ANY($2)",
            &[&topic, &partitions],
        )
        .await?
        .iter()
        .map(|r| {
            let stored = Stored {
                next: r.get(1),
                last_hash: r.get(2),
            };
            (r.get(0), stored)
        })
        .collect())
}

/// Moves a partition's stored offset back to `to` (a new log starts there), forgetting its
/// fingerprint.
pub async fn rebase(
    client: &Client,
    topic: &str,
    partition: i32,
    to: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE persister_offsets SET next_offset = $3, last_hash = NULL, updated_at = now() \
             WHERE topic = $1 AND partition = $2",
            &[&topic, &partition, &to],
        )
        .await
}

/// The stored offsets of one topic as the polling thread needs them: each call blocks on the
/// runtime and retries, on a new connection, until PostgreSQL answers or the persister stops.
pub struct OffsetStore {
    topic: String,
    pg: tokio_postgres::Config,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    retry_max: Duration,
}

impl OffsetStore {
    pub fn new(
        topic: String,
        pg: tokio_postgres::Config,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
        retry_max: Duration,
    ) -> OffsetStore {
        OffsetStore {
            topic,
            pg,
            runtime,
            stop,
            metrics,
            retry_max,
        }
    }

    /// The stored next offsets of `partitions`, retried until PostgreSQL answers. `None` when
    /// the persister is stopping meanwhile. Blocks the polling thread, on purpose: reading may
    /// not start before the position is known.
    pub fn load(&self, partitions: &[i32]) -> Option<HashMap<i32, Stored>> {
        let mut backoff = Backoff::new(self.retry_max);
        loop {
            let result = self.runtime.block_on(async {
                let client = connect(&self.pg).await?;
                stored_offsets(&client, &self.topic, partitions).await
            });
            match result {
                Ok(rows) => return Some(rows.into_iter().collect()),
                Err(e) => {
                    self.metrics.inc(&self.metrics.pg_errors);
                    if self.stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    let pause = backoff.next_pause();
                    tracing::warn!(error = %chain(&e), retry_in = ?pause, "reading stored offsets for a new assignment failed");
                    std::thread::sleep(pause);
                }
            }
        }
    }

    /// [`rebase`], retried until PostgreSQL answers; false when stopping.
    pub fn rebase(&self, partition: i32, to: i64) -> bool {
        let mut backoff = Backoff::new(self.retry_max);
        loop {
            let result = self.runtime.block_on(async {
                let client = connect(&self.pg).await?;
                rebase(&client, &self.topic, partition, to).await
            });
            match result {
                Ok(_) => return true,
                Err(_) if self.stop.load(Ordering::Relaxed) => return false,
                Err(e) => {
                    self.metrics.inc(&self.metrics.pg_errors);
                    let pause = backoff.next_pause();
                    tracing::warn!(error = %chain(&e), retry_in = ?pause, "lowering a stored offset failed");
                    std::thread::sleep(pause);
                }
            }
        }
    }
}
