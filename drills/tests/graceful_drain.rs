//! Drill 7: one node of two gets SIGTERM under load (a rolling deploy).
//!
//! 8 s into a 26 s run at 300 msg/s node 1 is sent SIGTERM. While it drains the drill probes
//! it every 50 ms: `/healthz`, a WebSocket upgrade, and `/metrics` (messages that got a seq
//! vs. messages Kafka confirmed or refused). A client of the drill's own, connected to node 1
//! before, waits for its close frame.
//!
//! Proves: during the drain `/healthz` answers 503 and new WebSockets are refused (503); the
//! node's clients get close 1001 and reconnect to the other node (loadgen `reconnect`), with
//! zero loss; every Kafka delivery the node had in flight finished before it closed them (its
//! last `/metrics` has as many confirmed as sequenced); it exits with status 0; every message
//! acked by either node is a PostgreSQL row with its cid, none twice.

use chat_drills::ws::{http_status, upgrade_status, Client};
use chat_drills::{scenario, Cluster, Load, Options, Report};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Probes {
    health_503: u32,
    health_other: Vec<u16>,
    upgrade_503: u32,
    upgrade_other: Vec<u16>,
    /// (messages given a seq, confirmed by Kafka, refused by Kafka) at the last scrape.
    last_metrics: Option<(f64, f64, f64)>,
    scrapes: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_node_under_load_with_zero_loss() {
    let _one_at_a_time = chat_drills::exclusive().await;
    let mut report = Report::new("graceful-drain");
    let Some(mut cluster) = Cluster::start(Options::new("graceful-drain")).await else {
        return;
    };
    let sc = scenario(cluster.drill, cluster.urls());
    let connections = sc.connection_count() as f64;
    let mut load = Load::start(sc);
    let node1 = cluster.nodes[1].addr;
    let mut watcher = Client::connect(node1, "drill-watcher")
        .await
        .expect("connect to node 1");
    watcher
        .send(serde_json::json!({"type": "join", "room": "drill-watch"}))
        .await
        .expect("join");
    let close_code = tokio::spawn(async move { watcher.close_code(Duration::from_secs(40)).await });

    load.at(8.0).await;
    let before = cluster.metric_of(1, "chat_connections");
    cluster.nodes[1].signal("TERM");
    load.mark("node1 SIGTERM");
    let term_at = Instant::now();
    let mut probes = Probes::default();
    let mut exit = None;
    while term_at.elapsed() < Duration::from_secs(30) {
        // Answers before the first 503 came before the signal was handled.
        match http_status(node1, "/healthz").await {
            Ok(503) => probes.health_503 += 1,
            Ok(s) if probes.health_503 > 0 => probes.health_other.push(s),
            _ => {}
        }
        match upgrade_status(node1, "drill-late").await {
            Ok(503) => probes.upgrade_503 += 1,
            Ok(s) if probes.upgrade_503 > 0 => probes.upgrade_other.push(s),
            _ => {}
        }
        let m = |name| cluster.metric_of(1, name);
        if let (Some(p), Some(d), Some(f)) = (
            m("chat_redis_published_total"),
            m("chat_kafka_delivered_total"),
            m("chat_kafka_failed_total"),
        ) {
            probes.last_metrics = Some((p, d, f));
            probes.scrapes += 1;
        }
        if let Some(status) = cluster.nodes[1].wait_exit(Duration::from_millis(50)) {
            exit = Some(status);
            break;
        }
    }
    load.mark("node1 exited");
    let drain_secs = term_at.elapsed().as_secs_f64();
    load.at(16.0).await;
    let after = cluster.metric_of(0, "chat_connections");
    let close_code = close_code.await.expect("the watcher task");
    let (run, _) = cluster.finish(load, &mut report).await;
    let c = &run.result.counters;
    report.field("drain_s", format!("{drain_secs:.1}"));
    report.field("exit", format!("{exit:?}"));
    report.field("health_503", probes.health_503);
    report.field("upgrade_503", probes.upgrade_503);
    report.check(
        before.is_some_and(|b| b > 0.0),
        format!("node 1 had clients when it got SIGTERM ({before:?})"),
    );
    report.check(
        probes.health_503 > 0 && probes.health_other.is_empty(),
        format!(
            "/healthz answered 503 while draining ({} times; other answers after the first {:?})",
            probes.health_503, probes.health_other
        ),
    );
    report.check(
        probes.upgrade_503 > 0 && probes.upgrade_other.is_empty(),
        format!(
            "new WebSockets were refused with 503 while draining ({} times; other answers after the first {:?})",
            probes.upgrade_503, probes.upgrade_other
        ),
    );
    report.check(
        close_code == Ok(1001),
        format!("a client of node 1 got close 1001 ({close_code:?})"),
    );
    report.check(
        matches!(probes.last_metrics, Some((p, d, f)) if p == d + f && f == 0.0),
        format!(
            "every message node 1 sequenced was confirmed by Kafka before it stopped answering \
             (last of {} scrapes: sequenced, confirmed, refused = {:?})",
            probes.scrapes, probes.last_metrics
        ),
    );
    report.check(
        exit.is_some_and(|s| s.code() == Some(0)),
        format!("node 1 exited with status 0 ({exit:?} after {drain_secs:.1} s)"),
    );
    let log = cluster.nodes[1].log_text();
    report.check(
        log.contains("draining") && log.contains("stopped"),
        "node 1 logged `draining` and `stopped`",
    );
    report.check(
        after == Some(connections),
        format!("its clients moved to node 0 ({after:?} of {connections} connections there)"),
    );
    report.check(
        c.reconnects > 0,
        format!("the clients reconnected ({})", c.reconnects),
    );
    report.check(
        c.resume_incomplete == 0,
        format!(
            "every resume was complete ({} incomplete)",
            c.resume_incomplete
        ),
    );
    report.finish();
}

/// Every record of `topic` with its `cid`, read from the beginning for up to `wait`.
fn cids_in_topic(brokers: &str, topic: &str, want: usize, wait: Duration) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("drill-check-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + wait;
    let mut cids = Vec::new();
    while cids.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("msg JSON");
            cids.push(v["cid"].as_str().unwrap_or_default().to_string());
        }
    }
    cids
}

/// The drain's end with records still on their way to Kafka: the broker (librdkafka's mock
/// cluster, so that it can be taken down and up at will) is down when a client sends 20
/// messages, so they wait in the node's producer. SIGTERM; the broker comes back 2 s later,
/// after the 1 s grace, while the node is shutting down. The node must not exit before they
/// are delivered: all 20 are in the topic afterwards, and it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_waits_for_records_still_on_their_way_to_kafka() {
    use rdkafka::mocking::MockCluster;
    let _one_at_a_time = chat_drills::exclusive().await;
    let mut report = Report::new("graceful-drain-kafka-flush");
    let dir = chat_testkit::TempDir::new("drill-drain-flush");
    let redis = chat_testkit::RedisServer::start();
    let kafka = MockCluster::new(3).expect("mock cluster");
    kafka.create_topic("drain", 1, 3).expect("topic");
    let args: Vec<String> = [
        "--threads",
        "2",
        "--redis",
        &redis.url(),
        "--kafka",
        &kafka.bootstrap_servers(),
        "--kafka-topic",
        "drain",
        "--drain-grace",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut node = chat_drills::procs::Node::start("node", &args, dir.path());
    let mut alice = Client::connect(node.addr, "alice").await.expect("connect");
    alice
        .send(serde_json::json!({"type": "join", "room": "r"}))
        .await
        .expect("join");
    alice.recv(Duration::from_secs(10)).await.expect("joined");
    for b in 1..=3 {
        kafka.broker_down(b).expect("broker down");
    }
    for i in 0..20 {
        let send =
            serde_json::json!({"type": "send", "room": "r", "cid": format!("c{i}"), "body": "x"});
        alice.send(send).await.expect("send");
    }
    // Until every send is sequenced (its `msg` comes back through Redis): all 20 are in the
    // producer, waiting for the broker.
    let mut seen = 0;
    while seen < 20 {
        let v = alice.recv(Duration::from_secs(10)).await.expect("msg");
        seen += usize::from(v["type"] == "msg");
    }
    // alice answers the close frame at once (as clients do), so the cores are done quickly.
    let closed = tokio::spawn(async move { alice.close_code(Duration::from_secs(20)).await });
    node.signal("TERM");
    let term_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for b in 1..=3 {
        kafka.broker_up(b).expect("broker up");
    }
    let exit = node.wait_exit(Duration::from_secs(20));
    let exit_secs = term_at.elapsed().as_secs_f64();
    let closed = closed.await.expect("alice's task");
    let brokers = kafka.bootstrap_servers();
    let cids = tokio::task::spawn_blocking(move || {
        cids_in_topic(&brokers, "drain", 20, Duration::from_secs(15))
    })
    .await
    .expect("consumer");
    report.field("in_topic", cids.len());
    report.field("exit_s", format!("{exit_secs:.1}"));
    report.check(
        cids.len() == 20,
        format!(
            "all 20 records that were waiting for the broker at SIGTERM reached it ({} did)",
            cids.len()
        ),
    );
    report.check(
        closed == Ok(1001),
        format!("the client got close 1001 ({closed:?})"),
    );
    report.check(
        exit.is_some_and(|s| s.code() == Some(0)),
        format!("the node exited with status 0 ({exit:?} after {exit_secs:.1} s)"),
    );
    report.check(
        node.log_text().contains("Kafka flushed"),
        "the node logged `Kafka flushed`",
    );
    report.finish();
}
