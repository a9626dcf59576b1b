//! `chat-wire`: everything the chat contract (`shared/PROTOCOL.md`) says about bytes, and nothing
//! about sockets or runtimes.
//!
//! * [`frame`]: RFC 6455 frames: parsed out of a read buffer without copying, unmasked in place,
//!   reassembled from fragments, encoded once and shared.
//! * [`deflate`]: permessage-deflate (RFC 7692): the offer the server accepts, one compressed
//!   frame per message shared like the plain one, and bounded inflating.
//! * [`handshake`]: the HTTP/1.1 request that opens a connection and the responses to it.
//! * [`protocol`]: the JSON messages: client requests decoded with `simd-json`, server messages
//!   encoded straight into frame buffers.
//!
//! The server, the load generator and the benchmarks all speak through this crate, so the
//! benchmarks measure the code that runs in production.

pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod protocol;
