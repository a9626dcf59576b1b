//! `--redis-replicas` on a real Redis Cluster of 3 masters + 3 replicas: nothing of a write is
//! shown before its replica has it, and a failover loses neither a seq nor a member's live
//! stream (server/src/bus/replication.rs, server/src/bus/cluster/topology.rs).

mod support;

use chat_testkit::process::send_signal;
use chat_testkit::RedisCluster;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::client::{send_req, Client};
use support::Server;

const ROOM: &str = "failover-room";

/// Sends `cid` until it is acked, retrying after `unavailable` like a client would.
async fn send_until_acked(c: &mut Client, cid: &str, unavailable: &mut u32) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        c.send(send_req(ROOM, cid, &format!("body of {cid}"))).await;
        loop {
            let v = c.recv().await;
            match v["type"].as_str() {
                Some("ack") if v["cid"] == cid => return v,
                Some("error") if v["code"] == "unavailable" && v["cid"] == cid => {
                    *unavailable += 1;
                    break;
                }
                Some("msg") => {}
                other => panic!("unexpected {other:?}: {v}"),
            }
        }
        assert!(Instant::now() < deadline, "{cid} never acked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The next `msg` of the room within `wait`, skipping everything else.
async fn next_msg(c: &mut Client, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match c.recv_within(left).await {
            Some(v) if v["type"] == "msg" => return Some(v),
            Some(_) => continue,
            None => return None,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_shown_before_the_replica_has_it_and_a_failover_loses_nothing() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start_with_replicas(1, 1500))
        .await
        .unwrap();
    let urls = cluster.urls().join(",");
    let args = [
        "--redis",
        &urls,
        "--redis-replicas",
        "1",
        "--redis-wait-ms",
        "200",
    ];
    let nodes: Vec<Server> = (0..2).map(|_| Server::start(&args)).collect();
    let mut alice = Client::connect(&nodes[0].ws_url("alice"), "alice").await;
    let mut bob = Client::connect(&nodes[1].ws_url("bob"), "bob").await;
    alice.join(ROOM).await;
    bob.join(ROOM).await;
    let mut unavailable = 0;

    for i in 1..=20 {
        let ack = send_until_acked(&mut alice, &format!("a{i}"), &mut unavailable).await;
        assert_eq!(ack["seq"], i);
    }
    for i in 1..=20 {
        assert_eq!(
            next_msg(&mut bob, Duration::from_secs(5)).await.unwrap()["seq"],
            i
        );
    }

    // The room's replica stops reading: a send is neither acked nor shown to anyone.
    let slot = chat_server::bus::redis::key_slot(&chat_server::bus::redis::seq_key(ROOM));
    let master = cluster.master_of(slot).expect("the room's master");
    let replica = cluster.replicas_of(master)[0];
    let replica_pid = cluster.nodes()[replica].pid().unwrap();
    send_signal(replica_pid, "STOP");
    alice.send(send_req(ROOM, "held", "held back")).await;
    // The node keeps retrying for its whole retry budget (10 s) before `unavailable`: wait
    // longer than that (the client's default 10 s is a race with it).
    let answer = loop {
        let v = alice
            .recv_within(Duration::from_secs(20))
            .await
            .expect("an answer to the held send");
        if v["type"] != "msg" {
            break v;
        }
        // Her own earlier messages may still be arriving; the held one must not.
        assert_ne!(v["cid"], "held", "shown before its replica had it: {v}");
    };
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{answer}"
    );
    assert!(
        next_msg(&mut bob, Duration::from_millis(300))
            .await
            .is_none(),
        "bob saw an unreplicated message"
    );
    send_signal(replica_pid, "CONT");
    let ack = send_until_acked(&mut alice, "held", &mut unavailable).await;
    assert_eq!(ack["seq"], 21, "the retry keeps its seq");
    assert_eq!(
        next_msg(&mut bob, Duration::from_secs(5)).await.unwrap()["cid"],
        "held"
    );

    // The master dies; its replica takes over. Nobody reconnects.
    cluster.node(master).kill();
    let started = Instant::now();
    while cluster.replication_field(replica, "role").as_deref() != Some("master") {
        assert!(started.elapsed() < Duration::from_secs(30), "no failover");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("promoted after {:?}", started.elapsed());
    // The old master comes back (empty) as the new master's replica: WAIT 1 can succeed again.
    cluster.node(master).start_again();
    for i in 22..=40 {
        let ack = send_until_acked(&mut alice, &format!("a{i}"), &mut unavailable).await;
        assert_eq!(ack["seq"], i, "seqs go on from the promoted replica");
    }
    for i in 22..=40 {
        let v = next_msg(&mut bob, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| {
                panic!("bob (never disconnected) missed seq {i} after the failover")
            });
        assert_eq!(v["seq"], i);
    }
    println!("unavailable answers retried: {unavailable}");
    let metrics = reqwest_metrics(&nodes[1]).await;
    assert!(
        metrics.contains("chat_redis_topology_changes_total 1")
            || metrics
                .lines()
                .any(|l| l.starts_with("chat_redis_topology_changes_total ") && !l.ends_with(" 0")),
        "node 1 saw the slot map change"
    );
}

async fn reqwest_metrics(node: &Server) -> String {
    support::client::http_get(node.addr, "/metrics").await.1
}
