//! The partitions this persister owns now, shared by the polling thread (assignments,
//! continuity checks), the writer loop (offsets just stored), the watermark task and the
//! `/metrics` gauges ([`crate::status`]). Only state, no I/O: filled by [`crate::position`]
//! and [`crate::consumer`], read by everyone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
