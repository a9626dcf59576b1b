//! Cluster mode: members joining a room on one core must not cost the members on the node's
//! other cores any message.
//!
//! Regression test: a core's first `join`/`resume` of a room used to raise the node's "last
//! seq passed on" for the room to the seq it read from Redis. Messages published just before
//! that read, still on their way through pub/sub, were then dropped as already passed on, and
//! the members on the node's other cores never got them (found by the node-kill and drain
//! drills: an existing member lost ~15 % of a busy room's messages while others joined).

mod support;

use chat_testkit::RedisServer;
use serde_json::json;
use support::client::{send_req, Client};
use support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_on_another_core_do_not_cost_existing_members_a_message() {
    let redis = RedisServer::start();
    let a = Server::start(&["--redis", &redis.url(), "--rate-limit", "0"]);
    let b = Server::start(&["--redis", &redis.url(), "--rate-limit", "0"]);
    let mut member = Client::connect(&a.ws_url("member"), "member").await;
    member.join("busy").await;
    let mut sender = Client::connect(&b.ws_url("sender"), "sender").await;
    sender.join("busy").await;

    // The sender streams 3000 messages from node b; meanwhile 40 users join the room on node
    // a's other core and leave again, each the first member there (so each join reads the
    // room's seq from Redis while messages are in flight to node a).
    const N: usize = 3000;
    let streaming = tokio::spawn(async move {
        for chunk in 0..N / 20 {
            sender
                .send_all((0..20).map(|i| send_req("busy", &format!("c{}", chunk * 20 + i), "x")))
                .await;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let mut acks = 0;
        while acks < N {
            acks += usize::from(sender.recv().await["type"] == "ack");
        }
    });
    let other_core = member.core;
    let url = a.ws_url("joiner");
    let joining = tokio::spawn(async move {
        for _ in 0..40 {
            let mut j = Client::connect_on_other_core(&url, "joiner", other_core).await;
            j.send(json!({"type": "join", "room": "busy"})).await;
            j.until("joined").await;
            j.close().await;
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
    });

    let mut seqs = Vec::with_capacity(N);
    while seqs.len() < N {
        match member.recv_within(std::time::Duration::from_secs(5)).await {
            Some(v) if v["type"] == "msg" => seqs.push(v["seq"].as_u64().unwrap()),
            Some(_) => {}
            None => break,
        }
    }
    streaming.await.unwrap();
    joining.await.unwrap();
    let gaps: Vec<(u64, u64)> = seqs
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(gaps.is_empty(), "the member missed messages: gaps {gaps:?}");
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
}
