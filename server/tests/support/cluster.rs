//! Helpers of the cluster-mode tests (`cluster.rs`, `cluster_redis_faults.rs`,
//! `cluster_kafka.rs`): nodes sharing one Redis, pipelined sends, sends retried until acked,
//! and counters read from `/metrics`.

use super::client::{http_get, send_req, Client};
use super::Server;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Nodes of one cluster, all pointed at the same Redis (and Kafka).
pub fn nodes(n: usize, redis: &str, extra: &[&str]) -> Vec<Server> {
    (0..n)
        .map(|_| {
            let mut args = vec!["--redis", redis];
            args.extend_from_slice(extra);
            Server::start(&args)
        })
        .collect()
}

/// Sends `n` messages pipelined and returns the acks in order (ignoring deliveries).
pub async fn send_many(c: &mut Client, room: &str, prefix: &str, n: usize) -> Vec<Value> {
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
pub async fn send_until_acked(c: &mut Client, room: &str, cid: &str) -> Value {
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
pub async fn metric(server: &Server, name: &str) -> u64 {
    let (_, text) = http_get(server.addr, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}
