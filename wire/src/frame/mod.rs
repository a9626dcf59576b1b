//! RFC 6455 framing on `bytes`.
//!
//! Reading: [`parse_frame`] takes one complete frame off the front of the connection's read
//! buffer with `BytesMut::split_to`, so the payload is never copied, and unmasks it in place.
//! [`MessageAssembler`] turns frames into messages: it passes unfragmented messages through
//! untouched, joins fragments, answers which control frames arrived in between, and checks UTF-8
//! as fragments arrive so a bad byte fails fast (Autobahn group 6).
//!
//! Writing: [`encode_text_with`] lets the caller write a payload (JSON) straight into the frame
//! buffer and puts the header in front afterwards, so every outgoing message is encoded exactly
//! once; the resulting `Bytes` is cloned (a reference count) to every recipient.
//!
//! This file holds the vocabulary the others share (opcodes, close codes, [`FrameError`],
//! [`Role`], [`Frame`]); `parse.rs` reads frames, `mask.rs` (un)masks payloads, `encode.rs`
//! writes frames, `assemble.rs` turns frames into messages. Everything is re-exported here, so
//! the paths are `chat_wire::frame::*`.

mod assemble;
mod encode;
mod mask;
mod parse;
#[cfg(test)]
mod tests;

pub use assemble::{is_valid_close_code, parse_close_payload, Message, MessageAssembler};
pub use encode::{
    compressed_text_header, encode_close, encode_frame, encode_masked_frame, encode_text_with,
    payload_of, put_header, MAX_HEADER, RSV1,
};
pub use mask::apply_mask;
pub use parse::{parse_frame, parse_frame_ext};

use bytes::BytesMut;

/// Frame opcodes of RFC 6455 section 5.2. Any other value is a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Close status codes this crate produces (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why a connection must be closed. `code()` is the status to send in the close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: u16,
    pub reason: &'static str,
}

impl FrameError {
    const fn new(code: u16, reason: &'static str) -> Self {
        FrameError { code, reason }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (close {})", self.reason, self.code)
    }
}

impl std::error::Error for FrameError {}

/// Which end of the connection is parsing: a server requires masked frames, a client refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// One frame, its payload already unmasked.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: the message this frame starts is compressed (permessage-deflate only; see
    /// [`parse_frame_ext`]).
    pub rsv1: bool,
    pub opcode: OpCode,
    pub payload: BytesMut,
}
