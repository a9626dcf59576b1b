//! `chat-persister`: Kafka topic in, PostgreSQL `messages` out, exactly once in effect. This
//! file is only the binary: logging, flags, the runtime and the exit status around
//! [`chat_persister::run`] (`lib.rs`: the wiring); the modules named below are the library's.
//!
//! The path of a record, file by file: [`consumer`] polls it (on its own thread, positioned by
//! [`position`]'s rebalance callback at the offsets stored in PostgreSQL, [`pg::offsets`],
//! checked against each partition's watermarks by [`start_offset`]), [`batch`] parses and
//! checks it and gathers it into a sorted batch (poison records become [`dead_letter`]s),
//! [`copy`] writes the batch in one transaction (binary COPY into staging, insert what is new,
//! dead letters, offsets), and [`metrics`] counts it ([`status`] serves the counts on
//! `/metrics`). [`schema`] creates the tables at start.
//!
//! Shutdown: SIGTERM or SIGINT stops polling; the batch in flight and the records already
//! gathered are written and committed, then the process leaves the consumer group and exits 0.
//! A second signal exits at once with status 1 (nothing committed is lost; what was not
//! committed is read again by the next start). With `--offset-out-of-range stop`, a stored
//! offset outside its partition's log ends the process with status 3.
//!
//! [`consumer`]: chat_persister::consumer
//! [`position`]: chat_persister::position
//! [`pg::offsets`]: chat_persister::pg::offsets
//! [`start_offset`]: chat_persister::start_offset
//! [`batch`]: chat_persister::batch
//! [`dead_letter`]: chat_persister::dead_letter
//! [`copy`]: chat_persister::copy
//! [`metrics`]: chat_persister::metrics
//! [`status`]: chat_persister::status
//! [`schema`]: chat_persister::schema

use chat_persister::config::Config;
use clap::Parser;
use std::time::Duration;

fn main() {
    chat_process_metrics::logging::init();
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(chat_persister::run(config));
    // Whatever still runs (a blocked watermark fetch, a connection task) holds nothing that
    // matters any more: every batch taken from Kafka is committed.
    runtime.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(code);
}
