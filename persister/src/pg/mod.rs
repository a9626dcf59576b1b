//! What talks to PostgreSQL besides a batch's transaction ([`crate::copy`]) and the migrations
//! ([`crate::schema`]): opening connections and pausing between failed attempts
//! ([`connect`](mod@connect)), and the stored offsets, `persister_offsets` ([`offsets`]). It
//! uses nothing of the crate but [`crate::metrics`]; the consumer side, the writer and the
//! schema use it.

pub mod connect;
pub mod offsets;

pub use connect::{connect, pg_config, Backoff};

use std::error::Error as StdError;

/// An error with its causes (tokio-postgres keeps "Connection refused" and the like in the
/// source chain, not in its message).
pub fn chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
