//! Joins, history and resume: subscribing a room's channel on this node for a core, and
//! answering with the room's seq or its recent messages (the cache in Redis, then PostgreSQL
//! through [`super::from_store`]).

use super::from_store::{StoreReplay, BUSY};
use super::resp::{bulk, msg_head, stream_messages, value_u64};
use super::{dm_index, Bus, REDIS_RETRY_BUDGET};
use crate::bus::redis::{self as keys, ChannelKind};
use crate::messages::{Channel, CoreId, FetchKind, FetchRequest, Name, Reply, ReplyTo};
use chat_wire::frame::{encode_frame, OpCode};
use chat_wire::protocol::{reply, ErrorCode};
use redis::{RedisResult, Value};
use std::rc::Rc;

impl Bus {
    /// Makes the node subscribed to `room` for `core`; returns once Redis confirmed.
    pub(super) async fn subscribe_room(&self, room: &Name, core: CoreId) -> RedisResult<()> {
        let first = {
            let mut st = self.state.borrow_mut();
            let track = st.rooms.entry(room.clone()).or_default();
            let first = track.cores.is_empty();
            track.cores.insert(core);
            first
        };
        if first {
            let channel = keys::room_channel(room);
            let redis = self.redis();
            let subscribe = redis.subscribe(&channel, ChannelKind::Room);
            match tokio::time::timeout(REDIS_RETRY_BUDGET, subscribe).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "SUBSCRIBE timed out",
                    )))
                }
            }
        }
        Ok(())
    }

    pub(super) async fn join(self: Rc<Self>, room: Name, user: Name, subscribe: bool, to: ReplyTo) {
        if subscribe {
            if let Err(e) = self.subscribe_room(&room, to.core).await {
                tracing::warn!(%room, error = %e, "SUBSCRIBE failed");
            }
        }
        let mut get = redis::cmd("GET");
        get.arg(keys::seq_key(&room));
        let slot = keys::key_slot(&keys::seq_key(&room));
        match self.run_retrying(&[(slot, get)]).await.map(|mut v| v.pop()) {
            Ok(Some(Ok(v))) => {
                let seq = value_u64(&v);
                if subscribe {
                    self.state.borrow_mut().seed_last(&room, seq);
                }
                let read = self.read_pointer(&room, &user).await;
                self.reply(to, Reply::joined(room, seq, read));
            }
            other => {
                tracing::warn!(%room, ?other, "join failed");
                self.reply_failed(to, room, "Redis is unavailable; retry");
            }
        }
    }

    pub(super) async fn fetch(self: Rc<Self>, req: FetchRequest) {
        let FetchRequest {
            room,
            user,
            kind,
            subscribe,
            reply: to,
            gauge,
        } = req;
        if subscribe {
            if let Err(e) = self.subscribe_room(&room, to.core).await {
                tracing::warn!(%room, error = %e, "SUBSCRIBE failed");
            }
        }
        match kind {
            FetchKind::History { before, limit } => {
                let end = match before {
                    Some(0) | Some(1) => {
                        self.reply(
                            to,
                            Reply::Frames(vec![reply::history(&room, std::iter::empty::<&[u8]>())]),
                        );
                        return;
                    }
                    Some(b) => format!("{}-0", b - 1),
                    None => "+".into(),
                };
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(keys::log_key(&room))
                    .arg(end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit);
                let slot = keys::key_slot(&keys::log_key(&room));
                match self.run_retrying(&[(slot, cmd)]).await.map(|mut v| v.pop()) {
                    Ok(Some(Ok(v))) => {
                        let mut msgs = stream_messages(v);
                        msgs.reverse();
                        // Older than the cache holds: the rest of the page from PostgreSQL.
                        if msgs.len() < limit as usize {
                            let oldest = msgs.first().and_then(|m| msg_head(m)).map(|h| h.seq);
                            let older_than = oldest.or(before).unwrap_or(u64::MAX);
                            let wanted = limit - msgs.len() as u32;
                            match self.history_from_store(&room, older_than, wanted).await {
                                Ok(mut older) => {
                                    older.append(&mut msgs);
                                    msgs = older;
                                }
                                Err(message) => {
                                    self.reply_error(to, ErrorCode::Unavailable, message, None);
                                    return;
                                }
                            }
                        }
                        self.reply(
                            to,
                            Reply::Frames(vec![reply::history(&room, msgs.iter().map(|m| &m[..]))]),
                        );
                    }
                    other => {
                        tracing::warn!(%room, ?other, "history failed");
                        self.reply_error(
                            to,
                            ErrorCode::Unavailable,
                            "Redis is unavailable; retry",
                            None,
                        );
                    }
                }
            }
            FetchKind::Resume { after } => {
                let keys = [keys::seq_key(&room), keys::log_key(&room)];
                let first = after.saturating_add(1);
                match self
                    .eval(true, &keys, &[first.to_string().into_bytes()])
                    .await
                {
                    Ok(Value::Array(parts)) if parts.len() == 2 => {
                        let latest = value_u64(&parts[0]);
                        let msgs: Vec<Vec<u8>> = match &parts[1] {
                            Value::Array(items) => items.iter().filter_map(bulk).collect(),
                            _ => Vec::new(),
                        };
                        // What the cache no longer holds comes from PostgreSQL first, page by
                        // page at the client's pace (those frames go out as they are read).
                        let cached_from = msgs
                            .first()
                            .and_then(|m| msg_head(m))
                            .map_or(latest.saturating_add(1), |h| h.seq);
                        let mut expect = first;
                        let mut complete = true;
                        if first < cached_from {
                            match self
                                .resume_from_store(&room, first, cached_from, to, &gauge)
                                .await
                            {
                                StoreReplay::Sent { next, gapless } => {
                                    expect = next;
                                    complete = gapless;
                                }
                                StoreReplay::Busy => {
                                    self.reply_failed(to, room, BUSY);
                                    return;
                                }
                            }
                        }
                        // Complete only when exactly after+1 ..= latest has been sent.
                        for m in &msgs {
                            match msg_head(m) {
                                Some(h) if h.seq == expect => expect += 1,
                                _ => complete = false,
                            }
                        }
                        complete &= expect > latest || latest <= after;
                        if subscribe {
                            self.state.borrow_mut().seed_last(&room, latest);
                        }
                        let frames = msgs.iter().map(|m| encode_frame(OpCode::Text, m)).collect();
                        let read = self.read_pointer(&room, &user).await;
                        self.reply(to, Reply::resumed(room, latest, read, frames, complete));
                    }
                    other => {
                        tracing::warn!(%room, ?other, "resume failed");
                        self.reply_failed(to, room, "Redis is unavailable; retry");
                    }
                }
            }
        }
    }

    pub(super) fn subscribe_user(self: &Rc<Self>, user: Name, core: CoreId) {
        let first = {
            let mut st = self.state.borrow_mut();
            let set = st.users.entry(user.clone()).or_default();
            let first = set.is_empty();
            set.insert(core);
            if first {
                st.user_since.insert(user.clone(), dm_index::now_ms());
            }
            first
        };
        if first {
            self.user_changed(user.clone());
            let bus = self.clone();
            tokio::task::spawn_local(async move {
                if let Err(e) = bus
                    .redis()
                    .subscribe(&keys::user_channel(&user), ChannelKind::User)
                    .await
                {
                    tracing::warn!(%user, error = %e, "SUBSCRIBE failed");
                }
            });
        }
    }

    pub(super) fn unsubscribe(self: &Rc<Self>, channel: Channel, core: CoreId) {
        let mut st = self.state.borrow_mut();
        let gone = match &channel {
            Channel::Room(room) => match st.rooms.get_mut(room) {
                Some(t) => {
                    t.cores.remove(core);
                    let empty = t.cores.is_empty();
                    if empty {
                        st.rooms.remove(room);
                    }
                    empty
                }
                None => false,
            },
            Channel::User(user) => match st.users.get_mut(user) {
                Some(set) => {
                    set.remove(core);
                    let empty = set.is_empty();
                    if empty {
                        st.users.remove(user);
                        st.dm_last.retain(|(_, u), _| u != user);
                        st.user_since.remove(user);
                        st.dm_held.retain(|(_, u), _| u != user);
                    }
                    empty
                }
                None => false,
            },
        };
        drop(st);
        if let (true, Channel::User(user)) = (gone, &channel) {
            self.user_changed(user.clone());
        }
        if gone {
            let bus = self.clone();
            tokio::task::spawn_local(async move {
                let r = match &channel {
                    Channel::Room(room) => {
                        bus.redis()
                            .unsubscribe(&keys::room_channel(room), ChannelKind::Room)
                            .await
                    }
                    Channel::User(user) => {
                        bus.redis()
                            .unsubscribe(&keys::user_channel(user), ChannelKind::User)
                            .await
                    }
                };
                if let Err(e) = r {
                    tracing::warn!(?channel, error = %e, "UNSUBSCRIBE failed");
                }
            });
        }
    }
}
