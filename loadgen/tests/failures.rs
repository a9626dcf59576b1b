//! `reconnect` and `stalled` against a real `chat-server` (skipped with `SKIPPED:` when it is
//! not built; the drills in `drills/` do the same against a whole cluster with real faults).
//!
//! 1. Connections that freeze are cut by the server (its idle ping: silent for 2 s), reconnect,
//!    `resume`, and end up with every message exactly once; the
//!    senders among them re-send their unanswered messages with the same cid and get the
//!    same seqs back (the server's dedupe), so every ack is unique per (room, seq).
//! 2. `stalled` connections are disconnected by the server; the others lose nothing.

mod support;

use loadgen::coordinator;
use loadgen::report::RunResult;
use loadgen::scenario::{Pause, Scenario};
use std::collections::HashMap;

/// Runs the scenario `make` builds for a server address (named `name`, in-process) against a
/// `chat-server` started with `flags`, and prints its summary; `None` when the server is not
/// built (`SKIPPED:`).
async fn run_against(
    flags: &[&str],
    name: &str,
    make: impl FnOnce(&str) -> Scenario,
) -> Option<RunResult> {
    let server = support::start_chat_server_with(flags)?;
    let r = coordinator::run(&support::run_options(make(&server.addr), name))
        .await
        .unwrap();
    print!("{}", r.summary());
    Some(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_receivers_reconnect_resume_and_lose_nothing() {
    // Pinged after 1 s of silence and closed after 2.
    let flags = ["--idle-ping", "1", "--close-timeout", "1"];
    let run = run_against(&flags, "reconnect", |addr| Scenario {
        reconnect: true,
        record_acks: true,
        // Two load threads; the first one (half of every room's members, senders included)
        // freezes for 3 s while the other keeps sending.
        threads: 2,
        inject_pause: Some(Pause {
            at: 1.0,
            length: 3.0,
        }),
        drain_timeout: 20.0,
        body: 200,
        dm_share: 0.1,
        ..support::scenario(addr, (4, 4, 4), 400.0, (0.5, 4.0))
    });
    let Some(r) = run.await else {
        return;
    };
    let c = &r.counters;
    println!(
        "reconnects {} resumes {} incomplete {} retries {} duplicate acks {}",
        c.reconnects, c.resumes, c.resume_incomplete, c.retries, c.duplicate_acks
    );
    assert!(r.verdict.ok, "{:?}", r.verdict.problems);
    assert!(c.reconnects > 0, "the frozen connections were never cut");
    assert!(
        c.resumes >= c.reconnects,
        "every reconnect resumes its rooms"
    );
    assert_eq!(c.resume_incomplete, 0, "standalone history holds them all");
    assert_eq!((c.lost, c.duplicated, c.reordered), (0, 0, 0));
    assert_eq!(c.acked, c.sent, "every send answered once");
    assert_eq!(c.delivered, c.expected_deliveries);
    // Every ack is recorded, and no (room, seq) was given to two different messages.
    assert_eq!(r.acks.len() as u64, c.acked);
    let mut by_seq: HashMap<(&str, u64), &str> = HashMap::new();
    for a in &r.acks {
        if let Some(other) = by_seq.insert((&a.room, a.seq), &a.cid) {
            panic!("{} seq {} acked for {other} and {}", a.room, a.seq, a.cid);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_cut_and_the_rest_lose_nothing() {
    // The server does not cap its socket send buffers, so a stalled reader is cut once the
    // kernel's buffer (up to tcp_wmem's 4 MiB here) and then 1 MiB of queue are full: send
    // ~1.5 MB/s to each for 6 s. The 1 MiB leaves the readers that do read (a debug build on
    // a busy machine) room to fall behind for a moment.
    let flags = ["--outbound-limit", "1048576", "--close-timeout", "1"];
    let run = run_against(&flags, "stalled", |addr| Scenario {
        stalled: 2,
        stall_at: 0.5,
        body: 10_000,
        ..support::scenario(addr, (2, 4, 2), 300.0, (0.5, 6.0))
    });
    let Some(r) = run.await else {
        return;
    };
    assert!(r.verdict.ok, "{:?}", r.verdict.problems);
    assert_eq!(r.counters.stalled_disconnected, 2);
    assert_eq!(r.counters.lost, 0);
}
