//! Direct messages a connected user missed while their channel was gone.
//!
//! A direct message reaches a user's node through the user's channel (`chat:u:{USER}`, plain
//! pub/sub). When that subscription dies (its Redis node failed, the link dropped) the DMs
//! published meanwhile never arrive, and unlike a room, the node cannot know which DM rooms
//! to look at: the first DM of a new pair names a room it has never seen.
//!
//! So each accepted DM also records its room in both users' index, a hash
//! `chat:u:{USER}:dms` (room -> latest seq, same slot as the user's channel, refreshed TTL
//! [`INDEX_TTL_S`]), written after the publish step without holding the ack. After the
//! channel is subscribed again (a failover, a lost link back), [`Bus::fill_dms`] reads each
//! connected user's index and passes on, from the room's cache, what came after the last seq
//! passed on here; for a room the node has not passed anything of, only what was sent since
//! the user's channel was first subscribed here.
//!
//! A live DM whose seq skips ahead of the last one passed on to its user here (its
//! predecessor was lost with the subscription) is held while the gap is filled from the
//! cache ([`Bus::on_dm`]), as room messages are: the user gets every DM once, in order.
//!
//! Cost: two `HSET` + two `EXPIRE` per DM, pipelined, off the ack path; nothing for room
//! messages.

use super::resp::{msg_head, stream_messages};
use super::{Bus, Name};
use crate::bus::redis as keys;
use crate::messages::CoreMsg;
use bytes::Bytes;
use chat_wire::frame::{encode_frame, OpCode};
use redis::Value;
use std::rc::Rc;

/// How long a user's DM index lives after their last DM, s.
pub const INDEX_TTL_S: u64 = 86_400;

/// Most cached DMs read back for a room not seen here (only those sent since the user's
/// channel was subscribed are passed on).
const LOOKBACK: u64 = 100;

/// How far a DM's `ts` may precede the subscription time and still count as sent since, ms
/// (clocks of two nodes).
const CLOCK_SLACK_MS: u64 = 2_000;

/// The hash of `user`'s DM rooms.
pub fn index_key(user: &str) -> String {
    format!("{}:dms", keys::user_channel(user))
}

/// The index writes for one accepted DM in `room` at `seq` between `a` and `b`.
pub fn index_writes(room: &str, seq: u64, a: &str, b: &str) -> Vec<(u16, redis::Cmd)> {
    let mut out = Vec::with_capacity(4);
    for user in [a, b] {
        let key = index_key(user);
        let slot = keys::key_slot(&key);
        let mut set = redis::cmd("HSET");
        set.arg(&key).arg(room).arg(seq);
        let mut ttl = redis::cmd("EXPIRE");
        ttl.arg(&key).arg(INDEX_TTL_S);
        out.push((slot, set));
        out.push((slot, ttl));
    }
    out
}

pub use crate::messages::now_ms;

impl Bus {
    /// The direct messages each connected user missed: their index read, each room's cache
    /// read after the last seq passed on here.
    pub(super) async fn fill_dms(self: &Rc<Self>) {
        let users: Vec<(Name, u64)> = {
            let st = self.state.borrow();
            st.users
                .keys()
                .map(|u| (u.clone(), st.user_since.get(u).copied().unwrap_or(0)))
                .collect()
        };
        let (mut rooms_read, mut passed_on) = (0, 0);
        let n_users = users.len();
        for (user, since) in users {
            let key = index_key(&user);
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&key);
            let rooms = match self.run_retrying(&[(keys::key_slot(&key), cmd)]).await {
                Ok(mut v) => match v.pop() {
                    Some(Ok(v)) => index_rooms(v),
                    other => {
                        tracing::warn!(%user, ?other, "direct-message index unreadable");
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!(%user, error = %e, "direct-message index unreadable");
                    continue;
                }
            };
            for (room, latest) in rooms {
                let known = {
                    let st = self.state.borrow();
                    st.dm_last.get(&(room.clone(), user.clone())).copied()
                };
                if known.is_some_and(|last| last >= latest) {
                    continue;
                }
                rooms_read += 1;
                let from = match known {
                    Some(last) => last + 1,
                    None => latest.saturating_sub(LOOKBACK).max(1),
                };
                passed_on += self.fill_dm(&user, &room, known, from, since, false).await;
            }
        }
        if passed_on > 0 {
            tracing::info!(
                users = n_users,
                rooms = rooms_read,
                messages = passed_on,
                "direct messages missed with a lost subscription passed on"
            );
        }
    }

    /// A direct message received live for `user`: passed on in seq order, or held while the
    /// seqs before it are filled from the cache (a copy lost while the channel was gone).
    pub(super) fn on_dm(
        self: &Rc<Self>,
        user: &str,
        room: Name,
        seq: u64,
        frame: Bytes,
        out: &mut [Vec<CoreMsg>],
    ) {
        let mut st = self.state.borrow_mut();
        if !st.users.contains_key(user) {
            return;
        }
        let key = (room.clone(), Name::from(user));
        if let Some(held) = st.dm_held.get_mut(&key) {
            held.push((seq, frame));
            return;
        }
        match st.dm_last.get(&key) {
            Some(&last) if seq > last + 1 => {
                st.dm_held.insert(key, vec![(seq, frame)]);
                drop(st);
                let (bus, user) = (self.clone(), Name::from(user));
                tokio::task::spawn_local(async move {
                    bus.fill_dm(&user, &room, Some(last), last + 1, 0, true)
                        .await;
                });
            }
            // The first DM of this room passed on here, not the room's first: those before it
            // sent since the user's channel was subscribed here may have been lost with it.
            None if seq > 1 => {
                let since = st.user_since.get(user).copied().unwrap_or(u64::MAX);
                st.dm_held.insert(key, vec![(seq, frame)]);
                drop(st);
                let (bus, user) = (self.clone(), Name::from(user));
                let from = seq.saturating_sub(LOOKBACK).max(1);
                tokio::task::spawn_local(async move {
                    bus.fill_dm(&user, &room, None, from, since, true).await;
                });
            }
            _ => {
                st.hand_out_dm(user, &room, seq, &frame, out);
            }
        }
    }

    /// Passes on the cached DMs of `room` from seq `from` to `user`: after `known` (the last seq
    /// passed on here), or, for a room not seen here, those sent since `since` (ms); then what was held
    /// meanwhile, all in seq order. `claimed`: the caller already holds the room's live DMs
    /// for this fill (on_dm). Returns how many were passed on (0 when a fill of the same room
    /// for the same user is already running: it passes them on).
    async fn fill_dm(
        self: &Rc<Self>,
        user: &Name,
        room: &Name,
        known: Option<u64>,
        from: u64,
        since: u64,
        claimed: bool,
    ) -> usize {
        let key = (room.clone(), user.clone());
        if !claimed {
            let mut st = self.state.borrow_mut();
            if st.dm_held.contains_key(&key) {
                return 0;
            }
            st.dm_held.insert(key.clone(), Vec::new());
        }
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(keys::log_key(room))
            .arg(format!("{from}-0"))
            .arg("+");
        let slot = keys::key_slot(&keys::log_key(room));
        let msgs = match self.run_retrying(&[(slot, cmd)]).await.map(|mut v| v.pop()) {
            Ok(Some(Ok(v))) => stream_messages(v),
            other => {
                tracing::warn!(%room, ?other, "direct-message fill failed");
                Vec::new()
            }
        };
        let mut out: Vec<Vec<CoreMsg>> = (0..self.node.threads).map(|_| Vec::new()).collect();
        let mut passed_on = 0;
        {
            let mut st = self.state.borrow_mut();
            let mut items: Vec<(u64, Bytes)> = msgs
                .iter()
                .filter_map(|m| {
                    let h = msg_head(m)?;
                    let recent = known.is_some() || h.ts + CLOCK_SLACK_MS >= since;
                    recent.then(|| (h.seq, encode_frame(OpCode::Text, m)))
                })
                .collect();
            items.extend(st.dm_held.remove(&key).unwrap_or_default());
            items.sort_by_key(|(seq, _)| *seq);
            for (seq, frame) in items {
                passed_on += st.hand_out_dm(user, room, seq, &frame, &mut out) as usize;
            }
        }
        for (core, msgs) in out.into_iter().enumerate() {
            self.send(core, msgs);
        }
        passed_on
    }
}

/// `HGETALL`'s answer as (room, seq) pairs (RESP2 flat array or RESP3 map).
fn index_rooms(v: Value) -> Vec<(Name, u64)> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Map(m) => m,
        Value::Array(a) => {
            let mut it = a.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| {
            let room = match k {
                Value::BulkString(b) => String::from_utf8(b).ok()?,
                _ => return None,
            };
            let seq = match v {
                Value::BulkString(b) => std::str::from_utf8(&b).ok()?.parse().ok()?,
                Value::Int(i) => u64::try_from(i).ok()?,
                _ => return None,
            };
            Some((Name::from(room.as_str()), seq))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_of_a_user_lives_in_the_slot_of_their_channel() {
        let key = index_key("alice");
        assert_eq!(key, "chat:u:{alice}:dms");
        assert_eq!(
            keys::key_slot(&key),
            keys::key_slot(&keys::user_channel("alice"))
        );
        let writes = index_writes("dm:alice:bob", 7, "alice", "bob");
        assert_eq!(writes.len(), 4);
        assert_eq!(writes[0].0, keys::key_slot(&keys::user_channel("alice")));
        assert_eq!(writes[2].0, keys::key_slot(&keys::user_channel("bob")));
    }

    #[test]
    fn index_answers_are_read_in_both_resp_versions() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![b("dm:a:b"), b("3"), b("dm:a:c"), b("12")]);
        let resp3 = Value::Map(vec![(b("dm:a:b"), b("3")), (b("dm:a:c"), Value::Int(12))]);
        for v in [resp2, resp3] {
            let mut rooms = index_rooms(v);
            rooms.sort();
            assert_eq!(
                rooms,
                vec![(Name::from("dm:a:b"), 3), (Name::from("dm:a:c"), 12)]
            );
        }
    }
}
