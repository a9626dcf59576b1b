//! Cluster mode with Kafka: acks only after Kafka has the message, with librdkafka's mock
//! cluster (always) and the real `tansu` broker (when installed; required where
//! `CHAT_REQUIRE_BROKER=1`), and no ack while the broker is down. Helpers shared with the
//! other cluster tests: `support/cluster.rs`.

mod support;

use chat_testkit::{Broker, RedisServer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::Message;
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::client::{send_req, seqs, Client};
use support::cluster::{metric, nodes, send_many, send_until_acked};

/// Every record of `topic` as (room, seq), read from the beginning.
fn consume_all(brokers: &str, topic: &str, expect: usize) -> Vec<(String, u64)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", fastrand::u64(..)))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap();
            let v: Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("msg JSON");
            assert_eq!(v["room"].as_str(), Some(key.as_str()), "key = room");
            assert_eq!(v["type"], "msg");
            out.push((key, v["seq"].as_u64().unwrap()));
        }
    }
    out
}

async fn acks_only_after_kafka_has_every_message(brokers: &str, redis: &RedisServer) {
    let n = nodes(
        2,
        &redis.url(),
        &["--kafka", brokers, "--kafka-topic", "chat.messages"],
    );
    let mut alice = Client::connect(&n[0].ws_url("alice"), "alice").await;
    let mut bob = Client::connect(&n[1].ws_url("bob"), "bob").await;
    alice.join("k1").await;
    bob.join("k2").await;
    let a = send_many(&mut alice, "k1", "a", 60).await;
    let b = send_many(&mut bob, "k2", "b", 40).await;
    assert_eq!(seqs(&a), (1..=60).collect::<Vec<_>>());
    assert_eq!(seqs(&b), (1..=40).collect::<Vec<_>>());
    let brokers = brokers.to_string();
    let records = tokio::task::spawn_blocking(move || consume_all(&brokers, "chat.messages", 100))
        .await
        .unwrap();
    let unique: HashSet<&(String, u64)> = records.iter().collect();
    assert_eq!(
        records.len(),
        100,
        "every acked message is in Kafka exactly once"
    );
    for i in 1..=60 {
        assert!(unique.contains(&("k1".to_string(), i)), "k1 {i}");
    }
    for i in 1..=40 {
        assert!(unique.contains(&("k2".to_string(), i)), "k2 {i}");
    }
    // Per room, Kafka holds the messages in seq order (one partition per key).
    let k1: Vec<u64> = records
        .iter()
        .filter(|(r, _)| r == "k1")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(k1, (1..=60).collect::<Vec<_>>());
    assert_eq!(metric(&n[0], "chat_kafka_delivered_total").await, 60);
}

#[tokio::test]
async fn acks_follow_kafka_delivery_mock_cluster() {
    let mock = MockCluster::new(3).expect("librdkafka mock cluster");
    mock.create_topic("chat.messages", 4, 3).expect("topic");
    let redis = RedisServer::start();
    acks_only_after_kafka_has_every_message(&mock.bootstrap_servers(), &redis).await;
}

#[tokio::test]
async fn acks_follow_kafka_delivery_real_broker() {
    let Some(broker) = Broker::start(false) else {
        return;
    };
    broker.create_topic("chat.messages", 4);
    let redis = RedisServer::start();
    acks_only_after_kafka_has_every_message(&broker.addr(), &redis).await;
}

#[tokio::test]
async fn no_ack_while_the_broker_is_down_and_sends_resume_after() {
    let Some(mut broker) = Broker::start(true) else {
        return;
    };
    broker.create_topic("chat.messages", 2);
    let redis = RedisServer::start();
    let n = nodes(
        1,
        &redis.url(),
        &[
            "--kafka",
            &broker.addr(),
            "--kafka-backlog",
            "5",
            "--kafka-timeout-ms",
            "120000",
        ],
    );
    let mut alice = Client::connect(&n[0].ws_url("alice"), "alice").await;
    alice.join("down").await;
    assert_eq!(
        seqs(&send_many(&mut alice, "down", "before", 3).await),
        vec![1, 2, 3]
    );

    broker.stop();
    // alice fills the backlog of 5; nothing is acked while the broker is down.
    alice
        .send_all((1..=5).map(|i| send_req("down", &format!("during{i}"), "x")))
        .await;
    // bob, with nothing pending, hears `unavailable` at once: the backlog is full. (alice
    // would hear hers after her five acks: a connection's replies keep request order.)
    let mut bob = Client::connect(&n[0].ws_url("bob"), "bob").await;
    bob.join("down").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send_all((1..=3).map(|i| send_req("down", &format!("bob{i}"), "x")))
        .await;
    let mut unavailable = 0;
    while unavailable < 3 {
        let v = bob.recv().await;
        assert_ne!(v["type"], "ack", "ack while the broker is down: {v}");
        if v["type"] == "error" {
            assert_eq!(v["code"], "unavailable", "{v}");
            unavailable += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Some(v) = alice.recv_within(Duration::from_millis(200)).await {
            assert_ne!(v["type"], "ack", "ack while the broker is down: {v}");
        }
    }

    broker.start_again();
    // The 5 waiting ones are acked once the broker is back, in order; then sends work again.
    let mut acks = Vec::new();
    while acks.len() < 5 {
        let v = alice.recv().await;
        if v["type"] == "ack" {
            acks.push(v["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(acks, vec![4, 5, 6, 7, 8]);
    let after = send_until_acked(&mut alice, "down", "after").await;
    assert_eq!(after["seq"], 9);
    let brokers = broker.addr();
    let records = tokio::task::spawn_blocking(move || consume_all(&brokers, "chat.messages", 9))
        .await
        .unwrap();
    let mut got: Vec<u64> = records.iter().map(|(_, s)| *s).collect();
    got.sort();
    assert_eq!(
        got,
        (1..=9).collect::<Vec<_>>(),
        "everything acked before, during and after is in Kafka"
    );
}
