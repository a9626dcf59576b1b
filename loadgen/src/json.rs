//! The allocation-free JSON object scanner every protocol's parser uses (chat, Socket.IO,
//! Pusher): chat-wire's lenient top-level scanner ([`chat_wire::protocol::scan`]), which hands
//! each key of an object with its raw value to a closure, without building a tree or
//! unescaping. The load generator reads only a few fields of each server message, and the
//! names, cids and bodies it compares are its own (no escapes), so raw slices are enough.

pub use chat_wire::protocol::scan::{string, walk, ws, Val};
