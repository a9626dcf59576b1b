//! Cluster mode through the real protocol: two nodes sharing a real Redis (a private
//! `redis-server`, or a real three-master Redis Cluster): rooms and DMs across nodes, `cid`
//! retries across nodes, resume and history from the Redis cache, a join Redis cannot serve,
//! and names/cids that cannot reach other keys. Redis failing during traffic is
//! `cluster_redis_faults.rs`; Kafka is `cluster_kafka.rs`; their shared helpers are
//! `support/cluster.rs`.

mod support;

use chat_testkit::{RedisCluster, RedisServer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::client::{send_req, seqs, Client};
use support::cluster::{metric, nodes, send_many};

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

/// Names and cids can never change which key or slot a command touches, on a real Redis
/// Cluster: a room name with a brace is refused (`}x` would give its keys an empty hash tag and
/// a CROSSSLOT error), and a cid shaped like a key suffix (`x}:seq`) stays inside its room's
/// dedupe key: the room's seq goes on, and retrying that cid is still recognised.
#[tokio::test]
async fn names_and_cids_cannot_reach_other_keys_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let n = nodes(1, &cluster.urls().join(","), &[]);
    let mut alice = Client::connect(&n[0].ws_url("alice"), "alice").await;
    for room in ["}x", "{a}", "a{b", "x}:seq"] {
        alice.send(json!({"type":"join","room":room})).await;
        let e = alice.expect("error").await;
        assert_eq!(e["code"], "bad_request", "{room}: {e}");
    }
    alice.join("k").await;
    let tricky = ["x}:seq", "}:log", "{k}", "k}:c:alice:y"];
    for (i, cid) in tricky.iter().enumerate() {
        alice.send(send_req("k", cid, "b")).await;
        let (ack, _) = alice.until("ack").await;
        assert_eq!(ack["seq"], i as u64 + 1, "{cid}: {ack}");
    }
    // The retries get their first answers; the room's seq and log were not overwritten.
    for (i, cid) in tricky.iter().enumerate() {
        alice.send(send_req("k", cid, "b")).await;
        let (ack, _) = alice.until("ack").await;
        assert_eq!(ack["seq"], i as u64 + 1, "retry of {cid}: {ack}");
    }
    alice.send(send_req("k", "next", "b")).await;
    let (ack, _) = alice.until("ack").await;
    assert_eq!(ack["seq"], 5);
    alice.send(json!({"type":"history","room":"k"})).await;
    let (h, _) = alice.until("history").await;
    assert_eq!(seqs(h["messages"].as_array().unwrap()), vec![1, 2, 3, 4, 5]);
}
