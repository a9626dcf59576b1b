//! Drill 1: one node of two is SIGKILLed under load.
//!
//! 8 s into a 26 s run (300 msg/s, 20 rooms × 5 members, a tenth of the sends direct messages)
//! node 1 is killed with SIGKILL: its connections are cut mid-stream, its unanswered sends and
//! whatever it had not yet produced to Kafka die with it. The clients (loadgen with
//! `reconnect`) open a connection to the other node, `resume` each room and DM room after the
//! last seq they saw, and re-send every unanswered message with the same `cid`.
//!
//! Proves: every client ends up on the surviving node; no acked message is lost (every
//! receiver got every seq once and in order, and every ack is a PostgreSQL row with its
//! cid); no seq was given to two messages (no (room, seq) acked for two cids, none in
//! PostgreSQL with another cid); a re-sent message is the same message (no cid on two rows);
//! the resumes were complete (the Redis cache still held what was missed).

use chat_drills::{scenario, Cluster, Load, Options, Report};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sigkilled_under_load_its_clients_move_and_nothing_acked_is_lost() {
    let mut report = Report::new("node-kill");
    let Some(mut cluster) = Cluster::start(Options::new("node-kill")).await else {
        return;
    };
    let mut sc = scenario(cluster.drill, cluster.urls());
    sc.dm_share = 0.1;
    let connections = sc.connection_count() as f64;
    let mut load = Load::start(sc);

    load.at(8.0).await;
    let before = (
        cluster.metric_of(0, "chat_connections"),
        cluster.metric_of(1, "chat_connections"),
    );
    cluster.nodes[1].kill();
    load.mark("node1 killed");
    // Everyone is on node 0 a few seconds later.
    load.at(14.0).await;
    let after = cluster.metric_of(0, "chat_connections");
    let (run, p) = cluster.finish(load, &mut report).await;
    let c = &run.result.counters;
    report.field("conns_before", format!("{:?}", before));
    report.field("conns_after_on_node0", format!("{after:?}"));
    report.check(
        matches!(before, (Some(a), Some(b)) if a > 0.0 && b > 0.0 && a + b == connections),
        format!(
            "both nodes had clients before the kill (node0, node1: {before:?} of {connections})"
        ),
    );
    report.check(
        after == Some(connections),
        format!("6 s after the kill every client is on node 0 ({after:?} of {connections})"),
    );
    report.check(
        c.reconnects > 0 && c.resumes > 0,
        format!(
            "the killed node's clients reconnected ({}) and resumed ({} rooms)",
            c.reconnects, c.resumes
        ),
    );
    report.check(
        c.resume_incomplete == 0,
        format!(
            "every resume was complete (the cache held what was missed): {} incomplete",
            c.resume_incomplete
        ),
    );
    report.check(
        p.unacked_rows == 0,
        format!(
            "every row is an acked message ({} rows nobody acked: a message the killed node wrote \
             to Kafka is acked by the other node when re-sent)",
            p.unacked_rows
        ),
    );
    report.finish();
}
