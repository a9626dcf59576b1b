//! The standalone `cid` dedupe window: `(room, from, cid)` → the first answer, kept for
//! `window_ms` and at most `capacity` pairs, oldest forgotten first.
//!
//! Why not just a `HashMap`: a hash table that fills up grows by rehashing *every* entry into a
//! table twice the size, in one insert. Under load that insert is a stall of the core that owns
//! the rooms: 17 ms at 229,376 pairs here with warm memory, 30-80 ms when the new table is fresh
//! memory (`cargo bench -p chat-bench --bench dedupe`), and both cores of a 2-core machine cross
//! the same threshold together. The published standalone sweeps showed it: a 90-130 ms delivery
//! pause at exactly 57k, 115k and 229k messages per core since the server started, enough on
//! its own to push a 10 s step's p99 over 10 ms. Every doubling on the way to the default
//! million pairs is one. So this table grows the way Redis's dictionaries do: incrementally. When
//! `current` is full, it becomes `previous` and a table twice its size takes its place; every
//! insert then moves [`MOVES_PER_INSERT`] pairs across, so `previous` is empty long before the
//! new table is full, and no insert does more than a few entries' work. Lookups and removals
//! look in both.
//!
//! The pairs to move are found through `order` (every key in arrival order, for expiry): the
//! pairs still in `previous` are the oldest ones, so a cursor into `order` walks them without
//! scanning the table.
//!
//! What is left of a growth is allocating the new table (its control bytes are written once)
//! and the `order` queue doubling: ~0.2 ms at 250k pairs with recycled memory, a few ms when the
//! OS has to hand out fresh pages (a VM's page faults cost 3-6 µs each here). The price is the
//! moves: about twice a plain map's average insert time (the `dedupe/grow` bench), well under
//! 1 µs per message.

use ahash::AHashMap;
use std::collections::VecDeque;
use std::rc::Rc;

/// Pairs moved from the old table into the new one per insert: with 2, the old table (at most
/// half the new one's capacity) is empty after inserting a quarter of the new capacity.
const MOVES_PER_INSERT: usize = 2;

/// Smallest table.
const MIN_CAPACITY: usize = 64;

pub struct DedupeWindow<V> {
    window_ms: u64,
    capacity: usize,
    current: AHashMap<Rc<str>, V>,
    /// The table before the last growth, emptied into `current` a few pairs per insert.
    previous: AHashMap<Rc<str>, V>,
    /// Every key in either table with its arrival time (ms), oldest first.
    order: VecDeque<(u64, Rc<str>)>,
    /// Index in `order` of the next key to move out of `previous` (those before it were moved
    /// or have expired).
    cursor: usize,
    /// Pairs forgotten before their window ended because of `capacity`.
    evicted_early: u64,
    /// Times `current` grew on its own (rehashing everything in one insert): never, when the
    /// incremental growth works.
    rehashed_in_one_insert: u64,
}

impl<V> DedupeWindow<V> {
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        DedupeWindow {
            window_ms,
            capacity: capacity.max(1),
            current: AHashMap::new(),
            previous: AHashMap::new(),
            order: VecDeque::new(),
            cursor: 0,
            evicted_early: 0,
            rehashed_in_one_insert: 0,
        }
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    /// Pairs remembered.
    pub fn pairs(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Pairs forgotten before their window ended because the window was full.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    /// Forgets the pairs older than the window (at `now_ms`), and the oldest ones while the
    /// window is full. Call before [`Self::insert`].
    pub fn expire(&mut self, now_ms: u64) {
        while let Some((ts, _)) = self.order.front() {
            let expired = now_ms.saturating_sub(*ts) > self.window_ms;
            let over = self.order.len() >= self.capacity;
            if !expired && !over {
                break;
            }
            if !expired {
                self.evicted_early += 1;
            }
            let (_, key) = self.order.pop_front().expect("front exists");
            self.cursor = self.cursor.saturating_sub(1);
            if self.current.remove(&key).is_none() {
                self.previous.remove(&key);
            }
        }
    }

    /// Remembers `key` (which must not be remembered already: look it up first) from `now_ms`.
    pub fn insert(&mut self, now_ms: u64, key: Rc<str>, value: V) {
        debug_assert!(self.get(&key).is_none(), "{key:?} inserted twice");
        if self.current.len() == self.current.capacity() {
            self.grow();
        }
        let capacity = self.current.capacity();
        self.current.insert(key.clone(), value);
        // `capacity()` is len + the inserts left before a rehash: it grows by 1 when an insert
        // reuses a removed pair's slot, by much more only when the table rehashed.
        if self.current.capacity() > capacity + 1 {
            self.rehashed_in_one_insert += 1;
        }
        self.order.push_back((now_ms, key));
        self.move_some(MOVES_PER_INSERT);
    }

    /// `current` is full: it becomes `previous` (which is empty by now) and a table twice as
    /// large takes its place. Allocating the new table is the only work done here. (Under
    /// steady churn -- pairs expiring as fast as they come -- `current` also fills up with the
    /// slots of removed pairs; the same switch then compacts it, a few pairs per insert,
    /// where a plain map would rehash it in place in one insert.)
    fn grow(&mut self) {
        // Normally empty already; if not (a table that grew faster than it was emptied, which
        // MOVES_PER_INSERT rules out), finish moving it first so no pair is lost.
        self.move_some(usize::MAX);
        let capacity = (self.current.capacity() * 2).max(MIN_CAPACITY);
        let bigger = AHashMap::with_capacity_and_hasher(capacity, Default::default());
        self.previous = std::mem::replace(&mut self.current, bigger);
        // The pairs of `previous` are exactly the keys of `order` (all older than this insert).
        self.cursor = 0;
    }

    /// Moves up to `n` pairs from `previous` into `current`.
    fn move_some(&mut self, mut n: usize) {
        while n > 0 && !self.previous.is_empty() {
            let Some((_, key)) = self.order.get(self.cursor) else {
                // Unreachable: `previous` only holds keys of `order` before the cursor's end.
                debug_assert!(false, "previous not empty past the end of order");
                break;
            };
            if let Some((k, v)) = self.previous.remove_entry(key) {
                // Room is certain: `current` was fresh with twice `previous`'s pairs of space,
                // and takes at most 1.5x them (one new pair per two moved) until it is empty.
                debug_assert!(self.current.len() < self.current.capacity());
                self.current.insert(k, v);
                n -= 1;
            }
            self.cursor += 1;
        }
        if self.previous.is_empty() && self.previous.capacity() > 0 {
            // Give the old table's memory back now, not at the next growth.
            self.previous = AHashMap::new();
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
        d.expire(0);
        d.insert(0, key(1), 11);
        d.expire(500);
        d.insert(500, key(2), 12);
        assert_eq!(d.get(&key(1)), Some(&11));
        d.expire(1001);
        assert_eq!(d.get(&key(1)), None, "1001 ms after it came");
        assert_eq!(d.get(&key(2)), Some(&12));
        d.expire(1501);
        assert_eq!(d.pairs(), 0);
        assert_eq!(d.evicted_early(), 0);
    }

    #[test]
    fn forgets_the_oldest_when_full() {
        let mut d = DedupeWindow::new(u64::MAX, 3);
        for i in 0..5 {
            d.expire(i);
            d.insert(i, key(i), i);
        }
        assert_eq!(d.pairs(), 3);
        assert_eq!(d.get(&key(1)), None);
        assert_eq!(d.get(&key(2)), Some(&2));
        assert_eq!(d.get(&key(4)), Some(&4));
        assert_eq!(d.evicted_early(), 2);
    }

    /// Growing through many doublings, with expiry interleaved: every pair is found until it
    /// expires, none after, and the table never rehashed everything in one insert.
    #[test]
    fn grows_incrementally_and_loses_nothing() {
        let window = 50_000;
        let mut d = DedupeWindow::new(window, 1_000_000);
        let n = 300_000u64;
        for i in 0..n {
            d.expire(i);
            assert!(d.get(&key(i)).is_none());
            d.insert(i, key(i), i);
            // Spot checks across both tables while they are being moved.
            if i % 997 == 0 {
                for j in [i.saturating_sub(window), i / 2, i.saturating_sub(1), i] {
                    let want = (i - j <= window).then_some(j);
                    assert_eq!(d.get(&key(j)).copied(), want, "key {j} at {i}");
                }
            }
        }
        assert_eq!(d.pairs() as u64, window + 1);
        for j in n - window - 1..n {
            assert_eq!(d.get(&key(j)), Some(&j));
        }
        assert_eq!(d.get(&key(n - window - 2)), None);
        assert_eq!(d.rehashed_in_one_insert, 0);
        assert!(d.previous.is_empty(), "{} left to move", d.previous.len());
    }

    /// The table a plain map would have rehashed whole at 57k, 115k and 229k pairs.
    #[test]
    fn no_insert_moves_more_than_a_few_pairs() {
        let mut d = DedupeWindow::new(u64::MAX, 1_000_000);
        let mut biggest_move = 0;
        for i in 0..250_000u64 {
            let before = d.previous.len();
            let was_full = d.current.len() == d.current.capacity();
            d.insert(i, key(i), ());
            if !was_full {
                biggest_move = biggest_move.max(before - d.previous.len());
            } else {
                // A growth: the old table moved aside whole, nothing rehashed.
                assert_eq!(before, 0, "grew with {before} pairs still unmoved");
                assert!(i < MIN_CAPACITY as u64 || !d.previous.is_empty());
            }
        }
        assert_eq!(biggest_move, MOVES_PER_INSERT);
        assert_eq!(d.rehashed_in_one_insert, 0);
        assert_eq!(d.pairs(), 250_000);
    }
}
