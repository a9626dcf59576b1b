//! The messages cores exchange: requests to a room's owner (a core's memory shard, or the
//! cluster bus thread), and what comes back to the core of a connection.
//!
//! Everything here is plain data that crosses threads through the mailboxes of
//! [`crate::fanout`]; nothing here knows how it travels or who handles it.

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// A core's index in the node, `0..threads`.
pub type CoreId = usize;
/// A connection id, unique within its core.
pub type ConnId = u64;
/// Room and user names are shared between cores without copying.
pub type Name = Arc<str>;

/// Where the answer to a request goes: a reply slot of one connection on one core.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTo {
    pub core: CoreId,
    pub conn: ConnId,
    pub ticket: u64,
}

/// How much of a connection's replay is queued but not yet written, read by the bus thread
/// between the pages of a replay from PostgreSQL (the connection's core writes it).
#[derive(Debug, Default)]
pub struct ReplayGauge {
    waiting: AtomicUsize,
    gone: AtomicBool,
}

impl ReplayGauge {
    pub fn set_waiting(&self, bytes: usize) {
        self.waiting.store(bytes, Relaxed);
    }
    pub fn set_gone(&self) {
        self.gone.store(true, Relaxed);
    }
    /// Replay bytes not yet written.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }
    /// The connection is closed: nobody reads the rest.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Relaxed)
    }
}

/// A subscription channel: a room's members, or a user's connections (for direct messages).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    Room(Name),
    User(Name),
}

/// Everything one core sends another.
#[derive(Debug)]
pub enum CoreMsg {
    // ---- to the core that owns a room or user channel ----
    /// Assign the next seq, store, fan out, and ack.
    Publish(PublishRequest),
    /// Reply with the room's latest seq; with `subscribe`, also start sending `Deliver`s of the
    /// room to the requesting core.
    Join {
        room: Name,
        /// Whose read pointer `joined` carries.
        user: Name,
        subscribe: bool,
        reply: ReplyTo,
    },
    /// History page or resume, served from the owner's recent messages (and, in cluster
    /// mode, PostgreSQL, read at the pace `gauge` shows the connection writing).
    Fetch(FetchRequest),
    Subscribe {
        channel: Channel,
        core: CoreId,
    },
    Unsubscribe {
        channel: Channel,
        core: CoreId,
    },
    /// A direct message for the cores where `user` is connected (from the room's owner to the
    /// user channel's owner).
    ForwardToUser {
        user: Name,
        room: Name,
        seq: u64,
        frame: Bytes,
    },

    /// v1.1 presence: one more (`came`) or one fewer connection of `user` is a member of
    /// `room` (sent by the connection's core when a member is made or goes).
    PresenceChange {
        room: Name,
        user: Name,
        came: bool,
    },
    /// v1.1: answer `presence` for an ordinary room.
    Presence {
        room: Name,
        reply: ReplyTo,
    },
    /// v1.1: `user` is typing in `room` (deduplicated by the owner, never stored).
    Typing {
        room: Name,
        user: Name,
    },
    /// v1.1: move `user`'s read pointer for `room` up to `seq`; answer with the pointer.
    Read {
        room: Name,
        user: Name,
        seq: u64,
        reply: ReplyTo,
    },

    // ---- to the core that owns a user channel ----
    /// A frame (not part of any room's seq stream) for every connection of `user`, but the
    /// one `except` names.
    ToUser {
        user: Name,
        frame: Bytes,
        except: Option<ReplyTo>,
    },
    /// v1.1 `presence` of a direct-message room: `asker` is connected; is `other`?
    DmPresence {
        room: Name,
        asker: Name,
        other: Name,
        reply: ReplyTo,
    },

    // ---- to the core of a connection ----
    /// An event outside the seq stream (`online`, `offline`, `typing`, `read`, a coalesced
    /// `presence`): for the live local members of a room but those of `except_user`, or for
    /// the connections of a user but `except_conn`.
    Event {
        channel: Channel,
        frame: Bytes,
        except_user: Option<Name>,
        except_conn: Option<ConnId>,
    },
    /// A message for every local member of `channel`.
    Deliver {
        channel: Channel,
        room: Name,
        seq: u64,
        frame: Bytes,
    },
    /// The answer to one request.
    Reply {
        to: ReplyTo,
        reply: Reply,
    },
    /// End of the drain: close every connection with 1001 and stop.
    Shutdown,
}

/// Answers from a room's owner to a connection's request: always finished frames, which the
/// connection's core sends in request order without looking inside.
#[derive(Debug)]
pub enum Reply {
    /// Frames to send as the reply (an `ack`, an `error`, a `history`).
    Frames(Vec<Bytes>),
    /// The reply to a `join` or `resume` (`joined`, or the messages then `resumed`): once
    /// sent, the member it created is live after `seq`.
    Start {
        room: Name,
        seq: u64,
        frames: Vec<Bytes>,
    },
    /// A `join` or `resume` that could not be served: its `error` frame; the member it
    /// created goes.
    Abort { room: Name, frames: Vec<Bytes> },
    /// The first messages of a `resume` (a page read from PostgreSQL), sent as soon as the
    /// replies before it are out; the rest and the `resumed` frame follow as `Start`.
    ResumePart(Vec<Bytes>),
}

impl Reply {
    /// `joined`: the room's latest seq when the request was served, and the user's read
    /// pointer.
    pub fn joined(room: Name, seq: u64, read: u64) -> Reply {
        let frames = vec![chat_wire::protocol::reply::joined(&room, seq, read)];
        Reply::Start { room, seq, frames }
    }

    /// `resume`'s answer: `messages` (every held message after the requested seq), then
    /// `resumed` with the latest seq, the user's read pointer and whether nothing in between
    /// was missing.
    pub fn resumed(
        room: Name,
        seq: u64,
        read: u64,
        mut messages: Vec<Bytes>,
        complete: bool,
    ) -> Reply {
        messages.push(chat_wire::protocol::reply::resumed(
            &room, seq, read, complete,
        ));
        Reply::Start {
            room,
            seq,
            frames: messages,
        }
    }

    /// A `join` or `resume` that failed with `error`.
    pub fn failed(room: Name, error: Bytes) -> Reply {
        Reply::Abort {
            room,
            frames: vec![error],
        }
    }
}

/// A `history` page or a `resume`, for the room's owner.
#[derive(Debug)]
pub struct FetchRequest {
    pub room: Name,
    /// Whose read pointer `resumed` carries.
    pub user: Name,
    pub kind: FetchKind,
    /// Also start delivering the room to `reply.core` (a `resume` that makes a member).
    pub subscribe: bool,
    pub reply: ReplyTo,
    /// How much of the connection's replay is still unwritten (an owner that reads page by
    /// page waits on it).
    pub gauge: Arc<ReplayGauge>,
}

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

/// Wall-clock milliseconds since the Unix epoch (a message's `ts`, `typing`'s once a second).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a `history` or `resume` asks of the owner.
#[derive(Debug, Clone, Copy)]
pub enum FetchKind {
    History { before: Option<u64>, limit: u32 },
    Resume { after: u64 },
}
