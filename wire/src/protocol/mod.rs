//! The JSON messages of `shared/PROTOCOL.md`.
//!
//! Client requests are decoded with `simd-json` into a reused tape, so a request costs no
//! allocation beyond the strings the server keeps; every field is checked here (types, lengths,
//! names) so the server only ever sees well-formed requests. Server messages are written by hand
//! straight into frame buffers (see [`crate::frame::encode_text_with`]): a `msg` is encoded once,
//! and the same bytes go to every recipient, into history and into Kafka.
//!
//! This file holds the limits and the errors every part uses; `decode.rs` reads requests,
//! `names.rs` says which room names and user ids are valid (and names DM rooms), `json.rs`
//! writes JSON strings and numbers, `msg.rs` the `msg` itself, `msg_view.rs` reading it back
//! ([`MsgView`], on [`scan`], the top-level object scanner) and `reply.rs` ([`reply`]) every
//! other server message. Everything is re-exported here, so the paths are
//! `chat_wire::protocol::*`.

mod decode;
mod json;
mod msg;
mod msg_view;
mod names;
pub mod reply;
pub mod scan;
#[cfg(test)]
mod tests;

pub use decode::{ClientOp, Decoder};
pub use json::put_json_str;
pub use msg::Msg;
pub use msg_view::{Field, MsgError, MsgView};
pub use names::{dm_members, dm_room, validate_room, validate_user};

use std::fmt;

/// Default limit of a message `body`, in bytes.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 128;
/// Longest user id, in characters.
pub const MAX_USER_CHARS: usize = 64;
/// Longest client message id (`cid`), in bytes. PROTOCOL.md leaves it open; 128 is generous for
/// UUIDs and counters and keeps the dedupe table small.
pub const MAX_CID_BYTES: usize = 128;
/// `history` page size when `limit` is absent, and its upper bound.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
pub const MAX_HISTORY_LIMIT: u32 = 100;
/// Prefix of direct-message rooms.
pub const DM_PREFIX: &str = "dm:";

/// The error codes of PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    NotJoined,
    Forbidden,
    TooLarge,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// A request that cannot be served: the `error` to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
    /// The request's `cid`, when it had a string one.
    pub cid: Option<String>,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
            cid: None,
        }
    }

    pub fn with_cid(mut self, cid: Option<&str>) -> Self {
        self.cid = cid.map(str::to_owned);
        self
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for RequestError {}
