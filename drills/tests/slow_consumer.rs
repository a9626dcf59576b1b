//! Drill 6: members that stop reading (slow consumers) under load.
//!
//! Two runs, each on a fresh cluster of its own set up the same way (a second run on the same
//! cluster is slower by itself, up to 2x at p99 here, slow consumers or not), with nodes
//! started with `--outbound-limit 32768 --socket-send-buffer 16384` (without the latter the
//! kernel's autotuned send buffer would hold ~4 MiB per stopped reader before the server's
//! queue even starts to fill) and Redis without fsync (its stalls are not the slow
//! consumers'); 300 msg/s of 1000-byte messages (so that a stopped reader fills its queue
//! within seconds), 1 s warm-up + 16 s:
//!
//! 1. the baseline: 20 rooms × 5 members, nobody stalls;
//! 2. the same plus 10 extra members, one in each room that has a sender, which stop reading
//!    from their sockets 3 s after the start (4 KiB socket buffers on their side).
//!
//! Proves: every stalled member is disconnected by the server at its queue bound (counted by
//! the servers' `chat_slow_consumer_disconnects_total`, and each connection closed by the
//! server), while the other members get every message in order and their delivery p99 stays
//! within 2x of the baseline's: a slow client never slows the others (guarantee 7).

use chat_drills::load::Finished;
use chat_drills::pg::Persisted;
use chat_drills::{pg, scenario, Cluster, Load, Options, Report};
use std::time::Duration;

const STALLED: usize = 10;

/// One run on a cluster of its own: the result, PostgreSQL after it, and how many connections
/// the nodes cut off as slow consumers.
async fn run(name: &'static str, stalled: usize) -> Option<(Finished, Persisted, f64, String)> {
    let mut opts = Options::new(name);
    opts.node_args = ["--outbound-limit", "32768", "--socket-send-buffer", "16384"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    opts.redis_args = vec!["--appendonly", "no"];
    let mut cluster = Cluster::start(opts).await?;
    let mut sc = scenario(name, cluster.urls());
    sc.body = 1000;
    sc.duration = 16.0;
    sc.stalled = stalled;
    sc.stall_at = 3.0;
    assert!(
        (0..stalled).all(|i| i % sc.rooms < sc.senders),
        "every stalled member is in a room with a sender"
    );
    let finished = Load::start(sc).finish().await;
    let cut = cluster.node_metric("chat_slow_consumer_disconnects_total");
    let p = pg::wait_persisted(
        &cluster.db.url,
        &finished.result.acks,
        &mut cluster.persister,
        Duration::from_secs(90),
    )
    .await;
    Some((finished, p, cut, cluster.kafka.kind().to_string()))
}

/// The per-second delivery p99 (ms) of the sending seconds, for the report.
fn per_second(f: &Finished) -> String {
    f.result
        .series
        .iter()
        .take(f.result.scenario.total_secs() as usize)
        .map(|p| format!("{:.0}", p.p99_ms))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_members_are_cut_off_and_the_others_keep_their_latency() {
    let mut report = Report::new("slow-consumer");
    let Some((base, base_pg, base_cut, _)) = run("slow-consumer-baseline", 0).await else {
        return;
    };
    let Some((run, p, cut, broker)) = run("slow-consumer", STALLED).await else {
        return;
    };
    let c = &run.result.counters;
    let (p99, base_p99) = (
        run.result.latency.delivery.p99_ms,
        base.result.latency.delivery.p99_ms,
    );
    report.field("broker", broker);
    report.standard(&run, &p);
    report.field("stalled", STALLED);
    report.field("stalled_disconnected", c.stalled_disconnected);
    report.field("slow_consumer_closes", cut);
    report.field("baseline_p99_ms", format!("{base_p99:.1}"));
    report.field(
        "baseline_p50_ms",
        format!("{:.1}", base.result.latency.delivery.p50_ms),
    );
    report.field(
        "p50_ms",
        format!("{:.1}", run.result.latency.delivery.p50_ms),
    );
    report.field("baseline_p99_per_s", per_second(&base));
    report.field("p99_per_s", per_second(&run));
    report.check(
        base.result.verdict.ok
            && base_cut == 0.0
            && base_pg.missing == 0
            && base_pg.duplicate_rows == 0,
        format!(
            "the baseline run is clean ({:?}, {base_cut} slow-consumer closes, {} rows missing, \
             {} duplicated)",
            base.result.verdict.problems, base_pg.missing, base_pg.duplicate_rows
        ),
    );
    report.check(
        c.stalled_disconnected == STALLED as u64,
        format!(
            "every stalled member was disconnected by the server ({} of {STALLED})",
            c.stalled_disconnected
        ),
    );
    report.check(
        cut == STALLED as f64,
        format!("each at its outbound queue bound (chat_slow_consumer_disconnects_total {cut})"),
    );
    report.check(
        p99 <= 2.0 * base_p99,
        format!(
            "the other members' delivery p99 stayed within 2x of the baseline: {p99:.1} ms vs \
             {base_p99:.1} ms"
        ),
    );
    report.check(
        c.delivered == c.expected_deliveries,
        format!(
            "the other members got every message ({} of {})",
            c.delivered, c.expected_deliveries
        ),
    );
    report.finish();
}
