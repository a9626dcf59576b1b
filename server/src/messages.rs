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
    Fetch {
        room: Name,
        kind: FetchKind,
        subscribe: bool,
        reply: ReplyTo,
        gauge: Arc<ReplayGauge>,
    },
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

/// Answers from an owner core to a connection's request.
#[derive(Debug)]
pub enum Reply {
    /// Frames to send as the reply (an `ack`, an `error`, a `history`).
    Frames(Vec<Bytes>),
    /// `joined`: the room's latest seq when the request was served.
    Joined { room: Name, seq: u64 },
    /// A `join` or `resume` that could not be served: the `error` frame to send.
    Failed { room: Name, error: Bytes },
    /// The first messages of a `resume` (a page read from PostgreSQL), sent as soon as the
    /// replies before it are out; the rest and the `resumed` frame follow as `Resumed`.
    ResumePart(Vec<Bytes>),
    /// `resume`: every stored message after the requested seq, the latest seq, and whether
    /// nothing in between was missing.
    Resumed {
        room: Name,
        seq: u64,
        messages: Vec<Bytes>,
        complete: bool,
    },
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
