//! The idle-member watchdog: rejoin the consumer group when it left this persister without
//! partitions while records wait and nobody persists them.
//!
//! Why: a persister restarted within the session timeout of the one that crashed joins a group
//! in which the dead member still counts. Kafka's coordinator lets the group's leader compute
//! the assignment and evicts a member whose session expires, rebalancing the rest. The broker
//! the drills and `scripts/` use (tansu 0.6) made the dead member the leader of the new
//! generation, answered our `SyncGroup` with an empty assignment instead of waiting for the
//! leader, and then never rebalanced when the dead member's session expired: the restarted
//! persister heartbeat forever with no partitions while the lag grew (drills/persister-kill,
//! 1 run in 3). A member with nothing assigned is normal (more persisters than partitions), so
//! owning nothing is not enough to act on; what is never normal is owning nothing while the
//! topic has records past the offsets stored in PostgreSQL and those stored offsets do not move
//! for a whole window: then nobody in the group is persisting. The watchdog then leaves the
//! group and joins again (`unsubscribe` + `subscribe`), which makes the coordinator form a new
//! generation without the expired members. It checks once per window (twice the session
//! timeout) while idle, so a healthy group is never disturbed by it, and a stuck one is
//! unstuck after two to three windows.

use crate::metrics::Metrics;
use crate::partitions::Partitions;
use crate::position::Kafka;
use rdkafka::consumer::Consumer;
use std::time::{Duration, Instant};

/// Longest wait for the topic's metadata or one partition's watermarks.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(2);

pub struct IdleWatch {
    window: Duration,
    /// When the current window started (the last time something was owned, or last check).
    since: Instant,
    /// The stored offsets of every partition at the previous check, if there was lag then.
    last: Option<Vec<(i32, i64)>>,
}

/// What one look at the topic found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing waits to be persisted (every partition's stored offset is its high watermark).
    NoLag,
    /// Records wait; the stored offsets are remembered to compare at the next check.
    Watching,
    /// Records waited for a whole window and nobody stored an offset: the group is stuck.
    Stuck,
}

impl IdleWatch {
    pub fn new(session_timeout: Duration) -> IdleWatch {
        IdleWatch {
            window: session_timeout * 2,
            since: Instant::now(),
            last: None,
        }
    }

    /// Called by the polling thread on every turn; does nothing (no I/O) unless this member has
    /// owned nothing for a whole window. When the group is stuck, rejoins it.
    pub fn check(&mut self, consumer: &Kafka, partitions: &Partitions, metrics: &Metrics) {
        let now = Instant::now();
        if !partitions.is_empty() {
            self.since = now;
            self.last = None;
            return;
        }
        if now.duration_since(self.since) < self.window {
            return;
        }
        self.since = now;
        let Some(progress) = observe(consumer, partitions.topic()) else {
            return;
        };
        if self.judge(progress) == Verdict::Stuck {
            metrics.inc(&metrics.group_rejoins);
            tracing::warn!(
                window = ?self.window,
                "the group gave this persister no partitions, records wait and nobody stored an offset for a whole window: leaving and joining the group again"
            );
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&[partitions.topic()]) {
                tracing::error!(error = %e, "subscribing again failed");
            }
        }
    }

    /// The decision, given each partition's `(partition, stored next offset, high watermark)`.
    fn judge(&mut self, progress: Vec<(i32, i64, i64)>) -> Verdict {
        if progress.iter().all(|(_, stored, high)| stored >= high) {
            self.last = None;
            return Verdict::NoLag;
        }
        let stored: Vec<(i32, i64)> = progress.iter().map(|(p, s, _)| (*p, *s)).collect();
        if self.last.as_ref() == Some(&stored) {
            self.last = None;
            Verdict::Stuck
        } else {
            self.last = Some(stored);
            Verdict::Watching
        }
    }
}

/// Every partition of `topic` with its stored next offset (the low watermark when nothing is
/// stored yet) and its high watermark. `None` when Kafka or PostgreSQL did not answer.
fn observe(consumer: &Kafka, topic: &str) -> Option<Vec<(i32, i64, i64)>> {
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT).ok()?;
    let ids: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)?
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    if ids.is_empty() {
        return None;
    }
    let stored = consumer.context().offsets().load(&ids)?;
    let mut out = Vec::with_capacity(ids.len());
    for p in ids {
        let (low, high) = consumer.fetch_watermarks(topic, p, KAFKA_TIMEOUT).ok()?;
        // A stored offset outside the log (a recreated topic) means the whole log waits: it
        // must not look like "nothing to do" (crate::start_offset handles it on assignment).
        let from = match stored.get(&p) {
            Some(s) if (low..=high).contains(&s.next) => s.next,
            _ => low,
        };
        out.push((p, from, high));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_only_when_records_wait_and_nothing_moved_for_a_window() {
        let mut w = IdleWatch::new(Duration::from_secs(1));
        // Nothing waits: never stuck, however long.
        assert_eq!(w.judge(vec![(0, 10, 10), (1, 5, 5)]), Verdict::NoLag);
        assert_eq!(w.judge(vec![(0, 10, 10), (1, 5, 5)]), Verdict::NoLag);
        // Records wait, and someone is persisting them: watching, not stuck.
        assert_eq!(w.judge(vec![(0, 10, 20), (1, 5, 5)]), Verdict::Watching);
        assert_eq!(w.judge(vec![(0, 12, 20), (1, 5, 5)]), Verdict::Watching);
        assert_eq!(w.judge(vec![(0, 14, 30), (1, 5, 9)]), Verdict::Watching);
        // Nothing moved for a whole window: stuck, once; then it starts over.
        assert_eq!(w.judge(vec![(0, 14, 31), (1, 5, 9)]), Verdict::Stuck);
        assert_eq!(w.judge(vec![(0, 14, 31), (1, 5, 9)]), Verdict::Watching);
        // Lag gone in between: the comparison starts over.
        assert_eq!(w.judge(vec![(0, 31, 31), (1, 9, 9)]), Verdict::NoLag);
        assert_eq!(w.judge(vec![(0, 31, 40), (1, 9, 9)]), Verdict::Watching);
    }
}
