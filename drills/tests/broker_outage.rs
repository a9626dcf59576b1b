//! Drill 3: the Kafka broker is down for 10 s under load.
//!
//! The broker is tansu on durable storage (`sqlite://`). 6 s into a 26 s run at 300 msg/s it
//! is SIGKILLed, and 10 s later started again on the same port and storage. The nodes run with
//! `--kafka-backlog 100`: past 100 messages waiting for the broker, sends are refused with
//! `unavailable` before they get a seq, and the clients (loadgen with `reconnect`) retry them
//! with the same `cid` after a backoff.
//!
//! Proves: no `ack` while the broker is down (every second of the run's series that lies
//! inside the outage has zero acks), the clients get `unavailable` instead; once it is back
//! the waiting messages are acked and the retries go through; everything acked before,
//! during the backlog and after is a PostgreSQL row with its cid, exactly once; the clients'
//! verification finds nothing lost, duplicated or reordered.
//!
//! Needs tansu (`scripts/broker.sh install`): without it the drill prints `SKIPPED` (and
//! fails where `CHAT_REQUIRE_BROKER=1`).

use chat_drills::{scenario, Cluster, Load, Options, Report};

/// Seconds after the kill (and before the restart) within which an ack could still be one the
/// broker confirmed just before it died.
const MARGIN: f64 = 0.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_10_s_no_ack_while_down_nothing_acked_lost() {
    let mut report = Report::new("broker-outage");
    let mut opts = Options::new("broker-outage");
    opts.durable_broker = true;
    opts.node_args = ["--kafka-backlog", "100", "--kafka-timeout-ms", "60000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let Some(mut cluster) = Cluster::start(opts).await else {
        return;
    };
    let mut load = Load::start(scenario(cluster.drill, cluster.urls()));

    load.at(6.0).await;
    cluster.kafka.broker().kill();
    load.mark("broker killed");
    load.at(16.0).await;
    load.mark("broker starting");
    cluster.kafka.broker().start_again();
    load.mark("broker started");
    let (run, _) = cluster.finish(load, &mut report).await;
    let c = &run.result.counters;
    let (down, up) = (run.mark("broker killed"), run.mark("broker starting"));
    let inside = run.seconds_within(down + MARGIN, up);
    let acked_inside: u64 = inside.iter().map(|s| s.acked).sum();
    let sent_inside: u64 = inside.iter().map(|s| s.sent).sum();
    let after: Vec<_> = run
        .result
        .series
        .iter()
        .filter(|s| s.second as f64 >= run.mark("broker started") + 5.0)
        .filter(|s| (s.second as f64) < run.result.scenario.total_secs())
        .collect();
    report.field("outage_s", format!("{:.1}", up - down));
    report.field(
        "outage_seconds",
        format!(
            "{}..{}",
            inside.first().map_or(0, |s| s.second),
            inside.last().map_or(0, |s| s.second)
        ),
    );
    report.field("acked_inside", acked_inside);
    report.check(
        inside.len() >= 8,
        format!(
            "the outage covers at least 8 whole seconds of traffic ({} s: from {down:.1} s to {up:.1} s)",
            inside.len()
        ),
    );
    report.check(
        acked_inside == 0 && sent_inside > 0,
        format!(
            "no ack while the broker was down: {acked_inside} acks in those seconds, {sent_inside} sends"
        ),
    );
    report.check(
        c.unavailable > 0 && c.retries > 0,
        format!(
            "the clients got `unavailable` ({}) and retried with the same cid ({} retries)",
            c.unavailable, c.retries
        ),
    );
    report.check(
        !after.is_empty() && after.iter().all(|s| s.acked > 0),
        format!(
            "acks flow again from 5 s after the restart ({:?})",
            after.iter().map(|s| s.acked).collect::<Vec<_>>()
        ),
    );
    report.check(
        c.acked == c.sent - c.send_errors && c.send_errors == 0,
        format!(
            "every send was acked in the end: {} of {} ({} send errors)",
            c.acked, c.sent, c.send_errors
        ),
    );
    report.field("series", run.series_text());
    report.finish();
}
