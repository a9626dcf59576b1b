//! Delivery verification. PROTOCOL.md promises that every member of a room sees every `msg`
//! once, in seq order, with seqs dense from 1. One [`Stream`] per (receiver, room) checks that
//! as messages arrive; at the end [`Stream::summary`] and the room's final seq (the highest seq
//! acked or seen) say how many receptions were lost.
//!
//! Counting rules, each reception counted once:
//! * *lost*: a seq the receiver never got (a gap that was never filled, or a missing tail);
//! * *duplicated*: a seq at or below the highest seen that was not missing (incl. the join point);
//! * *reordered*: a seq that arrived after a later one and filled a gap.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What one reception was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    InOrder,
    /// Ahead of the next expected seq: this many seqs are (for now) missing.
    Gap(u64),
    /// Filled an earlier gap.
    Reordered,
    Duplicate,
}

/// One receiver's view of one room.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    base: u64,
    highest: u64,
    missing: BTreeSet<u64>,
    received: u64,
    duplicated: u64,
    reordered: u64,
}

impl Stream {
    /// A stream whose first expected seq is `base + 1` (the `joined` seq; 0 for a fresh room).
    pub fn new(base: u64) -> Stream {
        Stream {
            base,
            highest: base,
            ..Default::default()
        }
    }

    #[inline]
    pub fn on_seq(&mut self, seq: u64) -> Seen {
        self.received += 1;
        if seq == self.highest + 1 {
            self.highest = seq;
            Seen::InOrder
        } else if seq > self.highest {
            let gap = seq - self.highest - 1;
            // A huge jump (a corrupted seq) must not allocate a huge set: count it as lost tail.
            if gap <= 1_000_000 {
                self.missing.extend(self.highest + 1..seq);
            }
            self.highest = seq;
            Seen::Gap(gap)
        } else if self.missing.remove(&seq) {
            self.reordered += 1;
            Seen::Reordered
        } else {
            self.duplicated += 1;
            Seen::Duplicate
        }
    }

    /// The highest seq received so far (the join point if none): where a `resume` continues.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    pub fn summary(&self) -> StreamSummary {
        StreamSummary {
            base: self.base,
            highest: self.highest,
            missing: self.missing.len() as u64,
            received: self.received,
            duplicated: self.duplicated,
            reordered: self.reordered,
        }
    }
}

/// The end state of a [`Stream`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub base: u64,
    pub highest: u64,
    pub missing: u64,
    pub received: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

impl StreamSummary {
    /// Receptions lost when the room's last seq is `final_seq`: unfilled gaps plus the tail.
    pub fn lost(&self, final_seq: u64) -> u64 {
        self.missing + final_seq.saturating_sub(self.highest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream with a gap (6), a duplicate (5) and a swap (4 before 3): each counted once.
    #[test]
    fn counts_gap_duplicate_and_swap() {
        let mut s = Stream::new(0);
        let seen: Vec<Seen> = [1, 2, 4, 3, 5, 5, 7].iter().map(|&q| s.on_seq(q)).collect();
        assert_eq!(
            seen,
            vec![
                Seen::InOrder,
                Seen::InOrder,
                Seen::Gap(1),
                Seen::Reordered,
                Seen::InOrder,
                Seen::Duplicate,
                Seen::Gap(1),
            ]
        );
        let sum = s.summary();
        assert_eq!(sum.lost(7), 1, "seq 6 never came");
        assert_eq!(sum.duplicated, 1);
        assert_eq!(sum.reordered, 1);
        assert_eq!(sum.received, 7);
        // The room went on to seq 9: two more lost at the tail.
        assert_eq!(sum.lost(9), 3);
    }

    #[test]
    fn clean_stream_and_join_point() {
        let mut s = Stream::new(10);
        for q in 11..=20 {
            assert_eq!(s.on_seq(q), Seen::InOrder);
        }
        // A seq from before the join is a duplicate, not a reorder.
        assert_eq!(s.on_seq(10), Seen::Duplicate);
        let sum = s.summary();
        assert_eq!((sum.lost(20), sum.duplicated, sum.reordered), (0, 1, 0));
        // Nothing received at all: everything after the join point is lost.
        assert_eq!(Stream::new(3).summary().lost(8), 5);
    }
}
