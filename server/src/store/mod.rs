//! Long-term message storage, read by the server when the Redis cache is not enough.
//!
//! * [`postgres`]: the `messages` table the persister writes.

pub mod postgres;
