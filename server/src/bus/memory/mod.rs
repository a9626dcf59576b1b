//! The standalone bus: rooms ordered in memory, each by the core that owns it.
//!
//! Every room (and every user's direct-message channel) belongs to one core, chosen by a hash of
//! its name ([`crate::fanout::owner_of`]). The owner is the only code that touches the room's
//! state, so there is no lock anywhere: it assigns the next seq, remembers the recent messages,
//! answers `cid` retries with the first answer, and sends each new message once to every core
//! that has members. This is the same job Redis does for a cluster (seq + recent cache + publish
//! in one step); keeping the shapes alike keeps the core code the same in both modes.

mod presence;

pub use presence::COALESCE_ABOVE;

use super::dedupe::DedupeWindow;
use super::owner::{reply_msg, RoomOwner};
use crate::fanout::{user_owner, Outbox};
use crate::messages::{Channel, CoreId, CoreMsg, FetchKind, FetchRequest, Name, PublishRequest};
use crate::messages::{Reply, ReplyTo};
use ahash::AHashMap;
use bytes::Bytes;
use chat_wire::frame::payload_of;
use chat_wire::protocol::{reply, Msg};
use std::collections::VecDeque;
use std::rc::Rc;

/// A set of cores (at most 128 per process).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoreSet(u128);

impl CoreSet {
    pub const MAX_CORES: usize = 128;

    pub fn insert(&mut self, core: CoreId) {
        self.0 |= 1 << core;
    }
    pub fn remove(&mut self, core: CoreId) {
        self.0 &= !(1 << core);
    }
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = CoreId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i)
        })
    }
}

/// Settings of the in-memory rooms.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Recent messages kept per room, for history and resume.
    pub history_len: usize,
    /// How long a `(from, cid)` pair is remembered, ms.
    pub dedupe_window_ms: u64,
    /// Most `(from, cid)` pairs remembered per core; past it the oldest are forgotten early.
    pub dedupe_capacity: usize,
    /// Bytes the recent messages of this core's rooms may take, all rooms together
    /// (`--history-memory` divided among the cores); past it the oldest messages go first.
    pub history_memory: usize,
}

/// What one remembered message costs besides its frame: its `(seq, Bytes)` slot in the room,
/// its entry in the shard's age queue, and the frame allocation's header (64-bit, measured
/// order of magnitude; the budget is a bound on memory, so this errs high).
const PER_MESSAGE_OVERHEAD: usize = 80;

fn cost(frame: &Bytes) -> usize {
    frame.len() + PER_MESSAGE_OVERHEAD
}

#[derive(Default)]
struct RoomState {
    seq: u64,
    /// `(seq, frame)` of the newest `history_len` messages, ascending.
    recent: VecDeque<(u64, Bytes)>,
    subscribers: CoreSet,
}

struct Remembered {
    room: Name,
    seq: u64,
    id: Name,
}

/// The rooms and user channels one core owns.
pub struct RoomShard {
    /// Cores in the process (to find user channels' owners).
    cores: usize,
    cfg: MemoryConfig,
    rooms: AHashMap<Name, RoomState>,
    users: AHashMap<Name, CoreSet>,
    /// `(room, from, cid)` -> first answer, for the dedupe window.
    dedupe: DedupeWindow<Remembered>,
    /// Every remembered message in publish order, oldest first, so that the budget evicts the
    /// oldest across all rooms. Entries whose message already left its room (the per-room
    /// `history_len` cap) are stale: skipped when met, and swept out when they outnumber the
    /// live ones.
    age: VecDeque<(Name, u64)>,
    /// Bytes and count of the messages the rooms hold (by [`cost`]).
    history_bytes: usize,
    history_msgs: usize,
    /// Messages evicted because of the memory budget.
    history_evicted: u64,
    id_prefix: String,
    next_id: u64,
    /// Where answers and deliveries go (the core's outbox, flushed after each turn).
    out: Rc<Outbox>,
    /// Presence, typing and read pointers of the rooms (v1.1, `presence.rs`).
    social: presence::Social,
}

impl RoomShard {
    pub fn new(
        core: CoreId,
        cores: usize,
        node_id: u64,
        cfg: MemoryConfig,
        out: Rc<Outbox>,
    ) -> Self {
        RoomShard {
            cores,
            out,
            rooms: AHashMap::new(),
            users: AHashMap::new(),
            dedupe: DedupeWindow::new(cfg.dedupe_window_ms, cfg.dedupe_capacity),
            age: VecDeque::new(),
            history_bytes: 0,
            history_msgs: 0,
            history_evicted: 0,
            id_prefix: format!("{node_id:016x}-{core:x}-"),
            next_id: 0,
            cfg,
            social: presence::Social::default(),
        }
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Pairs in the dedupe window, and pairs forgotten early because it was full.
    pub fn dedupe_stats(&self) -> (usize, u64) {
        (self.dedupe.pairs(), self.dedupe.evicted_early())
    }

    /// Bytes the rooms' recent messages take, and how many were evicted for the budget.
    pub fn history_stats(&self) -> (usize, u64) {
        (self.history_bytes, self.history_evicted)
    }

    fn room(&mut self, name: &Name) -> &mut RoomState {
        self.rooms.entry(name.clone()).or_default()
    }

    /// Forgets `room` if it holds nothing: no subscriber and no message ever. A room that had
    /// messages keeps its state (its seq must continue: standalone, nothing else remembers it).
    fn free(&mut self, room: &Name) {
        if self
            .rooms
            .get(room)
            .is_some_and(|s| s.seq == 0 && s.subscribers.is_empty())
        {
            self.rooms.remove(room);
            shrink_if_sparse(&mut self.rooms);
        }
    }

    fn publish_one(&mut self, req: PublishRequest) {
        let out = self.out.clone();
        let key: Rc<str> = format!("{}\u{0}{}\u{0}{}", req.room, req.from, req.cid).into();
        if let Some(first) = self.dedupe.lookup(req.ts, &key) {
            // A retry: the same answer as the first time, and no second delivery.
            let ack = reply::ack(&req.cid, &first.room, first.seq, &first.id);
            out.push(
                req.reply.core,
                CoreMsg::Reply {
                    to: req.reply,
                    reply: Reply::Frames(vec![ack]),
                },
            );
            return;
        }
        let id: Name = format!("{}{:x}", self.id_prefix, self.next_id).into();
        self.next_id += 1;
        let history_len = self.cfg.history_len;
        let cores = self.cores;
        let state = self.rooms.entry(req.room.clone()).or_default();
        state.seq += 1;
        let seq = state.seq;
        let frame = Msg {
            room: &req.room,
            seq,
            id: &id,
            from: &req.from,
            ts: req.ts,
            body: &req.body,
            cid: &req.cid,
        }
        .frame();
        if history_len > 0 {
            if state.recent.len() == history_len {
                let (_, old) = state.recent.pop_front().expect("full");
                self.history_bytes -= cost(&old);
                self.history_msgs -= 1;
            }
            state.recent.push_back((seq, frame.clone()));
            self.history_bytes += cost(&frame);
            self.history_msgs += 1;
            self.age.push_back((req.room.clone(), seq));
        }
        match &req.dm {
            None => {
                for core in state.subscribers.iter() {
                    let channel = Channel::Room(req.room.clone());
                    out.push(
                        core,
                        CoreMsg::Deliver {
                            channel,
                            room: req.room.clone(),
                            seq,
                            frame: frame.clone(),
                        },
                    );
                }
            }
            Some((a, b)) => {
                for user in [a, b] {
                    let msg = CoreMsg::ForwardToUser {
                        user: user.clone(),
                        room: req.room.clone(),
                        seq,
                        frame: frame.clone(),
                    };
                    out.push(user_owner(user, cores), msg);
                }
            }
        }
        self.keep_within_budget();
        let ack = reply::ack(&req.cid, &req.room, seq, &id);
        out.push(
            req.reply.core,
            CoreMsg::Reply {
                to: req.reply,
                reply: Reply::Frames(vec![ack]),
            },
        );
        self.dedupe.insert(
            req.ts,
            key,
            Remembered {
                room: req.room,
                seq,
                id,
            },
        );
    }
}

/// The standalone owner: everything happens here, on the room's core, at once.
impl RoomOwner for RoomShard {
    fn publish(&mut self, req: PublishRequest) {
        self.publish_one(req);
    }

    fn join(&mut self, room: Name, user: Name, subscribe: bool, reply: ReplyTo) {
        // A room nobody subscribes to and nobody wrote to is not kept (see `free`).
        let seq = match (subscribe, self.rooms.get(&room)) {
            (false, None) => 0,
            _ => {
                let state = self.room(&room);
                if subscribe {
                    state.subscribers.insert(reply.core);
                }
                state.seq
            }
        };
        let read = self.social.read_pointer(&room, &user);
        self.out
            .push(reply.core, reply_msg(reply, Reply::joined(room, seq, read)));
    }

    fn fetch(&mut self, req: FetchRequest) {
        let FetchRequest {
            room,
            user,
            kind,
            subscribe,
            reply,
            ..
        } = req;
        let read = self.social.read_pointer(&room, &user);
        // Everything is in memory: the frames are shared, so the whole reply goes at once.
        let answer = match (subscribe, self.rooms.get(&room)) {
            (false, None) => fetch(&room, &RoomState::default(), kind, read),
            _ => {
                let state = self.room(&room);
                if subscribe {
                    state.subscribers.insert(reply.core);
                }
                fetch(&room, state, kind, read)
            }
        };
        self.out.push(reply.core, reply_msg(reply, answer));
    }

    fn subscribe(&mut self, channel: Channel, core: CoreId) {
        match channel {
            Channel::Room(room) => self.room(&room).subscribers.insert(core),
            Channel::User(user) => self.users.entry(user).or_default().insert(core),
        }
    }

    fn unsubscribe(&mut self, channel: Channel, core: CoreId) {
        match channel {
            Channel::Room(room) => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    state.subscribers.remove(core);
                }
                self.free(&room);
            }
            Channel::User(user) => {
                if let Some(set) = self.users.get_mut(&user) {
                    set.remove(core);
                    if set.is_empty() {
                        self.users.remove(&user);
                    }
                }
            }
        }
    }

    fn forward_to_user(&mut self, user: Name, room: Name, seq: u64, frame: Bytes) {
        if let Some(set) = self.users.get(&user) {
            for core in set.iter() {
                let channel = Channel::User(user.clone());
                let deliver = CoreMsg::Deliver {
                    channel,
                    room: room.clone(),
                    seq,
                    frame: frame.clone(),
                };
                self.out.push(core, deliver);
            }
        }
    }

    fn presence_change(&mut self, room: Name, user: Name, came: bool) {
        self.presence_changed(room, user, came);
    }

    fn presence(&mut self, room: Name, reply: ReplyTo) {
        self.answer_presence(room, reply);
    }

    fn dm_presence(&mut self, room: Name, asker: Name, other: Name, reply: ReplyTo) {
        self.answer_dm_presence(room, asker, other, reply);
    }

    fn typing(&mut self, room: Name, user: Name) {
        self.typed(room, user, crate::messages::now_ms());
    }

    fn read(&mut self, room: Name, user: Name, seq: u64, reply: ReplyTo) {
        self.advance_read(room, user, seq, reply);
    }

    fn to_user(&mut self, user: Name, frame: Bytes, except: Option<ReplyTo>) {
        self.relay_to_user(user, frame, except);
    }
}

impl RoomShard {
    /// Evicts the oldest messages, whatever their room, until the rooms' recent messages fit
    /// `history_memory`. A room keeps its seq; `resume` then reports `complete: false` for a
    /// position older than what the room still holds, as after the `history_len` cap.
    fn keep_within_budget(&mut self) {
        while self.history_bytes > self.cfg.history_memory {
            let Some((room, seq)) = self.age.pop_front() else {
                break;
            };
            let Some(state) = self.rooms.get_mut(&room) else {
                continue;
            };
            // The room's oldest message, unless this entry is stale (already capped away).
            if state.recent.front().is_some_and(|(front, _)| *front == seq) {
                let (_, frame) = state.recent.pop_front().expect("front");
                self.history_bytes -= cost(&frame);
                self.history_msgs -= 1;
                self.history_evicted += 1;
                if state.recent.len() * 4 < state.recent.capacity() && state.recent.capacity() > 16
                {
                    state.recent.shrink_to_fit();
                }
            }
        }
        // Stale entries (messages the per-room cap removed) are never met by the loop above
        // while the budget is not reached: sweep them once they outnumber the live ones.
        if self.age.len() > 2 * self.history_msgs + 1024 {
            let rooms = &self.rooms;
            self.age.retain(|(room, seq)| {
                rooms
                    .get(room)
                    .and_then(|s| s.recent.front())
                    .is_some_and(|(front, _)| seq >= front)
            });
        }
    }
}

/// Gives memory back once a map is mostly empty (a hash map never shrinks by itself: a
/// connection that touched a million rooms would leave a million-slot table behind).
pub fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut AHashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        let keep = map.len() * 2;
        map.shrink_to(keep);
    }
}

fn fetch(room: &Name, state: &RoomState, kind: FetchKind, read: u64) -> Reply {
    match kind {
        FetchKind::History { before, limit } => {
            let before = before.unwrap_or(u64::MAX);
            // `recent` is ascending and dense: find the end, then step back `limit` messages.
            let end = state.recent.partition_point(|(seq, _)| *seq < before);
            let start = end.saturating_sub(limit as usize);
            let payloads: Vec<Bytes> = state
                .recent
                .range(start..end)
                .map(|(_, f)| payload_of(f))
                .collect();
            Reply::Frames(vec![reply::history(room, payloads.iter().map(|p| &p[..]))])
        }
        FetchKind::Resume { after } => {
            let start = state.recent.partition_point(|(seq, _)| *seq <= after);
            let messages: Vec<Bytes> = state
                .recent
                .range(start..)
                .map(|(_, f)| f.clone())
                .collect();
            // Complete when nothing after `after` is missing from what we send.
            let first_sent = messages.first().map(|_| state.recent[start].0);
            let complete = match first_sent {
                Some(first) => first == after + 1,
                None => after >= state.seq,
            };
            Reply::resumed(room.clone(), state.seq, read, messages, complete)
        }
    }
}

#[cfg(test)]
mod tests;
