//! Cluster mode through the real protocol: two or three `chat-server` nodes sharing a real
//! Redis (a private `redis-server`, or a real three-master Redis Cluster), with Kafka from
//! librdkafka's mock cluster (always) or the real `tansu` broker (when installed; required
//! where `CHAT_REQUIRE_BROKER=1`).

mod support;

use chat_testkit::{Broker, RedisCluster, RedisServer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::Message;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use support::client::{http_get, send_req, Client};
use support::Server;

/// Nodes of one cluster, all pointed at the same Redis (and Kafka).
fn nodes(n: usize, redis: &str, extra: &[&str]) -> Vec<Server> {
    (0..n)
        .map(|_| {
            let mut args = vec!["--redis", redis];
            args.extend_from_slice(extra);
            Server::start(&args)
        })
        .collect()
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

/// Reads until `n` `msg`s of `room` arrived (ignoring other types), returning their seqs.
async fn room_seqs(c: &mut Client, room: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c.recv().await;
        if v["type"] == "msg" && v["room"] == room {
            out.push(v["seq"].as_u64().unwrap());
        }
    }
    out
}

/// Reads until a `msg` of `room`.
async fn until_msg_in(c: &mut Client, room: &str) -> Value {
    loop {
        let v = c.recv().await;
        if v["type"] == "msg" && v["room"] == room {
            return v;
        }
    }
}

/// Sends `n` messages pipelined and returns the acks in order (ignoring deliveries).
async fn send_many(c: &mut Client, room: &str, prefix: &str, n: usize) -> Vec<Value> {
    c.send_all((1..=n).map(|i| send_req(room, &format!("{prefix}{i}"), &format!("body {i}"))))
        .await;
    let mut acks = Vec::new();
    while acks.len() < n {
        let v = c.recv().await;
        match v["type"].as_str().unwrap() {
            "ack" => acks.push(v),
            "msg" => {}
            other => panic!("{}: unexpected {other}: {v}", c.user),
        }
    }
    acks
}

/// Sends one message and retries it with the same cid until it is acked (a client's
/// reaction to `unavailable`). Returns the ack.
async fn send_until_acked(c: &mut Client, room: &str, cid: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.send(send_req(room, cid, "x")).await;
        loop {
            let v = c.recv().await;
            if v["cid"] == cid && v["type"] == "ack" {
                return v;
            }
            if v["cid"] == cid && v["type"] == "error" {
                assert_eq!(v["code"], "unavailable", "{v}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "{cid} never acked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of a counter over every series of `/metrics`.
async fn metric(server: &Server, name: &str) -> u64 {
    let (_, text) = http_get(server.addr, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

#[tokio::test]
async fn rooms_and_dms_cross_nodes_with_dense_ordered_seq() {
    let redis = RedisServer::start();
    let n = nodes(2, &redis.url(), &[]);
    let mut alice = Client::connect(&n[0].ws_url("alice"), "alice").await;
    let mut bob = Client::connect(&n[1].ws_url("bob"), "bob").await;
    let mut bob_too = Client::connect(&n[0].ws_url("bob"), "bob").await;
    assert_eq!(alice.join("lobby").await, 0);
    assert_eq!(bob.join("lobby").await, 0);

    let acks = send_many(&mut alice, "lobby", "a", 50).await;
    assert_eq!(
        seqs(&acks),
        (1..=50).collect::<Vec<_>>(),
        "acks in request order, dense seq"
    );
    let got = room_seqs(&mut bob, "lobby", 50).await;
    assert_eq!(
        got,
        (1..=50).collect::<Vec<_>>(),
        "the other node delivers every message in order"
    );

    bob.send(send_req("lobby", "b1", "from node 2")).await;
    let (ack, _) = bob.until("ack").await;
    assert_eq!(ack["seq"], 51);
    let m = loop {
        // alice's own 50 come first (she read only her acks so far).
        let m = alice.until("msg").await.0;
        if m["seq"] == 51 {
            break m;
        }
    };
    assert_eq!(m["from"], "bob");
    assert_eq!(
        alice.join("lobby").await,
        51,
        "joined reports the latest seq"
    );

    // A DM from node 1 reaches bob on both nodes, without a join.
    alice
        .send(json!({"type":"dm","to":"bob","cid":"d1","body":"psst"}))
        .await;
    let (ack, _) = alice.until("ack").await;
    assert_eq!(
        (ack["room"].as_str(), ack["seq"].as_u64()),
        (Some("dm:alice:bob"), Some(1))
    );
    for c in [&mut bob, &mut bob_too] {
        let m = until_msg_in(c, "dm:alice:bob").await;
        assert_eq!(
            (m["seq"].as_u64(), m["body"].as_str()),
            (Some(1), Some("psst"))
        );
    }

    // The same (from, cid) through the other node is the same message, delivered once.
    let mut alice_too = Client::connect(&n[1].ws_url("alice"), "alice").await;
    alice_too.join("lobby").await;
    alice_too.send(send_req("lobby", "a7", "again")).await;
    let (ack, _) = alice_too.until("ack").await;
    assert_eq!((ack["seq"].as_u64(), &ack["id"]), (Some(7), &acks[6]["id"]));
    assert!(
        bob_too
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "no second delivery"
    );

    // History from the Redis cache, paged.
    bob.send(json!({"type":"history","room":"lobby","limit":10}))
        .await;
    let (h, _) = bob.until("history").await;
    assert_eq!(
        seqs(h["messages"].as_array().unwrap()),
        (42..=51).collect::<Vec<_>>()
    );
    bob.send(json!({"type":"history","room":"lobby","before":42,"limit":100}))
        .await;
    let (h, _) = bob.until("history").await;
    assert_eq!(
        seqs(h["messages"].as_array().unwrap()),
        (1..=41).collect::<Vec<_>>()
    );
    assert!(metric(&n[0], "chat_redis_round_trips_total").await > 0);
}

#[tokio::test]
async fn resume_after_a_disconnect_returns_exactly_the_missed_messages() {
    let redis = RedisServer::start();
    let n = nodes(2, &redis.url(), &["--history-len", "20"]);
    let mut alice = Client::connect(&n[0].ws_url("alice"), "alice").await;
    let mut bob = Client::connect(&n[1].ws_url("bob"), "bob").await;
    alice.join("r").await;
    bob.join("r").await;
    send_many(&mut alice, "r", "a", 3).await;
    assert_eq!(room_seqs(&mut bob, "r", 3).await, vec![1, 2, 3]);
    bob.close().await;
    send_many(&mut alice, "r", "b", 5).await;

    // bob comes back on the other node.
    let mut bob = Client::connect(&n[0].ws_url("bob"), "bob").await;
    bob.send(json!({"type":"resume","room":"r","after":3}))
        .await;
    let (resumed, missed) = bob.until("resumed").await;
    assert_eq!(seqs(&missed), vec![4, 5, 6, 7, 8]);
    assert_eq!(
        (resumed["seq"].as_u64(), resumed["complete"].as_bool()),
        (Some(8), Some(true))
    );
    alice.send(send_req("r", "live", "x")).await;
    assert_eq!(
        room_seqs(&mut bob, "r", 1).await,
        vec![9],
        "live continues without a gap"
    );
    assert!(
        bob.recv_within(Duration::from_millis(300)).await.is_none(),
        "and without a duplicate"
    );

    // Past what the cache keeps (20): what is there, and complete: false.
    send_many(&mut alice, "r", "c", 30).await;
    let mut late = Client::connect(&n[1].ws_url("carol"), "carol").await;
    late.send(json!({"type":"resume","room":"r","after":1}))
        .await;
    let (resumed, sent) = late.until("resumed").await;
    assert_eq!(resumed["complete"], false);
    assert_eq!(resumed["seq"], 39);
    assert_eq!(*seqs(&sent).last().unwrap(), 39);
    assert!(
        seqs(&sent).windows(2).all(|w| w[1] == w[0] + 1),
        "a dense run of the newest"
    );
}

#[tokio::test]
async fn a_real_three_master_redis_cluster() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls().join(",");
    let n = nodes(2, &urls, &[]);
    let mut alice = Client::connect(&n[0].ws_url("alice"), "alice").await;
    let mut bob = Client::connect(&n[1].ws_url("bob"), "bob").await;
    // Rooms spread over the three masters' slots.
    let rooms: Vec<String> = (0..6).map(|i| format!("room-{i}")).collect();
    for r in &rooms {
        alice.join(r).await;
        bob.join(r).await;
    }
    for r in &rooms {
        let acks = send_many(&mut alice, r, &format!("{r}-"), 10).await;
        assert_eq!(seqs(&acks), (1..=10).collect::<Vec<_>>(), "{r}");
    }
    let mut per_room: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while per_room.values().map(Vec::len).sum::<usize>() < 60 {
        let v = bob.recv().await;
        if v["type"] == "msg" {
            per_room
                .entry(v["room"].as_str().unwrap().into())
                .or_default()
                .push(v["seq"].as_u64().unwrap());
        }
    }
    for r in &rooms {
        assert_eq!(
            per_room[r],
            (1..=10).collect::<Vec<_>>(),
            "{r} in order on the other node"
        );
    }
    // The rooms' keys really live on different masters.
    let masters_with_keys = cluster
        .ports()
        .iter()
        .filter(|p| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &p.to_string(), "dbsize"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                > 0
        })
        .count();
    assert!(
        masters_with_keys >= 2,
        "keys on {masters_with_keys} master(s)"
    );

    alice
        .send(json!({"type":"dm","to":"bob","cid":"d","body":"hi"}))
        .await;
    assert_eq!(until_msg_in(&mut bob, "dm:alice:bob").await["body"], "hi");
    bob.send(json!({"type":"resume","room":"room-3","after":5}))
        .await;
    let (resumed, sent) = bob.until("resumed").await;
    assert_eq!(seqs(&sent), vec![6, 7, 8, 9, 10]);
    assert_eq!(resumed["complete"], true);
}

/// Sends `total` messages one by one (each retried with its cid until acked) while `fault`
/// runs in the middle; returns the acked seqs and what the receiver on the other node saw.
async fn traffic_through(
    n: &[Server],
    room: &str,
    total: usize,
    fault: impl FnOnce() + Send + 'static,
) -> (Vec<u64>, Vec<u64>) {
    let mut alice = Client::connect(&n[0].ws_url("alice"), "alice").await;
    let mut bob = Client::connect(&n[1].ws_url("bob"), "bob").await;
    alice.join(room).await;
    bob.join(room).await;
    let room_owned = room.to_string();
    let receiver = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < total {
            let v = bob.recv().await;
            if v["type"] == "msg" && v["room"] == room_owned.as_str() {
                seen.push(v["seq"].as_u64().unwrap());
            }
        }
        seen
    });
    let mut fault = Some(fault);
    let mut acked = Vec::new();
    for i in 1..=total {
        if i == total / 3 {
            let f = fault.take().unwrap();
            tokio::task::spawn_blocking(f);
        }
        let ack = send_until_acked(&mut alice, room, &format!("m{i}")).await;
        acked.push(ack["seq"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), receiver)
        .await
        .expect("receiver got everything")
        .unwrap();
    (acked, seen)
}

#[tokio::test]
async fn a_redis_restart_during_traffic_loses_nothing_and_keeps_order() {
    // appendfsync always: the restarted Redis has every acked message's seq.
    let redis = std::sync::Arc::new(std::sync::Mutex::new(RedisServer::start()));
    let url = redis.lock().unwrap().url();
    let n = nodes(2, &url, &[]);
    let r = redis.clone();
    let (acked, seen) = traffic_through(&n, "restart", 150, move || {
        let mut redis = r.lock().unwrap();
        redis.stop();
        std::thread::sleep(Duration::from_secs(1));
        redis.start_again();
    })
    .await;
    assert_eq!(
        acked,
        (1..=150).collect::<Vec<_>>(),
        "every message acked once, dense seq"
    );
    assert_eq!(
        seen, acked,
        "the other node delivered every acked message, in order, once"
    );
    assert!(
        metric(&n[0], "chat_redis_retries_total").await
            + metric(&n[0], "chat_redis_disconnects_total").await
            > 0,
        "the outage was noticed"
    );
}

#[tokio::test]
async fn redis_losing_its_data_does_not_reuse_a_seq() {
    let redis = std::sync::Arc::new(std::sync::Mutex::new(RedisServer::start()));
    let url = redis.lock().unwrap().url();
    let n = nodes(2, &url, &[]);
    let r = redis.clone();
    let (acked, seen) = traffic_through(&n, "amnesia", 150, move || {
        r.lock().unwrap().flushall_and_restart_without_data();
    })
    .await;
    // The nodes remember the highest seq they saw; seqs continue from there.
    let unique: HashSet<u64> = acked.iter().copied().collect();
    assert_eq!(
        unique.len(),
        acked.len(),
        "no seq given to two messages: {acked:?}"
    );
    assert!(
        acked.windows(2).all(|w| w[1] > w[0]),
        "increasing in send order: {acked:?}"
    );
    assert_eq!(
        seen, acked,
        "the receiving node delivered every acked message, in order, once"
    );
}

#[tokio::test]
async fn a_cut_link_is_noticed_and_the_gap_filled_from_the_cache() {
    let redis = RedisServer::start();
    let n = nodes(2, &redis.url(), &[]);
    let port = redis.port();
    let (acked, seen) = traffic_through(&n, "cut", 200, move || {
        // Cut every client's link (pub/sub included), twice, while messages flow.
        for _ in 0..2 {
            chat_testkit::redis_cli(port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
            chat_testkit::redis_cli(port, &["CLIENT", "KILL", "TYPE", "normal"]);
            std::thread::sleep(Duration::from_millis(150));
        }
    })
    .await;
    assert_eq!(acked, (1..=200).collect::<Vec<_>>());
    assert_eq!(seen, acked, "no gap and no duplicate on the receiving node");
    let disconnects: u64 = metric(&n[0], "chat_redis_disconnects_total").await
        + metric(&n[1], "chat_redis_disconnects_total").await;
    assert!(disconnects > 0, "the cut was noticed");
}

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

#[tokio::test]
async fn a_join_that_redis_cannot_serve_fails_cleanly() {
    let mut redis = RedisServer::start();
    let n = nodes(1, &redis.url(), &[]);
    let mut alice = Client::connect(&n[0].ws_url("alice"), "alice").await;
    redis.stop();
    alice.send(json!({"type":"join","room":"nowhere"})).await;
    let mut e = None;
    for _ in 0..30 {
        if let Some(v) = alice.recv_within(Duration::from_secs(1)).await {
            e = Some(v);
            break;
        }
    }
    let e = e.expect("an answer within 30 s");
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{e}"
    );
    redis.start_again();
    // The failed join left no half-made membership behind.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        alice.send(send_req("nowhere", "x", "hi")).await;
        let v = alice.recv().await;
        assert_eq!(v["type"], "error", "{v}");
        if v["code"] == "not_joined" {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        alice.join("nowhere").await,
        0,
        "and joining works once Redis is back"
    );
}
