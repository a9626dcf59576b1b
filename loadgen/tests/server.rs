//! Against a real `chat-server` (`target/debug/chat-server`; skipped with `SKIPPED:` when it
//! is not built): a short open-model run in-process, then the same scenario over two agents
//! (`loadgen agent` on two local ports), which must merge to the same totals.

mod support;

use loadgen::coordinator::{self, RunOptions};
use loadgen::scenario::Scenario;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_run_in_process_and_over_two_agents() {
    let Some(server) = support::start_chat_server() else {
        return;
    };
    let dir = support::temp_dir("server");
    let scenario = Scenario {
        name: "in-process".into(),
        dm_share: 0.1,
        floor: true,
        ..support::scenario(&server.addr, (4, 5, 4), 200.0, (0.5, 3.0))
    };
    let opts = RunOptions {
        scenario: scenario.clone(),
        agents: vec![],
        results_dir: dir.clone(),
        command_line: "test".into(),
        progress: false,
        plots: true,
        start_delay: Duration::from_millis(200),
    };

    // 1. In-process: 20 connections, 200 msg/s for 3.5 s.
    let a = coordinator::run(&opts).await.unwrap();
    print!("{}", a.summary());
    assert!(a.verdict.ok, "{:?}", a.verdict.problems);
    let c = &a.counters;
    assert_eq!(c.connected, 20);
    assert_eq!(c.sent, 700);
    // 175 messages per sender, every tenth a DM.
    assert_eq!(c.sent_dm, 4 * 17);
    assert_eq!(c.acked, 700);
    assert_eq!((c.lost, c.duplicated, c.reordered, c.unacked), (0, 0, 0, 0));
    // Every room message reaches its 5 members, every DM its 2 users.
    assert_eq!(c.expected_deliveries, (700 - 68) * 5 + 68 * 2);
    assert_eq!(c.delivered, c.expected_deliveries);
    assert!(
        a.server_cpu_seconds.is_some_and(|s| s > 0.0),
        "{:?}",
        a.servers
    );
    assert!(a.server_cpu_us_per_delivered.is_some());
    // The kernel's floor for the same deliveries, measured after the run, and the server's
    // multiple of it (a server cannot deliver for less than the kernel's writes cost).
    let f = a.floor.as_ref().expect("--floor measured");
    assert_eq!((f.conns, f.fanout, f.batch), (20, 5, 1));
    assert!(f.frames > 0 && f.us_per_frame > 0.0, "{f:?}");
    assert!(
        a.server_cpu_vs_floor.is_some_and(|r| r > 1.0),
        "{:?}",
        a.server_cpu_vs_floor
    );
    assert!(a.latency.delivery.count > 0 && a.latency.delivery.p99_ms > 0.0);
    for f in [
        "result.json",
        "report.md",
        "scenario.toml",
        "latency_spectrum.svg",
        "throughput.svg",
        "latency_over_time.svg",
    ] {
        let p = dir.join("in-process").join(f);
        assert!(
            p.metadata().is_ok_and(|m| m.len() > 100),
            "{} missing",
            p.display()
        );
    }
    let back = loadgen::report::RunResult::load(&dir.join("in-process/result.json")).unwrap();
    assert_eq!(back.counters, a.counters);

    // 2. The same scenario split over two agents on two local ports.
    let mut agents = Vec::new();
    for _ in 0..2 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        agents.push(l.local_addr().unwrap().to_string());
        tokio::spawn(loadgen::agent::serve(l));
    }
    let mut opts2 = opts.clone();
    opts2.scenario.name = "two-agents".into();
    opts2.agents = agents;
    opts2.plots = false;
    let b = coordinator::run(&opts2).await.unwrap();
    print!("{}", b.summary());
    assert!(b.verdict.ok, "{:?}", b.verdict.problems);
    assert_eq!(b.agents.len(), 2);
    let d = &b.counters;
    for (name, x, y) in [
        ("connected", c.connected, d.connected),
        ("sent", c.sent, d.sent),
        ("sent_dm", c.sent_dm, d.sent_dm),
        ("sent_measured", c.sent_measured, d.sent_measured),
        ("acked", c.acked, d.acked),
        ("delivered", c.delivered, d.delivered),
        (
            "expected_deliveries",
            c.expected_deliveries,
            d.expected_deliveries,
        ),
        ("lost", c.lost, d.lost),
    ] {
        assert_eq!(x, y, "{name}: in-process {x}, two agents {y}");
    }
    // The merged histograms hold every reception, like the in-process ones.
    assert_eq!(b.latency.delivery.count, a.latency.delivery.count);
    assert_eq!(b.series.iter().map(|p| p.sent).sum::<u64>(), d.sent);
    std::fs::remove_dir_all(&dir).ok();
}

/// `compare` reads two results and prints ratios.
#[test]
fn compare_two_results() {
    let dir = support::temp_dir("compare");
    let mut r: serde_json::Value = serde_json::from_str(include_str!("data/result.json")).unwrap();
    std::fs::write(dir.join("a.json"), r.to_string()).unwrap();
    r["latency"]["delivery"]["p99_ms"] = 2.0.into();
    std::fs::write(dir.join("b.json"), r.to_string()).unwrap();
    let t = loadgen::compare::compare(&dir.join("a.json"), &dir.join("b.json")).unwrap();
    println!("{t}");
    assert!(
        t.contains("| delivery p99 (ms) | 1.000 | 2.000 | 2.00 |"),
        "{t}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
