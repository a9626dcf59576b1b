//! Where messages meet: the part of the server that orders a room's messages, remembers the
//! recent ones and hands each to every core with members.
//!
//! * [`memory`]: standalone mode, every room owned by one core of this process.
//!
//! Cluster mode (Redis: one Lua step for seq + recent cache + publish, pub/sub between nodes)
//! takes the same requests and produces the same replies.

pub mod memory;
