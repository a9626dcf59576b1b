//! Where a partition is read from, and how the persister knows it is still the same log.
//!
//! A stored offset is only right for the log it was stored for. When the topic was deleted and
//! created again, the cluster rebuilt, or a dev broker restarted on memory storage, the offset
//! stored in PostgreSQL belongs to a log that no longer exists:
//!
//! - *ahead* of the new log's high watermark, reading from it waits forever (the stall users
//!   met: nothing persisted, nothing logged);
//! - *inside* the new log (it grew past the offset), reading from it silently skips every
//!   record before it;
//! - *behind* the low watermark, retention deleted records before they were persisted.
//!
//! Offsets alone cannot tell the second case apart, so each stored offset carries a
//! [`fingerprint`] of the record just before it (`persister_offsets.last_hash`, written in the
//! same transaction). A partition with a stored offset `n` is read from `n - 1`: the first
//! record must be the one fingerprinted, or the log is not the one the offset was stored for.
//! The same check runs after the broker was unreachable (all brokers down): on its way back
//! the broker may be a new one. Every case logs an error naming the partition, the offsets and
//! the watermarks, and counts in `chat_persister_offsets_out_of_range_total{case}`.
//!
//! What happens then is `--offset-out-of-range` ([`crate::config::OutOfRangePolicy`]):
//! - `reread` (default): read the partition again from its low watermark, never skipping a
//!   record that exists. Re-reading is harmless: rows are unique by `(room, seq)` (`ON
//!   CONFLICT DO NOTHING`). The stored offset is lowered to the low watermark
//!   ([`crate::pg::offsets::rebase`]): offsets otherwise only move forward, and a restart would
//!   meet the old one again. (A batch of the old log still committing afterwards raises it
//!   again; the next start then meets the same check and re-reads: wasteful, never lossy.)
//! - `stop`: take no assignment and exit with status 3, for operators who want a human to look.
//!
//! Residual: a topic recreated through the admin API while every broker stays up, and grown
//! past our position before our next fetch, is not noticed by a running persister (no error
//! is seen); the next start notices it. Kafka topic ids would close this; rdkafka does not
//! expose them yet.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

/// Set when `stop` refused an assignment: the process then exits with status 3.
pub static REFUSED: AtomicBool = AtomicBool::new(false);

/// The exit status after a refused assignment.
pub const REFUSED_EXIT: i32 = 3;

/// FNV-1a (64 bit) of a record's value: stable across runs and builds, one pass, no allocation.
pub fn fingerprint(value: Option<&[u8]>) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in value.unwrap_or(b"\xff<null>") {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// How a stored offset relates to the partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Nothing stored: read from the beginning.
    Fresh,
    /// Read from `next` without a check (no fingerprint stored, or no watermarks to trust).
    At(i64),
    /// Read from `next - 1`; that record must have fingerprint `hash`.
    Check { next: i64, hash: i64 },
    /// Past the high watermark: this is not the log the offset was stored for.
    Ahead { stored: i64, low: i64, high: i64 },
    /// Before the low watermark: records in between were deleted before they were persisted.
    Behind { stored: i64, low: i64, high: i64 },
}

impl Placement {
    /// `stored`: (next offset, fingerprint); `watermarks`: `None` when the broker did not
    /// answer (the stored offset is then trusted, and the first record still checked).
    pub fn of(stored: Option<(i64, Option<i64>)>, watermarks: Option<(i64, i64)>) -> Placement {
        let Some((next, hash)) = stored else {
            return Placement::Fresh;
        };
        let (low, high) = match watermarks {
            Some((low, high)) if next > high => {
                return Placement::Ahead {
                    stored: next,
                    low,
                    high,
                }
            }
            Some((low, high)) if next < low => {
                return Placement::Behind {
                    stored: next,
                    low,
                    high,
                }
            }
            Some(w) => w,
            None => (0, i64::MAX),
        };
        match hash {
            Some(hash) if next > low && next <= high => Placement::Check { next, hash },
            _ => Placement::At(next),
        }
    }

    /// The metric label of an out-of-range placement.
    pub fn case(&self) -> Option<&'static str> {
        match self {
            Placement::Ahead { .. } => Some("ahead"),
            Placement::Behind { .. } => Some("behind"),
            _ => None,
        }
    }

    /// Where reading starts under `reread` (`None`: the beginning).
    pub fn start(&self) -> Option<i64> {
        match *self {
            Placement::Fresh => None,
            Placement::At(next) => Some(next),
            Placement::Check { next, .. } => Some(next - 1),
            Placement::Ahead { low, .. } | Placement::Behind { low, .. } => Some(low),
        }
    }

    /// The record the first one read must be: (offset, fingerprint).
    pub fn check(&self) -> Option<(i64, i64)> {
        match *self {
            Placement::Check { next, hash } => Some((next - 1, hash)),
            _ => None,
        }
    }

    /// Offsets that will never be read (records deleted before they were persisted).
    pub fn lost(&self) -> u64 {
        match *self {
            Placement::Behind { stored, low, .. } => (low - stored) as u64,
            _ => 0,
        }
    }
}

/// What the polling thread does with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A new record: gather it.
    Take,
    /// The fingerprinted record, as expected: stored already, the log is the same one.
    Confirmed,
    /// The record where a checked one should be is another one: the log was replaced. Read
    /// the partition again from its beginning.
    Replaced { at: i64 },
    /// The broker did not deliver the checked record but later ones (tansu 0.6 answers a
    /// fetch from inside a record batch with the batches after it): the log cannot be
    /// verified, so it is read again from its beginning, never skipped.
    Unverified { at: i64 },
    /// Records were skipped (deleted by retention, or transaction markers): gather it.
    Gap { want: i64 },
    /// Offsets went backwards without a check pending (librdkafka reset a running consumer to
    /// the earliest offset of a new log): gather it.
    Backwards { want: i64 },
}

/// Per partition: the record the next one must be, and the last one read.
#[derive(Default)]
pub struct Continuity {
    checks: HashMap<i32, (i64, i64)>,
    /// Partition -> (offset, fingerprint) of the last record read (no fingerprint: the offset
    /// before the first one to read, nothing read yet).
    last: HashMap<i32, (i64, Option<i64>)>,
}

impl Continuity {
    /// A new assignment: `starts` holds each partition's start offset (`None`: the beginning)
    /// and check.
    pub fn assigned(
        &mut self,
        starts: impl IntoIterator<Item = (i32, Option<i64>, Option<(i64, i64)>)>,
    ) {
        self.checks.clear();
        self.last.clear();
        for (p, start, check) in starts {
            match check {
                Some(c) => {
                    self.checks.insert(p, c);
                }
                None => {
                    if let Some(s) = start {
                        // Only for the gap/backwards checks: the offset before the first.
                        self.last.insert(p, (s - 1, None));
                    }
                }
            }
        }
    }

    pub fn on_record(&mut self, partition: i32, offset: i64, value: Option<&[u8]>) -> Seen {
        let hash = fingerprint(value);
        let previous = self.last.insert(partition, (offset, Some(hash)));
        if let Some((at, want)) = self.checks.remove(&partition) {
            return if offset == at && hash == want {
                Seen::Confirmed
            } else if offset > at {
                self.last.remove(&partition);
                Seen::Unverified { at }
            } else {
                self.last.remove(&partition);
                Seen::Replaced { at }
            };
        }
        match previous {
            Some((prev, _)) if offset > prev + 1 => Seen::Gap { want: prev + 1 },
            Some((prev, _)) if offset <= prev => Seen::Backwards { want: prev + 1 },
            _ => Seen::Take,
        }
    }

    /// After an outage of every broker: the last record read, per partition, to read again
    /// and check ((partition, offset)); reading must be moved back there by the caller.
    pub fn recheck(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&p, &(offset, hash)) in &self.last {
            if let Some(hash) = hash {
                self.checks.insert(p, (offset, hash));
                out.push((p, offset));
            }
        }
        out
    }

    pub fn forget(&mut self, partition: i32) {
        self.checks.remove(&partition);
        self.last.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements() {
        assert_eq!(Placement::of(None, Some((0, 10))), Placement::Fresh);
        assert_eq!(Placement::of(Some((5, None)), None), Placement::At(5));
        assert_eq!(
            Placement::of(Some((5, None)), Some((0, 10))),
            Placement::At(5)
        );
        let check = Placement::of(Some((5, Some(77))), Some((0, 10)));
        assert_eq!(check, Placement::Check { next: 5, hash: 77 });
        assert_eq!((check.start(), check.check()), (Some(4), Some((4, 77))));
        // Without watermarks the first record is still checked.
        assert_eq!(
            Placement::of(Some((5, Some(77))), None).check(),
            Some((4, 77))
        );
        // At the low watermark the record before is gone: nothing to check against.
        assert_eq!(
            Placement::of(Some((8, Some(1))), Some((8, 10))),
            Placement::At(8)
        );
        let ahead = Placement::of(Some((500, Some(1))), Some((0, 20)));
        assert_eq!(
            ahead,
            Placement::Ahead {
                stored: 500,
                low: 0,
                high: 20
            }
        );
        assert_eq!(
            (ahead.case(), ahead.start(), ahead.lost()),
            (Some("ahead"), Some(0), 0)
        );
        let behind = Placement::of(Some((3, None)), Some((8, 20)));
        assert_eq!(
            (behind.case(), behind.start(), behind.lost()),
            (Some("behind"), Some(8), 5)
        );
        assert_eq!(Placement::Fresh.start(), None);
    }

    #[test]
    fn the_checked_record_confirms_or_reveals_a_new_log() {
        let (a, b) = (Some(&b"a"[..]), Some(&b"b"[..]));
        let mut c = Continuity::default();
        c.assigned([
            (0, Some(4), Some((4, fingerprint(a)))),
            (1, Some(4), Some((4, fingerprint(a)))),
        ]);
        assert_eq!(c.on_record(0, 4, a), Seen::Confirmed);
        assert_eq!(c.on_record(0, 5, b), Seen::Take);
        assert_eq!(c.on_record(1, 4, b), Seen::Replaced { at: 4 });
        // Read again from the beginning: no check pending, nothing known.
        assert_eq!(c.on_record(1, 0, a), Seen::Take);
        assert_eq!(c.on_record(1, 3, a), Seen::Gap { want: 1 });
        assert_eq!(c.on_record(1, 0, a), Seen::Backwards { want: 4 });
        // A check record that is not delivered (later ones are) cannot be verified.
        c.assigned([(2, Some(9), Some((9, 1)))]);
        assert_eq!(c.on_record(2, 12, a), Seen::Unverified { at: 9 });
    }

    #[test]
    fn after_an_outage_the_last_record_is_checked_again() {
        let (a, b) = (Some(&b"a"[..]), Some(&b"b"[..]));
        let mut c = Continuity::default();
        c.assigned([(0, None, None)]);
        assert_eq!(c.on_record(0, 0, a), Seen::Take);
        assert_eq!(c.on_record(0, 1, b), Seen::Take);
        assert_eq!(c.recheck(), vec![(0, 1)]);
        assert_eq!(c.on_record(0, 1, b), Seen::Confirmed);
        assert_eq!(c.recheck(), vec![(0, 1)]);
        assert_eq!(c.on_record(0, 1, a), Seen::Replaced { at: 1 });
    }
}
