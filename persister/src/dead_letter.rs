//! Poison records: kept byte for byte, with where they came from and why they were refused,
//! in `persister_dead_letters`, written in the same transaction as the batch they were in.
//!
//! A record that cannot become a `messages` row must neither stop the stream (its offset has
//! to move on) nor vanish (someone has to be able to look at it, fix the producer, replay it).
//! The table's key is (topic, partition, offset), so a redelivered poison record is stored once.

use tokio_postgres::{Error, Transaction};

/// Longest reason kept, in bytes (serde's messages can quote a long input).
const MAX_REASON: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub reason: String,
    /// The record's Kafka timestamp, ms since the Unix epoch, when it had one.
    pub timestamp_ms: Option<i64>,
}

impl DeadLetter {
    pub fn new(
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        reason: String,
        timestamp_ms: Option<i64>,
    ) -> DeadLetter {
        DeadLetter {
            partition,
            offset,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            reason: clean_reason(reason),
            timestamp_ms,
        }
    }
}

/// The reason is `text`: no NUL (an error message may quote the record), bounded length.
fn clean_reason(reason: String) -> String {
    let mut reason = if reason.contains('\0') {
        reason.replace('\0', "\\0")
    } else {
        reason
    };
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// The insert, one statement for any number of dead letters (arrays unnested server-side).
pub const INSERT: &str = "INSERT INTO persister_dead_letters \
     (topic, partition, \"offset\", key, value, reason, kafka_timestamp) \
     SELECT $1, d.partition, d.off, d.key, d.value, d.reason, \
            to_timestamp(d.ts_ms / 1000.0) \
     FROM unnest($2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::text[], $7::int8[]) \
          AS d(partition, off, key, value, reason, ts_ms) \
     ON CONFLICT (topic, partition, \"offset\") DO NOTHING";

/// Stores `letters` in the open transaction; returns how many were new.
pub async fn insert(
    tx: &Transaction<'_>,
    topic: &str,
    letters: &[DeadLetter],
) -> Result<u64, Error> {
    if letters.is_empty() {
        return Ok(0);
    }
    let partitions: Vec<i32> = letters.iter().map(|d| d.partition).collect();
    let offsets: Vec<i64> = letters.iter().map(|d| d.offset).collect();
    let keys: Vec<Option<&[u8]>> = letters.iter().map(|d| d.key.as_deref()).collect();
    let values: Vec<Option<&[u8]>> = letters.iter().map(|d| d.value.as_deref()).collect();
    let reasons: Vec<&str> = letters.iter().map(|d| d.reason.as_str()).collect();
    let timestamps: Vec<Option<i64>> = letters.iter().map(|d| d.timestamp_ms).collect();
    tx.execute(
        INSERT,
        &[
            &topic,
            &partitions,
            &offsets,
            &keys,
            &values,
            &reasons,
            &timestamps,
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_storable_text() {
        assert_eq!(clean_reason("a\0b".into()), "a\\0b");
        let long = clean_reason("é".repeat(MAX_REASON));
        assert!(long.len() <= MAX_REASON + '…'.len_utf8());
        assert!(long.ends_with('…'));
    }
}
