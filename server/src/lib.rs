//! A library view of the server's self-contained internals, for `bench/` (the criterion suites
//! drive the real cross-core mailboxes and the real Redis publish script). The binary
//! (`main.rs`) declares its own modules and does not use this crate. Only modules that need
//! nothing else of the server belong here.

pub mod compress;
pub mod fanout;
pub mod messages;

pub mod bus {
    //! See `bus/mod.rs`; only the parts that stand alone.
    pub mod dedupe;
    pub mod memory;
    pub mod owner;
    pub mod redis;
    pub mod replication;
    pub mod slot;
}
