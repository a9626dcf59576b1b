//! The standalone bus: rooms ordered in memory, each by the core that owns it.
//!
//! Every room (and every user's direct-message channel) belongs to one core, chosen by a hash of
//! its name ([`crate::fanout::owner_of`]). The owner is the only code that touches the room's
//! state, so there is no lock anywhere: it assigns the next seq, remembers the recent messages,
//! answers `cid` retries with the first answer, and sends each new message once to every core
//! that has members. This is the same job Redis does for a cluster (seq + recent cache + publish
//! in one step); keeping the shapes alike keeps the core code the same in both modes.

use super::dedupe::DedupeWindow;
use crate::fanout::{user_owner, Channel, CoreId, CoreMsg, Name, Outbox, Reply, ReplyTo};
use ahash::AHashMap;
use bytes::Bytes;
use chat_wire::frame::payload_of;
use chat_wire::protocol::{reply, Msg};
use std::collections::VecDeque;
use std::rc::Rc;

/// A message to order and store: everything but its seq and id.
#[derive(Debug)]
pub struct PublishRequest {
    pub room: Name,
    pub from: Name,
    pub cid: Box<str>,
    pub body: Box<str>,
    /// Server accept time, ms since the Unix epoch.
    pub ts: u64,
    /// For a direct message, its two users (their connections get it wherever they are).
    pub dm: Option<(Name, Name)>,
    pub reply: ReplyTo,
}

/// What a `history` or `resume` asks of the owner.
#[derive(Debug, Clone, Copy)]
pub enum FetchKind {
    History { before: Option<u64>, limit: u32 },
    Resume { after: u64 },
}

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
    id_prefix: String,
    next_id: u64,
}

impl RoomShard {
    pub fn new(core: CoreId, cores: usize, node_id: u64, cfg: MemoryConfig) -> Self {
        RoomShard {
            cores,
            rooms: AHashMap::new(),
            users: AHashMap::new(),
            dedupe: DedupeWindow::new(cfg.dedupe_window_ms, cfg.dedupe_capacity),
            id_prefix: format!("{node_id:016x}-{core:x}-"),
            next_id: 0,
            cfg,
        }
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Pairs in the dedupe window, and pairs forgotten early because it was full.
    pub fn dedupe_stats(&self) -> (usize, u64) {
        (self.dedupe.pairs(), self.dedupe.evicted_early())
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
        }
    }

    /// Handles one message meant for an owner; gives back any message that is not.
    pub fn handle(&mut self, msg: CoreMsg, out: &Outbox) -> Result<(), Box<CoreMsg>> {
        match msg {
            CoreMsg::Publish(req) => self.publish(req, out),
            CoreMsg::Join {
                room,
                subscribe,
                reply,
            } => {
                let core = reply.core;
                // A room nobody subscribes to and nobody wrote to is not kept (see `free`).
                let seq = match (subscribe, self.rooms.get(&room)) {
                    (false, None) => 0,
                    _ => {
                        let state = self.room(&room);
                        if subscribe {
                            state.subscribers.insert(core);
                        }
                        state.seq
                    }
                };
                out.push(
                    core,
                    CoreMsg::Reply {
                        to: reply,
                        reply: Reply::Joined { room, seq },
                    },
                );
            }
            CoreMsg::Fetch {
                room,
                kind,
                subscribe,
                reply,
            } => {
                let answer = match (subscribe, self.rooms.get(&room)) {
                    (false, None) => fetch(&room, &RoomState::default(), kind),
                    _ => {
                        let state = self.room(&room);
                        if subscribe {
                            state.subscribers.insert(reply.core);
                        }
                        fetch(&room, state, kind)
                    }
                };
                out.push(
                    reply.core,
                    CoreMsg::Reply {
                        to: reply,
                        reply: answer,
                    },
                );
            }
            CoreMsg::Subscribe { channel, core } => match channel {
                Channel::Room(room) => self.room(&room).subscribers.insert(core),
                Channel::User(user) => self.users.entry(user).or_default().insert(core),
            },
            CoreMsg::Unsubscribe { channel, core } => match channel {
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
            },
            CoreMsg::ForwardToUser {
                user,
                room,
                seq,
                frame,
            } => {
                if let Some(set) = self.users.get(&user) {
                    for core in set.iter() {
                        let channel = Channel::User(user.clone());
                        out.push(
                            core,
                            CoreMsg::Deliver {
                                channel,
                                room: room.clone(),
                                seq,
                                frame: frame.clone(),
                            },
                        );
                    }
                }
            }
            other => return Err(Box::new(other)),
        }
        Ok(())
    }

    fn publish(&mut self, req: PublishRequest, out: &Outbox) {
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
        let state = self.room(&req.room);
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
                state.recent.pop_front();
            }
            state.recent.push_back((seq, frame.clone()));
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

fn fetch(room: &Name, state: &RoomState, kind: FetchKind) -> Reply {
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
            Reply::Resumed {
                room: room.clone(),
                seq: state.seq,
                messages,
                complete,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::Mailbox;
    use std::sync::Arc;

    struct Harness {
        shard: RoomShard,
        out: Outbox,
        boxes: Arc<[Mailbox]>,
    }

    impl Harness {
        fn new(history_len: usize) -> Self {
            let boxes: Arc<[Mailbox]> = (0..1).map(|_| Mailbox::default()).collect();
            let cfg = MemoryConfig {
                history_len,
                dedupe_window_ms: 300_000,
                dedupe_capacity: 1000,
            };
            Harness {
                shard: RoomShard::new(0, 1, 7, cfg),
                out: Outbox::new(boxes.clone()),
                boxes,
            }
        }

        /// Handles `msg` and returns the replies it produced.
        fn call(&mut self, msg: CoreMsg) -> Vec<Reply> {
            self.shard.handle(msg, &self.out).unwrap();
            self.out.flush();
            let mut replies = Vec::new();
            while let Some(batch) = self.boxes[0].try_recv() {
                replies.extend(batch.into_iter().filter_map(|m| match m {
                    CoreMsg::Reply { reply, .. } => Some(reply),
                    _ => None,
                }));
            }
            replies
        }

        fn publish(&mut self, cid: &str, ts: u64) -> serde_json::Value {
            let req = PublishRequest {
                room: "r".into(),
                from: "u".into(),
                cid: cid.into(),
                body: "b".into(),
                ts,
                dm: None,
                reply: ReplyTo {
                    core: 0,
                    conn: 1,
                    ticket: 1,
                },
            };
            match self.call(CoreMsg::Publish(req)).pop() {
                Some(Reply::Frames(f)) => serde_json::from_slice(&payload_of(&f[0])).unwrap(),
                other => panic!("{other:?}"),
            }
        }

        fn resume(&mut self, after: u64) -> (u64, usize, bool) {
            let reply = ReplyTo {
                core: 0,
                conn: 1,
                ticket: 2,
            };
            let kind = FetchKind::Resume { after };
            match self
                .call(CoreMsg::Fetch {
                    room: "r".into(),
                    kind,
                    subscribe: false,
                    reply,
                })
                .pop()
            {
                Some(Reply::Resumed {
                    seq,
                    messages,
                    complete,
                    ..
                }) => (seq, messages.len(), complete),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn seq_is_dense_and_retries_are_deduplicated() {
        let mut h = Harness::new(10);
        let a = h.publish("a", 1);
        let b = h.publish("b", 2);
        let retry = h.publish("a", 3);
        assert_eq!((a["seq"].as_u64(), b["seq"].as_u64()), (Some(1), Some(2)));
        assert_eq!(retry["seq"], 1, "a retry gets the first seq");
        assert_eq!(retry["id"], a["id"], "and the first id");
        assert_ne!(a["id"], b["id"]);
    }

    #[test]
    fn dedupe_window_expires() {
        let mut h = Harness::new(10);
        assert_eq!(h.publish("a", 1)["seq"], 1);
        assert_eq!(
            h.publish("a", 1 + 300_001)["seq"],
            2,
            "past the window it is a new message"
        );
    }

    #[test]
    fn resume_reports_completeness_truthfully() {
        let mut h = Harness::new(3);
        for i in 0..5 {
            h.publish(&format!("c{i}"), i);
        }
        // `recent` now holds seq 3, 4, 5.
        assert_eq!(h.resume(5), (5, 0, true));
        assert_eq!(h.resume(4), (5, 1, true));
        assert_eq!(h.resume(2), (5, 3, true));
        assert_eq!(h.resume(1), (5, 3, false), "seq 2 was evicted");
        assert_eq!(
            h.resume(9),
            (5, 0, true),
            "nothing exists after a seq beyond the latest"
        );
    }

    #[test]
    fn rooms_that_hold_nothing_are_not_kept() {
        let mut h = Harness::new(3);
        let reply = |ticket| ReplyTo {
            core: 0,
            conn: 1,
            ticket,
        };
        for (i, room) in ["a", "b", "c"].into_iter().enumerate() {
            let kind = FetchKind::Resume { after: 0 };
            let answer = h.call(CoreMsg::Fetch {
                room: room.into(),
                kind,
                subscribe: false,
                reply: reply(i as u64),
            });
            assert!(matches!(answer.as_slice(), [Reply::Resumed { seq: 0, .. }]));
        }
        assert_eq!(h.shard.rooms(), 0, "reading never-used rooms keeps nothing");

        let join = |room: &str, subscribe| CoreMsg::Join {
            room: room.into(),
            subscribe,
            reply: reply(9),
        };
        h.call(join("a", true));
        assert_eq!(h.shard.rooms(), 1);
        let leave = |room: &str| CoreMsg::Unsubscribe {
            channel: Channel::Room(room.into()),
            core: 0,
        };
        h.call(leave("a"));
        assert_eq!(
            h.shard.rooms(),
            0,
            "a joined room nobody wrote to is freed when left"
        );

        h.call(join("r", true));
        h.publish("x", 1);
        h.call(leave("r"));
        assert_eq!(h.shard.rooms(), 1, "a room with messages keeps its seq");
        assert_eq!(h.publish("y", 2)["seq"], 2, "and its seq continues");
    }
}
