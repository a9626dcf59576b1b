//! Live delivery across a Redis Cluster failover or resharding.
//!
//! A node subscribes each room's sharded channel on the master that owns the room's slot, and
//! each user channel on some node. When a master dies and a replica takes its slots (or slots
//! move), those subscriptions die with it; `redis-rs` re-subscribes when it refreshes its slot
//! map, but a node that never sends to the moved slots may refresh before the promotion and
//! then not again, and its members would hear nothing more of those rooms.
//!
//! So the bus watches the slot-to-master map itself (`CLUSTER SLOTS` every
//! [`WATCH_INTERVAL`]). On a change it subscribes every room and user channel again (where
//! they live now: `SSUBSCRIBE` of a channel already subscribed is harmless), then compares
//! every room with Redis and fills what was missed from the cache (the same resync as after a
//! lost link), and does the same for the direct-message rooms of the users connected here
//! (dm_index.rs).
//! Then it keeps comparing the rooms for a while ([`Bus::settle`] in catch_up.rs), because a
//! subscription taken during the takeover may still be dead.
//! With `--redis-replicas` every read of that fill is confirmed by the replicas like any other
//! ([`crate::bus::replication`]).

use super::{Bus, Name};
use crate::bus::redis::ChannelKind;
use crate::bus::redis::{self as keys, RedisConn};
use crate::metrics::inc;
use std::rc::Rc;
use std::time::Duration;

/// How often the slot map is read.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// How long one read of the slot map may take.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the slot map may be unreadable before the cluster client is replaced.
const REBUILD_AFTER: Duration = Duration::from_secs(3);

/// Attempts to subscribe one channel again (the new master may still be taking over).
const SUBSCRIBE_ATTEMPTS: u32 = 20;

impl Bus {
    pub(super) async fn watch_topology(self: Rc<Self>) {
        // The last map read. It survives a rebuild of the client, so that a change that
        // happened while the client answered nothing is still seen (and counted) afterwards.
        let mut known: Option<Vec<(i64, i64, String)>> = None;
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            // Bounded: during a failover redis-rs may hold a request for as long as its slot
            // refresh fails, and the watch must get to the rebuild below.
            let read = tokio::time::timeout(READ_TIMEOUT, self.redis().slot_masters()).await;
            let map = match read {
                Ok(Ok(map)) => {
                    failing_since = None;
                    map
                }
                failed => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= REBUILD_AFTER {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer in {READ_TIMEOUT:?}"),
                        };
                        tracing::warn!(error, "the Redis Cluster client has answered nothing for {REBUILD_AFTER:?}; connecting anew");
                        if self.clone().rebuild().await {
                            failing_since = None;
                        }
                    }
                    continue;
                }
            };
            if known.as_ref().is_some_and(|k| *k != map) {
                inc(&self.node.metrics.bus.redis_topology_changes);
                tracing::warn!(
                    masters = map.len(),
                    "the Redis Cluster's slot map changed; subscribing every channel again"
                );
                // Also after a rebuild, whose own pass may have run before the promotion.
                tokio::task::spawn_local(self.clone().rehome());
            }
            known = Some(map);
        }
    }

    /// A new cluster client from the seeds, its pushes received, every channel subscribed on
    /// it and every gap filled. redis-rs 1.8's cluster client can end up with no connection
    /// left after a failover ("slot refresh failed: No connections found") and never recover
    /// (seen in drill redis-failover); a new client from the seeds does. False when the seeds
    /// do not answer either.
    async fn rebuild(self: Rc<Self>) -> bool {
        match RedisConn::connect(&self.cfg.redis).await {
            Ok((conn, pushes)) => {
                *self.redis.borrow_mut() = conn;
                inc(&self.node.metrics.bus.redis_client_rebuilds);
                tokio::task::spawn_local(self.clone().receive(pushes));
                tokio::task::spawn_local(self.clone().rehome());
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "no Redis Cluster seed answers yet");
                false
            }
        }
    }

    /// Every channel subscribed again where it lives now, then every gap filled.
    async fn rehome(self: Rc<Self>) {
        let (rooms, users): (Vec<Name>, Vec<Name>) = {
            let st = self.state.borrow();
            (
                st.rooms.keys().cloned().collect(),
                st.users.keys().cloned().collect(),
            )
        };
        for room in &rooms {
            let channel = keys::room_channel(room);
            self.again(&channel, false).await;
        }
        for user in &users {
            let channel = keys::user_channel(user);
            self.again(&channel, true).await;
        }
        let start = !std::mem::replace(&mut self.state.borrow_mut().resync_pending, true);
        if start {
            tokio::task::spawn_local(self.clone().resync());
        }
        self.fill_dms().await;
        tracing::info!(
            rooms = rooms.len(),
            users = users.len(),
            "channels subscribed again"
        );
        if !std::mem::replace(&mut self.state.borrow_mut().settling, true) {
            self.clone().settle().await;
            self.state.borrow_mut().settling = false;
        }
    }

    /// Subscribes a room (`user` false) or user channel again, retrying while the new master
    /// takes over.
    pub(super) async fn again(&self, channel: &str, user: bool) {
        for attempt in 1..=SUBSCRIBE_ATTEMPTS {
            let redis = self.redis();
            let kind = if user {
                ChannelKind::User
            } else {
                ChannelKind::Room
            };
            let subscribe = redis.subscribe(channel, kind);
            match tokio::time::timeout(Duration::from_secs(2), subscribe).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) if attempt == SUBSCRIBE_ATTEMPTS => {
                    tracing::error!(channel, error = %e, "could not subscribe again")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
