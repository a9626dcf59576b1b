//! One core: its listener, its connections, the local members of each room, and the rooms it
//! owns. Nothing here is shared with another thread; other cores are reached only through
//! [`crate::fanout`].
//!
//! Two kinds of state live side by side:
//! * as a **host of connections**: which local connections are members of which room, each
//!   member's position in the room's stream, and each connection's queue of replies;
//! * as an **owner** of some rooms ([`RoomShard`]): seq, recent messages, `cid` retries and which
//!   cores subscribe.
//!
//! Replies leave in request order: every request takes a ticket in its connection's
//! [`ReplyQueue`], and a reply that arrives early waits for those before it. A member that joins
//! or resumes buffers the room's live messages until its `joined`/`resumed` reply has gone out,
//! then sends only those after the seq that reply named: no gap, no duplicate, and never a
//! message before the reply that introduces it.

use crate::bus::memory::{MemoryConfig, RoomShard};
use crate::bus::owner::RoomOwner;
use crate::fanout::Outbox;
use crate::members::{LocalRoom, Member, MemberState};
use crate::messages::{Channel, ConnId, CoreId, CoreMsg, Name, Reply, ReplyTo};
use crate::metrics::{inc, CoreCounters};
use crate::node::Node;
use crate::outbound::ConnIo;
use crate::rate_limit::TokenBucket;
use crate::replies::ReplyQueue;
use ahash::AHashMap;
use bytes::Bytes;
use chat_wire::protocol::{reply, Decoder, RequestError};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

pub type CoreRef = Rc<RefCell<Core>>;

/// A local connection of this core.
pub struct Conn {
    pub user: Name,
    pub io: Rc<ConnIo>,
    /// Rooms joined (or being joined), with the member's key in the room.
    pub rooms: AHashMap<Name, usize>,
    /// Direct-message rooms this connection resumed: their position, to drop what resume sent.
    pub dm_positions: AHashMap<Name, Member>,
    pub replies: ReplyQueue,
    pub rate: TokenBucket,
    /// The `join`/`history`/`resume` rate limit (`--room-rate-limit`).
    pub room_rate: TokenBucket,
}

pub struct Core {
    pub id: CoreId,
    pub node: Arc<Node>,
    pub out: Rc<Outbox>,
    pub shard: RoomShard,
    pub conns: AHashMap<ConnId, Conn>,
    pub rooms: AHashMap<Name, LocalRoom>,
    /// Local connections of each user (for direct messages).
    pub users: AHashMap<Name, Vec<ConnId>>,
    pub decoder: Decoder,
    next_conn: ConnId,
}

impl Core {
    pub fn new(id: CoreId, node: Arc<Node>, out: Rc<Outbox>) -> Self {
        let cfg = &node.config;
        let mem = MemoryConfig {
            history_len: cfg.history_len,
            dedupe_window_ms: cfg.dedupe_window * 1000,
            dedupe_capacity: cfg.dedupe_capacity,
            history_memory: (cfg.history_memory_mb << 20) / node.threads.max(1),
        };
        Core {
            id,
            shard: RoomShard::new(id, node.threads, node.node_id, mem, out.clone()),
            decoder: Decoder::new(cfg.max_body),
            node,
            out,
            conns: AHashMap::new(),
            rooms: AHashMap::new(),
            users: AHashMap::new(),
            next_conn: 1,
        }
    }

    pub fn counters(&self) -> &CoreCounters {
        &self.node.metrics.cores[self.id]
    }

    /// Where requests about `room` go: its owner core, or the cluster bus.
    pub fn owner(&self, room: &str) -> CoreId {
        self.node.route(room)
    }

    /// Registers a new WebSocket connection of `user`.
    pub fn add_conn(&mut self, user: &str, io: Rc<ConnIo>) -> ConnId {
        let id = self.add_internal_conn(user, io);
        let user = self.conns[&id].user.clone();
        let route = self.node.route_user(&user);
        let local = self.users.entry(user.clone()).or_default();
        if local.is_empty() {
            let msg = CoreMsg::Subscribe {
                channel: Channel::User(user),
                core: self.id,
            };
            self.out.push(route, msg);
        }
        local.push(id);
        id
    }

    /// Registers a connection of `user` that hears only the replies to its own requests, not
    /// the user's direct messages: a request of the server API (`api/mod.rs`).
    pub fn add_internal_conn(&mut self, user: &str, io: Rc<ConnIo>) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        let user: Name = user.into();
        let (burst, room_burst) = (
            self.node.config.rate_burst,
            self.node.config.room_rate_burst,
        );
        self.conns.insert(
            id,
            Conn {
                user,
                io,
                rooms: AHashMap::new(),
                dm_positions: AHashMap::new(),
                replies: ReplyQueue::default(),
                rate: TokenBucket::new(burst),
                room_rate: TokenBucket::new(room_burst),
            },
        );
        inc(&self.counters().connections_total);
        self.counters().connections.fetch_add(1, Relaxed);
        id
    }

    /// Forgets a connection that has gone: leaves its rooms, and unsubscribes what no local
    /// connection needs any more.
    pub fn remove_conn(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        for (room, key) in conn.rooms {
            self.remove_member(&room, key);
        }
        if let Some(local) = self.users.get_mut(&conn.user) {
            local.retain(|c| *c != id);
            if local.is_empty() {
                self.users.remove(&conn.user);
                let msg = CoreMsg::Unsubscribe {
                    channel: Channel::User(conn.user.clone()),
                    core: self.id,
                };
                self.out.push(self.node.route_user(&conn.user), msg);
            }
        }
        self.counters().connections.fetch_sub(1, Relaxed);
    }

    /// Removes one member; unsubscribes the core from the room when it was the last.
    pub fn remove_member(&mut self, room: &Name, key: usize) {
        let Some(local) = self.rooms.get_mut(room) else {
            return;
        };
        if local.members.contains(key) {
            let gone = local.members.remove(key);
            let msg = CoreMsg::PresenceChange {
                room: room.clone(),
                user: gone.user,
                came: false,
            };
            self.out.push(self.node.route(room), msg);
        }
        if local.members.is_empty() {
            self.rooms.remove(room);
            crate::bus::memory::shrink_if_sparse(&mut self.rooms);
            let msg = CoreMsg::Unsubscribe {
                channel: Channel::Room(room.clone()),
                core: self.id,
            };
            self.out.push(self.owner(room), msg);
        }
    }

    /// Adds `conn` as a waiting member of `room`. Returns whether this core must subscribe.
    /// The room's owner hears of the member first (presence), then of the request.
    pub fn add_member(&mut self, room: &Name, conn: ConnId, ticket: u64) -> bool {
        let io = self.conns[&conn].io.clone();
        let user = self.conns[&conn].user.clone();
        let came = CoreMsg::PresenceChange {
            room: room.clone(),
            user: user.clone(),
            came: true,
        };
        self.out.push(self.node.route(room), came);
        let local = self.rooms.entry(room.clone()).or_default();
        let subscribe = local.members.is_empty();
        let key = local.members.insert(Member {
            io,
            user,
            ticket,
            state: MemberState::Waiting(Vec::new()),
        });
        self.conns
            .get_mut(&conn)
            .unwrap()
            .rooms
            .insert(room.clone(), key);
        subscribe
    }

    /// Takes the next reply ticket of `conn`: where the owner's answer must go. With `read`,
    /// the time from then to the reply going out is recorded in `chat_ack_latency_seconds`.
    pub fn ticket(&mut self, conn: ConnId, read: Option<Instant>) -> ReplyTo {
        let c = self.conns.get_mut(&conn).expect("live connection");
        let ticket = c.replies.reserve_timed(read);
        c.io.set_in_flight(c.replies.in_flight());
        ReplyTo {
            core: self.id,
            conn,
            ticket,
        }
    }

    /// Sends a request to the core that owns `room`.
    pub fn ask_owner(&self, room: &str, msg: CoreMsg) {
        self.out.push(self.owner(room), msg);
    }

    /// Answers `conn` with an error, in request order.
    pub fn reply_error(&mut self, conn: ConnId, e: RequestError) {
        inc(&self.counters().errors);
        self.reply_now(conn, Reply::Frames(vec![reply::error(&e)]));
    }

    /// A reply known at once: goes out now, or after the replies still pending before it.
    pub fn reply_now(&mut self, conn: ConnId, ready: Reply) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let ticket = c.replies.reserve();
        c.replies.fill(ticket, ready);
        self.release_replies(conn);
    }

    /// Handles one message from another core (or from this one).
    pub fn handle_mail(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Deliver {
                channel,
                room,
                seq,
                frame,
            } => self.deliver(channel, &room, seq, &frame),
            CoreMsg::Reply { to, reply } => self.on_reply(to, reply),
            CoreMsg::Event {
                channel,
                frame,
                except_user,
                except_conn,
            } => self.deliver_event(channel, &frame, except_user, except_conn),
            other => {
                let before = self.shard.rooms();
                let published = matches!(other, CoreMsg::Publish(_));
                if let Err(unexpected) = self.shard.handle(other) {
                    tracing::error!(?unexpected, "misrouted core message");
                }
                if published {
                    let c = self.counters();
                    inc(&c.messages_published);
                    let (pairs, evicted) = self.shard.dedupe_stats();
                    c.dedupe_pairs.store(pairs as u64, Relaxed);
                    c.dedupe_evicted_early.store(evicted, Relaxed);
                    let (bytes, evicted) = self.shard.history_stats();
                    c.history_bytes.store(bytes as u64, Relaxed);
                    c.history_evicted.store(evicted, Relaxed);
                }
                if self.shard.rooms() != before {
                    self.counters()
                        .rooms
                        .store(self.shard.rooms() as u64, Relaxed);
                }
            }
        }
    }

    fn deliver(&mut self, channel: Channel, room: &Name, seq: u64, frame: &Bytes) {
        let mut delivered = 0;
        match channel {
            Channel::Room(_) => {
                if let Some(local) = self.rooms.get_mut(room) {
                    for (_, m) in local.members.iter_mut() {
                        delivered += m.offer(seq, frame) as u64;
                    }
                }
            }
            Channel::User(user) => {
                if let Some(local) = self.users.get(&user) {
                    for id in local {
                        let Some(conn) = self.conns.get_mut(id) else {
                            continue;
                        };
                        match conn.dm_positions.get_mut(room) {
                            Some(m) => delivered += m.offer(seq, frame) as u64,
                            None => {
                                conn.io.send(frame.clone());
                                delivered += 1;
                            }
                        }
                    }
                }
            }
        }
        crate::metrics::add(&self.counters().messages_delivered, delivered);
    }

    /// An event outside the seq stream to the live local members of a room (but the
    /// `except_user`'s) or to a user's connections (but `except_conn`).
    fn deliver_event(
        &mut self,
        channel: Channel,
        frame: &Bytes,
        except_user: Option<Name>,
        except_conn: Option<ConnId>,
    ) {
        let mut sent = 0;
        match channel {
            Channel::Room(room) => {
                if let Some(local) = self.rooms.get(&room) {
                    for (_, m) in local.members.iter() {
                        if except_user.as_ref() != Some(&m.user) {
                            sent += m.offer_event(frame) as u64;
                        }
                    }
                }
            }
            Channel::User(user) => {
                for id in self.users.get(&user).into_iter().flatten() {
                    if Some(*id) != except_conn {
                        if let Some(conn) = self.conns.get(id) {
                            conn.io.send(frame.clone());
                            sent += 1;
                        }
                    }
                }
            }
        }
        crate::metrics::add(&self.counters().events_delivered, sent);
    }

    fn on_reply(&mut self, to: ReplyTo, reply: Reply) {
        let ready = match reply {
            Reply::ResumePart(frames) => {
                let Some(conn) = self.conns.get_mut(&to.conn) else {
                    return;
                };
                let held: usize = frames.iter().map(Bytes::len).sum();
                match conn.replies.part(to.ticket, frames) {
                    Some(now) => now.into_iter().for_each(|f| conn.io.send_replay(f)),
                    None => conn.io.hold_replay(held as isize),
                }
                return;
            }
            ready => ready,
        };
        let Some(conn) = self.conns.get_mut(&to.conn) else {
            return;
        };
        conn.replies.fill(to.ticket, ready);
        self.release_replies(to.conn);
    }

    /// Sends every reply of `conn` whose turn has come.
    fn release_replies(&mut self, conn_id: ConnId) {
        let max_inflight = self.node.config.max_inflight;
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let mut delivered = 0;
        let mut dropped = Vec::new();
        let counters = &self.node.metrics.cores[self.id];
        while let Some((ticket, early, ready, read)) = conn.replies.pop_ready() {
            if let Some(read) = read {
                counters.ack_latency.observe(read.elapsed());
            }
            send_held(&conn.io, early);
            match ready {
                // Replies are bounded by the request (a `history` page, a `resume` backlog):
                // written at the client's pace, outside --outbound-limit (ConnIo::send_replay).
                Reply::Frames(frames) | Reply::ResumePart(frames) => {
                    frames.into_iter().for_each(|f| conn.io.send_replay(f))
                }
                Reply::Start { room, seq, frames } => {
                    frames.into_iter().for_each(|f| conn.io.send_replay(f));
                    // Go live: the member this request created (a room) or the DM position.
                    if let Some(m) = conn
                        .dm_positions
                        .get_mut(&room)
                        .filter(|m| m.ticket == ticket)
                    {
                        delivered += m.go_live(seq);
                    } else if let Some(&key) = conn.rooms.get(&room) {
                        if let Some(m) = self
                            .rooms
                            .get_mut(&room)
                            .and_then(|r| r.members.get_mut(key))
                        {
                            if m.ticket == ticket {
                                delivered += m.go_live(seq);
                            }
                        }
                    }
                }
                Reply::Abort { room, frames } => {
                    frames.into_iter().for_each(|f| conn.io.send(f));
                    // The join or resume failed: forget the member it created.
                    if conn
                        .dm_positions
                        .get(&room)
                        .is_some_and(|m| m.ticket == ticket)
                    {
                        conn.dm_positions.remove(&room);
                    }
                    let created = conn.rooms.get(&room).is_some_and(|&key| {
                        self.rooms
                            .get(&room)
                            .and_then(|r| r.members.get(key))
                            .is_some_and(|m| m.ticket == ticket)
                    });
                    if created {
                        let key = conn.rooms.remove(&room).expect("member");
                        dropped.push((room, key));
                    }
                }
            }
        }
        for (room, key) in dropped {
            self.remove_member(&room, key);
        }
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        // The next reply may have sent its first frames early (a resume's pages): out now.
        if let Some(early) = conn.replies.take_front_early() {
            send_held(&conn.io, early);
        }
        conn.io.set_in_flight(conn.replies.in_flight());
        if conn.replies.in_flight() < max_inflight {
            conn.io.wake_reader();
        }
        crate::metrics::add(&self.counters().messages_delivered, delivered);
    }

    /// Closes every connection (drain, shutdown).
    pub fn close_all(&mut self, code: u16, reason: &str) {
        for conn in self.conns.values() {
            conn.io.close(code, reason);
        }
    }
}

/// Sends frames the reply queue held back (counted in the connection's replay gauge meanwhile).
fn send_held(io: &ConnIo, frames: Vec<Bytes>) {
    if frames.is_empty() {
        return;
    }
    let held: usize = frames.iter().map(Bytes::len).sum();
    io.hold_replay(-(held as isize));
    frames.into_iter().for_each(|f| io.send_replay(f));
}
