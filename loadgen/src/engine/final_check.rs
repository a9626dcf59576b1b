//! The final verification of a share, once every shard has stopped: each room and all its
//! members live in one share, so the losses are counted here, against each room's last seq.

use crate::scenario::{dm_users, is_dm_key, Key, Layout};
use crate::stats::Counters;
use crate::verify::StreamSummary;
use std::collections::HashMap;

/// The final verification: every member of every room (and both users of every DM room that
/// got messages) must hold every seq up to the room's last one.
pub(super) fn verify_all(
    layout: &Layout,
    mut final_seq: HashMap<Key, u64>,
    streams: Vec<(u32, Key, StreamSummary)>,
    counters: &mut Counters,
) {
    for (_, key, s) in &streams {
        let e = final_seq.entry(*key).or_default();
        *e = (*e).max(s.highest);
        counters.duplicated += s.duplicated;
        counters.reordered += s.reordered;
    }
    let mut received: HashMap<(u32, Key), StreamSummary> =
        streams.into_iter().map(|(c, k, s)| ((c, k), s)).collect();
    let mut check = |c: u32, key: Key, f: u64| {
        let lost = match received.remove(&(c, key)) {
            Some(s) => s.lost(f),
            None => f,
        };
        counters.lost += lost;
        if is_dm_key(key) {
            counters.lost_dm += lost;
        }
    };
    for r in 0..layout.rooms {
        let f = final_seq.get(&(r as Key)).copied().unwrap_or(0);
        for m in 0..layout.members {
            check(layout.member(r, m), r as Key, f);
        }
    }
    for (&key, &f) in &final_seq {
        if is_dm_key(key) && f > 0 {
            let (a, b) = dm_users(key);
            check(a, key, f);
            check(b, key, f);
        }
    }
    counters.stray += received.values().map(|s| s.received).sum::<u64>();
}
