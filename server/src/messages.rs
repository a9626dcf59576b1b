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

    // ---- to the core of a connection ----
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
    /// `joined`: the room's latest seq when the request was served.
    pub fn joined(room: Name, seq: u64) -> Reply {
        let frames = vec![chat_wire::protocol::reply::joined(&room, seq)];
        Reply::Start { room, seq, frames }
    }

    /// `resume`'s answer: `messages` (every held message after the requested seq), then
    /// `resumed` with the latest seq and whether nothing in between was missing.
    pub fn resumed(room: Name, seq: u64, mut messages: Vec<Bytes>, complete: bool) -> Reply {
        messages.push(chat_wire::protocol::reply::resumed(&room, seq, complete));
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

/// What a `history` or `resume` asks of the owner.
#[derive(Debug, Clone, Copy)]
pub enum FetchKind {
    History { before: Option<u64>, limit: u32 },
    Resume { after: u64 },
}
