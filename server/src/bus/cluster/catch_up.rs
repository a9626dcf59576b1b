//! Catching up with Redis when pub/sub may have missed messages.
//!
//! Pub/sub is live delivery only: a message published while a node's subscription was gone
//! (a lost link, a failover, a moved slot) never arrives. A later message of the same room
//! shows the gap and the bus fills it from the cache (`Bus::fill`), but a room whose
//! subscription stays dead shows nothing at all. So the bus compares rooms with Redis:
//!
//! - [`Bus::resync`], after a lost link: once Redis answers, every room whose latest seq moved
//!   past the last one passed on is filled.
//! - [`Bus::settle`], after channels were subscribed again (a failover): every
//!   [`SETTLE_INTERVAL`] the rooms are compared again, and a room that has still not passed on
//!   what Redis already held one round before is filled and its channel subscribed once more
//!   (the new master may have taken the first `SSUBSCRIBE` before it owned the slot). It stops
//!   after two rounds with no such room, or after [`SETTLE_ROUNDS`].
//!
//! With `--redis-replicas` every read is confirmed by the replicas like any other.

use super::resp::{unreplicated, value_u64};
use super::{Bus, Name};
use crate::bus::redis as keys;
use ahash::AHashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// How often the rooms are compared after a failover.
pub const SETTLE_INTERVAL: Duration = Duration::from_secs(1);

/// Most comparisons after one failover.
pub const SETTLE_ROUNDS: u32 = 30;

/// One room as compared: the last seq passed on here, the latest one Redis has.
struct Compared {
    room: Name,
    last: u64,
    latest: u64,
}

impl Bus {
    /// After a lost link: once Redis answers, fill every room whose latest seq moved on.
    pub(super) async fn resync(self: Rc<Self>) {
        let mut wait = Duration::from_millis(100);
        loop {
            tokio::time::sleep(wait).await;
            match self.compare_rooms().await {
                Ok(rooms) => {
                    self.state.borrow_mut().resync_pending = false;
                    self.node.metrics.bus.redis_up.store(1, Relaxed);
                    for c in rooms.into_iter().filter(|c| c.latest > c.last) {
                        self.start_fill(c.room, c.last);
                    }
                    tracing::info!("Redis link back; rooms compared");
                    self.fill_dms().await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Redis rooms not compared yet");
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// After every channel was subscribed again: compare until the rooms keep up (see the
    /// module comment).
    pub(super) async fn settle(self: Rc<Self>) {
        let mut before: AHashMap<Name, u64> = AHashMap::new();
        let mut quiet = 0;
        for _ in 0..SETTLE_ROUNDS {
            tokio::time::sleep(SETTLE_INTERVAL).await;
            let Ok(rooms) = self.compare_rooms().await else {
                quiet = 0;
                continue;
            };
            let stuck: Vec<Compared> = rooms
                .iter()
                .filter(|c| before.get(&c.room).is_some_and(|&b| b > c.last))
                .map(|c| Compared {
                    room: c.room.clone(),
                    last: c.last,
                    latest: c.latest,
                })
                .collect();
            before = rooms.into_iter().map(|c| (c.room, c.latest)).collect();
            if stuck.is_empty() {
                quiet += 1;
                if quiet >= 2 {
                    return;
                }
                continue;
            }
            quiet = 0;
            tracing::warn!(
                rooms = stuck.len(),
                "rooms behind Redis after the failover; filling them and subscribing again"
            );
            for c in stuck {
                self.again(&keys::room_channel(&c.room), false).await;
                if c.latest > c.last {
                    self.start_fill(c.room, c.last);
                }
            }
        }
    }

    /// Every subscribed room with a known last seq, beside its latest seq in Redis.
    async fn compare_rooms(&self) -> Result<Vec<Compared>, String> {
        let rooms: Vec<(Name, u64)> = {
            let st = self.state.borrow();
            st.rooms
                .iter()
                .filter_map(|(r, t)| t.last.map(|l| (r.clone(), l)))
                .collect()
        };
        let cmds: Vec<(u16, redis::Cmd)> = rooms
            .iter()
            .map(|(r, _)| {
                let mut c = redis::cmd("GET");
                c.arg(keys::seq_key(r));
                (keys::key_slot(&keys::seq_key(r)), c)
            })
            .collect();
        let answers = self
            .redis()
            .run_with(&cmds, self.confirm())
            .await
            .map_err(|e| e.to_string())?;
        if answers.iter().any(unreplicated) {
            return Err("the replicas did not confirm the reads yet".into());
        }
        Ok(rooms
            .into_iter()
            .zip(answers)
            .map(|((room, last), answer)| Compared {
                room,
                last,
                latest: answer.map(|v| value_u64(&v)).unwrap_or(0),
            })
            .collect())
    }

    /// Fills `room` from the seq after `last`, unless a fill is already running.
    fn start_fill(self: &Rc<Self>, room: Name, last: u64) {
        let start = match self.state.borrow_mut().rooms.get_mut(&room) {
            Some(t) if !t.filling => {
                t.filling = true;
                true
            }
            _ => false,
        };
        if start {
            tokio::task::spawn_local(self.clone().fill(room, last + 1));
        }
    }
}
