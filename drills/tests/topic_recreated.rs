//! Drill: the topic is recreated under a running cluster.
//!
//! The broker is tansu on memory storage. A first 8 s run of load is persisted; then the
//! broker is SIGKILLed and started again empty, and the topic is created again (what a
//! deleted and recreated topic, a rebuilt cluster or a dev broker restarted on memory storage
//! look like to the clients). A second 10 s run of load follows on the same rooms and nodes:
//! their idempotent producers are stuck against a broker that forgot their producer ids, and
//! each node must notice and replace its own (server/src/log/kafka.rs).
//!
//! The persister ran through it all. Its stored offsets belong to the first log, and are ahead
//! of the new one: reading from them would wait forever, and once the new log grew past them
//! it would skip everything before. Proves: it notices (`chat_persister_offsets_out_of_range_
//! total`), says so, reads the new log from its start, and every message acked in either run
//! is a row with its cid, exactly once; the broker really lost its log (every high watermark
//! 0 after the restart, every stored offset above it).
//!
//! Needs tansu: without it the drill prints `SKIPPED` (and fails where `CHAT_REQUIRE_BROKER=1`).

use chat_drills::pg::{Persisted, Rows};
use chat_drills::{scenario, Cluster, Load, Options, Report};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 4;

fn high_watermarks(brokers: &str, topic: &str) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "drill-watermarks")
        .create()
        .expect("consumer");
    (0..PARTITIONS as i32)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of partition {p}: {e}"))
                .1
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_recreated_every_message_acked_before_and_after_is_persisted() {
    let _guard = chat_drills::exclusive().await;
    let mut report = Report::new("topic-recreated");
    let mut opts = Options::new("topic-recreated");
    opts.memory_broker = true;
    opts.partitions = PARTITIONS;
    let Some(mut cluster) = Cluster::start(opts).await else {
        return;
    };

    // The first log.
    let mut first = scenario(cluster.drill, cluster.urls());
    first.duration = 8.0;
    let run_a = Load::start(first).finish().await;
    let persisted_a = cluster.wait_persisted(&run_a.result.acks).await;
    let ca = &run_a.result.counters;
    report.check(
        run_a.result.verdict.ok && ca.acked == ca.sent && persisted_a.missing == 0,
        format!(
            "first run: {} sent, {} acked, all persisted ({} missing), verdict {:?}",
            ca.sent, ca.acked, persisted_a.missing, run_a.result.verdict.problems
        ),
    );
    let stored_before = cluster.db_offsets().await;

    // The broker loses everything; the topic is created again.
    let addr = cluster.kafka.addr();
    let topic = cluster.topic.clone();
    let broker = cluster.kafka.broker();
    broker.kill();
    broker.start_again();
    broker.create_topic(&topic, PARTITIONS);
    let recreated_at = Instant::now();
    let highs = {
        let (addr, topic) = (addr.clone(), topic.clone());
        tokio::task::spawn_blocking(move || high_watermarks(&addr, &topic))
            .await
            .unwrap()
    };
    report.field("stored_offsets_before", format!("{stored_before:?}"));
    report.field("high_watermarks_after_restart", format!("{highs:?}"));
    report.check(
        highs.iter().all(|&h| h == 0)
            && stored_before.len() == PARTITIONS as usize
            && stored_before.iter().all(|&(_, o)| o > 0),
        format!(
            "the log really was replaced: high watermarks {highs:?} after the restart, stored offsets {stored_before:?}"
        ),
    );

    // The persister ran through the broker's loss. librdkafka (2.x, against tansu 0.6) may
    // crash (SIGSEGV) when the broker comes back without the topic's log; a supervisor would
    // restart it, and so does the drill: the restart must then read the new log from its start
    // (its stored offsets are ahead of it), which is the case this drill is about.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let crashed = cluster.persister.exited();
    report.field(
        "persister_exited_during_broker_loss",
        crashed.map_or("no".to_string(), |s| s.to_string()),
    );
    if crashed.is_some() {
        cluster.persister.restart();
    }

    // The nodes run through it too: their idempotent producers fail for good against a broker
    // that forgot their producer ids, and each node replaces its own (log/kafka.rs).
    let urls = cluster.urls();

    // The second log, same rooms, seqs continuing.
    let mut second = scenario(cluster.drill, urls);
    second.duration = 10.0;
    let run_b = Load::start(second).finish().await;
    let mut acks = run_a.result.acks.clone();
    acks.extend(run_b.result.acks.iter().cloned());
    let persisted_b = cluster.wait_persisted(&run_b.result.acks).await;
    let persisted_since = recreated_at.elapsed();
    let rows = Rows::load(&cluster.db.url).await.expect("rows");
    let all = Persisted::compare(&rows, &acks);
    report.cluster(&cluster);
    report.standard(&run_b, &all);
    let noticed: f64 = ["ahead", "replaced", "reset"]
        .iter()
        .filter_map(|case| {
            cluster.persister.metric(&format!(
                "chat_persister_offsets_out_of_range_total{{case=\"{case}\"}}"
            ))
        })
        .sum();
    report.field("persister_noticed_partitions", noticed);
    report.field("first_acked", ca.acked);
    report.field("second_acked", run_b.result.counters.acked);
    report.field("second_persisted_missing", persisted_b.missing);
    report.field(
        "recreated_to_all_persisted_s",
        format!("{:.1}", persisted_since.as_secs_f64()),
    );
    let renewals = cluster.node_metrics("chat_kafka_producer_renewals_total");
    report.field("producer_renewals_per_node", format!("{renewals:?}"));
    report.check(
        renewals.iter().all(|&r| r >= 1.0),
        format!("every node replaced its stuck producer (per node {renewals:?})"),
    );
    let cb = &run_b.result.counters;
    report.check(
        cb.acked == cb.sent && cb.acked > 0,
        format!(
            "second run on the same nodes: every send acked in the end ({} of {}, {} retried after `unavailable`)",
            cb.acked, cb.sent, cb.unavailable
        ),
    );
    report.check(
        noticed >= 1.0,
        format!("the persister noticed the new log ({noticed} partitions counted)"),
    );
    report.check(
        all.missing == 0 && all.rows == acks.len() as u64 && all.duplicate_rows == 0,
        format!(
            "every message acked in either run is one row: {} rows for {} + {} acks (missing {}, duplicates {})",
            all.rows,
            run_a.result.acks.len(),
            run_b.result.acks.len(),
            all.missing,
            all.duplicate_rows
        ),
    );
    report.finish();
}
