//! The standalone `cid` dedupe window: `(room, from, cid)` → the first answer, kept for
//! `window_ms` and at most `capacity` pairs, oldest forgotten first.
//!
//! Why not one `HashMap` + one arrival-order queue: a hash table that fills up doubles in one
//! insert, rehashing every pair into a newly allocated table, and the queue doubles by copying.
//! Under load that insert is a stall of the core that owns the rooms. The published standalone
//! sweeps showed it: a 50-130 ms delivery pause whenever a core's window crossed 57,344 and
//! 114,688 pairs (7/8 of 2^16 and 2^17 buckets), at the same second of every run, in both
//! cores at once; one such pause in a 10 s step is enough to miss p99 <= 10 ms. Moving the
//! pairs across incrementally (Redis's way) was tried and did not help end to end: on this VM
//! the cost is as much the OS handing out a fresh multi-megabyte table (page faults cost 3-6 µs
//! each here) as the rehash itself.
//!
//! So the window is [`SHARDS`] small windows, chosen by a hash of the key, each with its own
//! map and arrival-order queue. A shard grows (and expires) on its own: a growth rehashes and
//! allocates 1/256 of the pairs, tens to hundreds of microseconds, and the shards reach their
//! thresholds at slightly different inserts. Expiry is per shard too, on every lookup or insert
//! that touches it, so with keys spread evenly every shard is trimmed all the time; capacity is
//! per shard (`capacity / SHARDS`, rounded up), which bounds the whole the same way.

use ahash::{AHashMap, RandomState};
use std::collections::VecDeque;
use std::rc::Rc;

/// Independent sub-windows. 256 keeps each one's growth under a millisecond up to the default
/// million pairs per core, and costs ~16 KB per core when empty.
pub const SHARDS: usize = 256;

struct Shard<V> {
    map: AHashMap<Rc<str>, V>,
    /// Every key of `map` with its arrival time (ms), oldest first.
    order: VecDeque<(u64, Rc<str>)>,
}

pub struct DedupeWindow<V> {
    window_ms: u64,
    shard_capacity: usize,
    shards: Box<[Shard<V>]>,
    hasher: RandomState,
    pairs: usize,
    /// Pairs forgotten before their window ended because their shard was full.
    evicted_early: u64,
}

impl<V> DedupeWindow<V> {
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        DedupeWindow {
            window_ms,
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS)
                .map(|_| Shard {
                    map: AHashMap::new(),
                    order: VecDeque::new(),
                })
                .collect(),
            hasher: RandomState::new(),
            pairs: 0,
            evicted_early: 0,
        }
    }

    /// The first answer remembered for `key`, if its window (at `now_ms`) has not ended.
    pub fn lookup(&mut self, now_ms: u64, key: &str) -> Option<&V> {
        let i = self.shard_of(key);
        self.expire(i, now_ms);
        self.shards[i].map.get(key)
    }

    /// Remembers `key` (which must not be remembered already: [`Self::lookup`] it first) from
    /// `now_ms`, forgetting its shard's oldest pair if the shard is full.
    pub fn insert(&mut self, now_ms: u64, key: Rc<str>, value: V) {
        let i = self.shard_of(&key);
        self.expire(i, now_ms);
        let shard = &mut self.shards[i];
        if shard.order.len() >= self.shard_capacity {
            if let Some((_, oldest)) = shard.order.pop_front() {
                shard.map.remove(&oldest);
                self.pairs -= 1;
                self.evicted_early += 1;
            }
        }
        let fresh = shard.map.insert(key.clone(), value).is_none();
        debug_assert!(fresh, "{key:?} inserted twice");
        shard.order.push_back((now_ms, key));
        self.pairs += 1;
    }

    /// Pairs remembered.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Pairs forgotten before their window ended because the window was full.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    fn shard_of(&self, key: &str) -> usize {
        // The high bits: the low ones also pick the bucket inside the shard's own map.
        (self.hasher.hash_one(key) >> 56) as usize % SHARDS
    }

    /// Forgets shard `i`'s pairs older than the window.
    fn expire(&mut self, i: usize, now_ms: u64) {
        let shard = &mut self.shards[i];
        while let Some((ts, _)) = shard.order.front() {
            if now_ms.saturating_sub(*ts) <= self.window_ms {
                break;
            }
            let (_, key) = shard.order.pop_front().expect("front exists");
            shard.map.remove(&key);
            self.pairs -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Rc<str> {
        format!("room\0user\0cid-{i}").into()
    }

    #[test]
    fn remembers_until_the_window_ends() {
        let mut d = DedupeWindow::new(1000, 1_000_000);
        d.insert(0, key(1), 11);
        d.insert(500, key(2), 12);
        assert_eq!(d.lookup(1000, &key(1)), Some(&11), "1000 ms after it came");
        assert_eq!(d.lookup(1001, &key(1)), None, "1001 ms after it came");
        assert_eq!(d.lookup(1001, &key(2)), Some(&12));
        assert_eq!(d.lookup(1501, &key(2)), None);
        assert_eq!(d.pairs(), 0);
        assert_eq!(d.evicted_early(), 0);
    }

    #[test]
    fn forgets_the_oldest_of_a_full_shard() {
        // Capacity SHARDS: one pair per shard; a second key in the same shard evicts the first.
        let mut d = DedupeWindow::new(u64::MAX, SHARDS);
        d.insert(0, key(0), 0);
        let same = (1..)
            .find(|&i| d.shard_of(&key(i)) == d.shard_of(&key(0)))
            .unwrap();
        let other = (1..)
            .find(|&i| d.shard_of(&key(i)) != d.shard_of(&key(0)))
            .unwrap();
        d.insert(1, key(other), other);
        d.insert(2, key(same), same);
        assert_eq!(
            d.lookup(3, &key(0)),
            None,
            "evicted by a newer pair of its shard"
        );
        assert_eq!(d.lookup(3, &key(same)), Some(&same));
        assert_eq!(
            d.lookup(3, &key(other)),
            Some(&other),
            "other shards keep theirs"
        );
        assert_eq!((d.pairs(), d.evicted_early()), (2, 1));
    }

    /// Many pairs through the window with expiry interleaved: every pair is found until it
    /// expires and none after, the count stays right, and the keys spread over the shards.
    #[test]
    fn finds_every_pair_until_it_expires() {
        let window = 50_000;
        let mut d = DedupeWindow::new(window, 1_000_000);
        let n = 300_000u64;
        for i in 0..n {
            assert!(d.lookup(i, &key(i)).is_none());
            d.insert(i, key(i), i);
            if i % 997 == 0 {
                for j in [i.saturating_sub(window), i / 2, i.saturating_sub(1), i] {
                    let want = (i - j <= window).then_some(j);
                    assert_eq!(d.lookup(i, &key(j)).copied(), want, "key {j} at {i}");
                }
            }
        }
        // Every shard was touched recently, so each holds only its pairs of the last window.
        let held: usize = d.shards.iter().map(|s| s.map.len()).sum();
        assert_eq!(held, d.pairs());
        assert!(
            d.pairs() as u64 <= window + 1 + SHARDS as u64 * 64,
            "{}",
            d.pairs()
        );
        let sizes: Vec<usize> = d.shards.iter().map(|s| s.map.len()).collect();
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(*min > 100 && *max < 300, "shard sizes {min}..{max}");
        assert_eq!(d.evicted_early(), 0);
    }

    /// Capacity bounds the whole window: no shard holds more than its share.
    #[test]
    fn capacity_bounds_every_shard() {
        let capacity = 10_000;
        let mut d = DedupeWindow::new(u64::MAX, capacity);
        for i in 0..100_000u64 {
            d.insert(i, key(i), ());
        }
        assert!(d.pairs() <= capacity.div_ceil(SHARDS) * SHARDS);
        assert!(d.pairs() > capacity * 9 / 10, "{}", d.pairs());
        assert!(d
            .shards
            .iter()
            .all(|s| s.map.len() <= capacity.div_ceil(SHARDS)));
        assert_eq!(d.evicted_early() as usize, 100_000 - d.pairs());
        // The newest pair of all is still there.
        assert!(d.lookup(100_000, &key(99_999)).is_some());
    }
}
