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
//! lost link), and does the same for the direct-message rooms of the users connected here.
//! With `--redis-replicas` every read of that fill is confirmed by the replicas like any other
//! ([`crate::bus::replication`]).

use super::{stream_messages, Bus, Name};
use crate::bus::redis::{self as keys, RedisConn};
use crate::fanout::CoreMsg;
use crate::metrics::inc;
use chat_wire::frame::{encode_frame, OpCode};
use chat_wire::protocol::dm_members;
use std::rc::Rc;
use std::time::Duration;

/// How often the slot map is read.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// How long the slot map may be unreadable before the cluster client is replaced.
const REBUILD_AFTER: Duration = Duration::from_secs(3);

/// Attempts to subscribe one channel again (the new master may still be taking over).
const SUBSCRIBE_ATTEMPTS: u32 = 20;

impl Bus {
    pub(super) async fn watch_topology(self: Rc<Self>) {
        let mut known: Option<Vec<(i64, i64, String)>> = None;
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let map = match self.redis().slot_masters().await {
                Ok(map) => {
                    failing_since = None;
                    map
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= REBUILD_AFTER {
                        tracing::warn!(error = %e, "the Redis Cluster client has answered nothing for {REBUILD_AFTER:?}; connecting anew");
                        if self.clone().rebuild().await {
                            failing_since = None;
                            known = None;
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
    }

    /// Subscribes a room (`user` false) or user channel again, retrying while the new master
    /// takes over.
    async fn again(&self, channel: &str, user: bool) {
        for attempt in 1..=SUBSCRIBE_ATTEMPTS {
            let redis = self.redis();
            let subscribe = async {
                if user {
                    redis.subscribe_user(channel).await
                } else {
                    redis.subscribe_room(channel).await
                }
            };
            match tokio::time::timeout(Duration::from_secs(2), subscribe).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) if attempt == SUBSCRIBE_ATTEMPTS => {
                    tracing::error!(channel, error = %e, "could not subscribe again")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The direct messages each connected user missed while their channel was gone: read from
    /// the cache after the last one passed on.
    async fn fill_dms(self: &Rc<Self>) {
        let wanted: Vec<(Name, Name, u64)> = {
            let st = self.state.borrow();
            st.dm_last
                .iter()
                .filter(|((room, user), _)| {
                    dm_members(room).is_some() && st.users.contains_key(user)
                })
                .map(|((room, user), last)| (room.clone(), user.clone(), *last))
                .collect()
        };
        for (room, user, last) in wanted {
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(keys::log_key(&room))
                .arg(format!("{}-0", last + 1))
                .arg("+");
            let slot = keys::key_slot(&keys::log_key(&room));
            let msgs = match self.run_retrying(&[(slot, cmd)]).await.map(|mut v| v.pop()) {
                Ok(Some(Ok(v))) => stream_messages(v),
                other => {
                    tracing::warn!(%room, ?other, "direct-message fill failed");
                    continue;
                }
            };
            let mut out: Vec<Vec<CoreMsg>> = (0..self.node.threads).map(|_| Vec::new()).collect();
            {
                let mut st = self.state.borrow_mut();
                for m in &msgs {
                    if let Some(h) = super::msg_head(m) {
                        let frame = encode_frame(OpCode::Text, m);
                        st.hand_out_dm(&user, &room, h.seq, &frame, &mut out);
                    }
                }
            }
            for (core, msgs) in out.into_iter().enumerate() {
                self.send(core, msgs);
            }
        }
    }
}
