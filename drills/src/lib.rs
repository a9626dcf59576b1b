//! Reliability drills for the chat backend: each integration test in `tests/` runs verified
//! load (the `loadgen` library) through a real cluster while one component fails, then checks
//! PROTOCOL.md's guarantees against what the clients saw and what PostgreSQL holds.
//!
//! The drills (one file each, one test per file, so that `cargo test` runs them one after
//! the other: each uses both cores of a small machine):
//!
//! | file | fault | proves |
//! | --- | --- | --- |
//! | `tests/node_kill.rs` | SIGKILL of one node | its clients reconnect to the other and `resume`; no acked message lost, no seq reused |
//! | `tests/redis_data_loss.rs` | Redis restarts empty | no (room, seq) given to two messages, in the acks and in PostgreSQL; `resume` from PostgreSQL says `complete` truthfully |
//! | `tests/broker_outage.rs` | the broker killed for 10 s (durable storage) | no `ack` while it is down, `unavailable` instead; everything acked is persisted |
//! | `tests/postgres_outage.rs` | PostgreSQL stopped for 10 s | the persister catches up: no loss, no duplicate row |
//! | `tests/persister_kill.rs` | SIGKILL of the persister mid-batch | exactly one row per message after the restart |
//! | `tests/slow_consumer.rs` | members that stop reading | they are disconnected at their queue bound; the others' p99 stays within 2x |
//! | `tests/topic_recreated.rs` | the broker restarted empty and the topic created again | the persister neither stalls on nor skips the new log: every message acked before and after is a row |
//! | `tests/unstorable_input.rs` | every awkward input a client can send | what the server acks is stored unchanged; what PostgreSQL cannot hold is `bad_request`, never an ack then a dead letter |
//! | `tests/redis_failover.rs` | a Redis Cluster master killed whose replica really missed writes (`--redis-replicas 1`) | nothing shown before a replica had it: no acked message lost, no seq shown twice; every node sees the new slot map |
//! | `tests/graceful_drain.rs` | SIGTERM of one node | 503 health, no new connections, close 1001, clients move, exit 0, everything acked persisted |
//!
//! Every drill prints its checks and one `DRILL <name>: PASSED ... sent=.. acked=..
//! delivered=.. persisted=.. lost=0 duplicated=0 ...` line to stdout (uncaptured), and leaves
//! loadgen's result and the processes' logs in `target/drill-results/<drill>/`.
//!
//! Running them: `cargo test --workspace` (what `scripts/test.sh` runs) builds the
//! `chat-server` and `chat-persister` binaries first; `cargo test -p chat-drills` alone does
//! not, so build them first (`cargo build -p chat-server -p chat-persister`) or it tests
//! whatever binaries the target directory holds. They need `redis-server`, PostgreSQL on
//! 127.0.0.1:5432 (trust) with its server binaries for the private one, and tansu
//! (`scripts/broker.sh install`): without tansu the broker-outage drill is `SKIPPED` and the
//! others use librdkafka's mock cluster, unless `CHAT_REQUIRE_BROKER=1`. About 4 minutes on 2
//! cores, one drill at a time.
//!
//! The harness:
//!
//! | module | concept |
//! | --- | --- |
//! | [`procs`] | the `chat-server` and `chat-persister` binaries (from the same target directory) as child processes |
//! | [`kafka`] | the broker: tansu, or librdkafka's mock cluster where tansu is not installed |
//! | [`cluster`] | one drill's private cluster: Redis, topic, database, two nodes, persister |
//! | [`load`] | a verified loadgen run on a task, with the drill's faults marked on its time line |
//! | [`pg`] | PostgreSQL after the persister caught up, compared with every ack |
//! | [`ws`] | a small protocol client for `resume` checks, and HTTP probes |
//! | [`report`] | the printed checks and the `DRILL` line |
//!
//! Services: the shared Redis (6379) and PostgreSQL (5432) are never stopped or flushed. Each
//! drill runs its own `redis-server`, broker and nodes; its database is a fresh one on the
//! shared PostgreSQL, or on a private PostgreSQL where the drill stops it.

pub mod cluster;
pub mod kafka;
pub mod load;
pub mod pg;
pub mod procs;
pub mod report;
pub mod ws;

pub use cluster::{Cluster, Options};

/// Held by every drill for its whole run: the tests of one file run one at a time (cargo
/// runs the files one after the other anyway), each with the machine to itself.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
pub use load::{scenario, Load};
pub use report::Report;
