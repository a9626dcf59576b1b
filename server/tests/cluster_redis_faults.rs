//! Cluster mode while Redis fails under traffic: a restart, a Redis that lost its data, and
//! cut links. Two nodes on a private `redis-server`; every message is retried with its `cid`
//! until acked, and the receiver on the other node must see exactly the acked messages, in
//! order, once. Helpers shared with the other cluster tests: `support/cluster.rs`.

mod support;

use chat_testkit::RedisServer;
use std::collections::HashSet;
use std::time::Duration;
use support::client::Client;
use support::cluster::{metric, nodes, send_until_acked};
use support::Server;

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
