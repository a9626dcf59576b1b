//! Lossless Redis failover: nothing of a write is shown before the replicas have it.
//!
//! # The problem
//!
//! Redis replication is asynchronous. A replica promoted after its master died may lack the
//! master's newest writes, among them `INCR`s of a room's `seq` key whose messages were already
//! published, produced to Kafka and acked. The promoted replica then hands those seqs out again:
//! two messages share a (room, seq) (PROTOCOL.md guarantee 6), PostgreSQL keeps only one of
//! them (an acked message lost, guarantee 3), and members drop the second as a duplicate.
//!
//! # The rule
//!
//! With `--redis-replicas N` (the replicas per master), nothing a write produced is shown to
//! anyone until `N` replicas have it: no `msg` is published, no record produced to Kafka, no
//! `ack` sent, no read answered. Each pipeline ends with `WAIT N timeout` (after a fence write,
//! below); only when it answers `>= N` do its results count.
//!
//! # Why that is enough
//!
//! - A master's replication stream is one ordered log. When a replica acknowledges an offset,
//!   it holds every write before that offset, whoever made it.
//! - `WAIT` waits for the offset of the calling connection's last write. A pipeline of reads
//!   has none, so reads get a *fence*: a tiny write (`SET chat:{T}:fence`, `T` a tag of the
//!   read's slot, [`slot_tag`]) after them. Once `WAIT` confirms the fence, everything the read
//!   saw (it ran before the fence on the same master) is on the replicas too.
//! - So every seq anyone ever saw (in a `msg`, an `ack`, `joined`, `resumed`, `history`, a
//!   Kafka record) is on the `N` replicas. The failover promotes one of them (with one replica
//!   per master, the only one), whose `seq` counter is therefore at least every seq shown:
//!   the next `INCR` can only hand out seqs nobody has seen. A seq the dead master gave to a
//!   write that was never confirmed may be given again, to another message, but the first one
//!   was never shown: its sender got `unavailable` and retries with its `cid`.
//! - A write that is not confirmed in time (a replica down or lagging) is not an error of the
//!   data: its senders get `unavailable` and retry with the same `cid`. The retry finds the
//!   dedupe key (same seq), or, after a failover that lost it, gets a new seq.
//!
//! # Cost
//!
//! Two commands more per pipeline (the fence and `WAIT`), the replica's acknowledgement
//! latency on each round trip (sub-millisecond on one host), and, for sends, the publish
//! after the `WAIT` (one more pipelined round trip per batch: the Lua step runs with `n`, the
//! node publishes the confirmed messages itself). Without `--redis-replicas` none of this runs.
//! `WAIT` blocks the connection it is sent on: while a replica is down, every request of that
//! master waits up to `--redis-wait-ms` and then fails with `unavailable`. That is the price of
//! never showing what a failover could take back.
//!
//! Live delivery across a failover is [`super::cluster`]'s topology watch: it re-subscribes
//! every room and user channel where it now lives and fills the gap from the cache.

use redis::{Pipeline, RedisError, RedisResult, Value};
use std::sync::OnceLock;

/// How long a fence key lives (it only has to exist while `WAIT` runs).
const FENCE_TTL_MS: u64 = 10_000;

/// A short hash tag whose slot is `slot`, for a key that must live in that slot.
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags: Vec<Option<String>> = vec![None; 16384];
        let mut left = tags.len();
        let mut n: u64 = 0;
        while left > 0 {
            let tag = n.to_string();
            let s = super::slot::key_slot(&tag) as usize;
            if tags[s].is_none() {
                tags[s] = Some(tag);
                left -= 1;
            }
            n += 1;
        }
        tags.into_iter().map(|t| t.expect("every slot")).collect()
    });
    &tags[slot as usize]
}

/// The fence key of `slot`.
pub fn fence_key(slot: u16) -> String {
    format!("chat:{{{}}}:fence", slot_tag(slot))
}

/// Ends `pipe` (all of whose commands go to `slot`'s master) with the fence and `WAIT`.
pub fn add_wait(pipe: &mut Pipeline, slot: u16, confirm: Option<(u32, u64)>) {
    if let Some((replicas, timeout_ms)) = confirm {
        pipe.cmd("SET")
            .arg(fence_key(slot))
            .arg(1)
            .arg("PX")
            .arg(FENCE_TTL_MS);
        pipe.cmd("WAIT").arg(replicas).arg(timeout_ms);
    }
}

/// The error a command answers when its pipeline was not confirmed by the replicas.
pub fn not_replicated(acked: i64, wanted: u32) -> RedisError {
    RedisError::from((
        redis::ErrorKind::Io,
        "not replicated",
        format!("WAIT: {acked} of {wanted} replicas in time"),
    ))
}

pub fn is_not_replicated(e: &RedisError) -> bool {
    e.to_string().contains("not replicated")
}

/// The first `n` answers of a pipeline built with [`add_wait`]: as they are when the replicas
/// confirmed them, else each one [`not_replicated`].
pub fn take_wait(
    mut answers: Vec<RedisResult<Value>>,
    n: usize,
    confirm: Option<(u32, u64)>,
) -> Vec<RedisResult<Value>> {
    let Some((replicas, _)) = confirm else {
        return answers;
    };
    let acked = match answers.get(n + 1) {
        Some(Ok(Value::Int(k))) => *k,
        _ => -1,
    };
    answers.truncate(n);
    if acked >= replicas as i64 {
        return answers;
    }
    answers
        .into_iter()
        .map(|_| Err(not_replicated(acked, replicas)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_a_tag_in_it() {
        for slot in [0u16, 1, 777, 12182, 16383] {
            assert_eq!(super::super::slot::key_slot(&fence_key(slot)), slot);
        }
    }

    #[test]
    fn unconfirmed_answers_become_errors() {
        let answers = || vec![Ok(Value::Int(7)), Ok(Value::Okay), Ok(Value::Int(0))];
        let none = take_wait(answers(), 1, Some((1, 10)));
        assert!(matches!(&none[..], [Err(e)] if is_not_replicated(e)));
        let mut yes = answers();
        yes[2] = Ok(Value::Int(1));
        assert!(matches!(
            &take_wait(yes, 1, Some((1, 10)))[..],
            [Ok(Value::Int(7))]
        ));
        assert_eq!(take_wait(answers(), 3, None).len(), 3);
    }
}
