//! Where messages meet: the part of the server that orders a room's messages, remembers the
//! recent ones and hands each to every core with members.
//!
//! * [`memory`]: standalone mode, every room owned by one core of this process; [`dedupe`] is
//!   its `cid` window (256 small tables, so that none grows in one long stall).
//! * [`cluster`] and [`redis`]: cluster mode, every room ordered by Redis (one Lua step for
//!   seq + recent cache + publish, pub/sub between nodes), then made durable in Kafka.
//!
//! Both take the same requests from the cores and produce the same replies.

pub mod cluster;
pub mod dedupe;
pub mod memory;
pub mod owner;
pub mod redis;
pub mod redis_presence;
pub mod replication;
pub mod slot;
