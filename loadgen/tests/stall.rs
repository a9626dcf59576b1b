//! The coordinated-omission self-check. A closed-loop client that waits for answers sends
//! nothing while the server (or the client itself) is stalled, so only one message sees the
//! stall and the high percentiles stay low. The open model keeps its schedule and measures
//! from the intended send time, so every message due during a stall carries it: with a 1 s
//! stall in a 3 s run, a third of the messages are 0-1 s late, and p99 and max must say so.

mod support;

use loadgen::coordinator::{self, RunOptions};
use loadgen::scenario::{Pause, Scenario};
use std::time::Duration;

fn options(addr: std::net::SocketAddr, name: &str, pause: Option<Pause>) -> RunOptions {
    let scenario = Scenario {
        urls: vec![format!("ws://{addr}")],
        rooms: 4,
        members: 5,
        senders: 4,
        rate: 200.0,
        warmup: 0.0,
        duration: 3.0,
        inject_pause: pause,
        ..Scenario::default()
    };
    support::run_options(scenario, name)
}

const STALL_MS: f64 = 1000.0;

/// The server stops answering for 1 s: the high percentiles show the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stall_shows_in_high_percentiles() {
    let addr = support::fake_server(Some((
        Duration::from_millis(1000),
        Duration::from_millis(STALL_MS as u64),
    )))
    .await;
    let r = coordinator::run(&options(addr, "stall", None))
        .await
        .unwrap();
    let d = &r.latency.delivery;
    println!("server stall: {d:?}");
    assert!(r.verdict.ok, "{:?}", r.verdict.problems);
    // Nothing omitted: every reception was recorded, from its intended time.
    assert_eq!(d.count, r.counters.delivered);
    assert_eq!(r.counters.sent, 600);
    assert!(d.max_ms >= 0.9 * STALL_MS, "max {} ms", d.max_ms);
    assert!(d.max_ms < 1.8 * STALL_MS, "max {} ms", d.max_ms);
    assert!(d.p99_ms >= 0.8 * STALL_MS, "p99 {} ms", d.p99_ms);
    assert!(d.p90_ms >= 0.3 * STALL_MS, "p90 {} ms", d.p90_ms);
    // Two thirds of the run were unaffected.
    assert!(d.p50_ms < 0.2 * STALL_MS, "p50 {} ms", d.p50_ms);
    // The stall is the server's: the load generator kept its schedule.
    assert!(
        r.latency.send_lag.p99_ms < 200.0,
        "{:?}",
        r.latency.send_lag
    );
}

/// The load generator itself freezes for 1 s (its thread is blocked): the messages it should
/// have sent meanwhile go out late, their latencies include the pause, and the result blames
/// the load generator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_pause_shows_in_high_percentiles_and_is_blamed() {
    let addr = support::fake_server(None).await;
    let pause = Pause {
        at: 1.0,
        length: STALL_MS / 1000.0,
    };
    let r = coordinator::run(&options(addr, "pause", Some(pause)))
        .await
        .unwrap();
    let d = &r.latency.delivery;
    println!("loadgen pause: {d:?}\nsend lag: {:?}", r.latency.send_lag);
    assert!(r.verdict.ok, "{:?}", r.verdict.problems);
    assert_eq!(d.count, r.counters.delivered);
    assert!(d.max_ms >= 0.9 * STALL_MS, "max {} ms", d.max_ms);
    assert!(d.p99_ms >= 0.8 * STALL_MS, "p99 {} ms", d.p99_ms);
    assert!(d.p50_ms < 0.2 * STALL_MS, "p50 {} ms", d.p50_ms);
    // Its own lag shows where the delay came from.
    assert!(r.latency.send_lag.max_ms >= 0.9 * STALL_MS);
    assert!(r.loadgen.bottleneck, "{:?}", r.loadgen.notes);
}
