//! PROTOCOL.md through a real client (`tokio-tungstenite`) against a real standalone server with
//! two cores: rooms and DMs, resume, history and `cid` retries. Connections are placed on
//! different server threads on purpose (the server names its core in the `X-Chat-Core` upgrade
//! header). One connection's replies (order, error codes, drain, slow consumers, HTTP) are
//! `protocol_connection.rs`.

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use support::client::{metric_sum, pair, send_req, seqs, Client};
use support::Server;

/// Reads `n` messages of type `msg`, skipping nothing else.
async fn msgs(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(c.expect("msg").await);
    }
    out
}

#[tokio::test]
async fn room_messages_cross_cores_with_dense_ordered_seq() {
    let server = Server::start(&[]);
    let (mut alice, mut bob) = pair(&server).await;
    assert_eq!(alice.join("lobby").await, 0);
    assert_eq!(bob.join("lobby").await, 0);

    // Pipelined: all ten go out before any reply is read.
    alice
        .send_all((1..=10).map(|i| send_req("lobby", &format!("a{i}"), &format!("hello {i}"))))
        .await;
    let mut acks = Vec::new();
    let mut echoed = Vec::new();
    while acks.len() < 10 || echoed.len() < 10 {
        let v = alice.recv().await;
        match v["type"].as_str().unwrap() {
            "ack" => acks.push(v),
            "msg" => echoed.push(v),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(
        seqs(&acks),
        (1..=10).collect::<Vec<_>>(),
        "acks in request order, seq dense"
    );
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack["cid"], format!("a{}", i + 1));
        assert_eq!(ack["room"], "lobby");
    }
    assert_eq!(
        seqs(&echoed),
        (1..=10).collect::<Vec<_>>(),
        "the sender receives its own messages"
    );

    let got = msgs(&mut bob, 10).await;
    assert_eq!(seqs(&got), (1..=10).collect::<Vec<_>>());
    let ids: HashSet<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 10, "ids are unique");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["room"], "lobby");
        assert_eq!(m["from"], "alice");
        assert_eq!(m["body"], format!("hello {}", i + 1));
        assert_eq!(m["cid"], format!("a{}", i + 1));
        assert_eq!(
            m["id"], acks[i]["id"],
            "the ack names the delivered message"
        );
        let ts = m["ts"].as_u64().unwrap();
        assert!(
            ts <= now_ms && now_ms - ts < 60_000,
            "ts is the accept time in ms: {ts}"
        );
    }

    bob.send(send_req("lobby", "b1", "hi alice")).await;
    let (ack, _) = bob.until("ack").await;
    assert_eq!(ack["seq"], 11);
    let m = alice.expect("msg").await;
    assert_eq!(
        (m["seq"].as_u64(), m["from"].as_str()),
        (Some(11), Some("bob"))
    );
    assert_eq!(
        bob.join("lobby").await,
        11,
        "joining again reports the latest seq"
    );
}

#[tokio::test]
async fn direct_messages_reach_every_connection_of_both_users() {
    let server = Server::start(&[]);
    let (mut alice, mut bob) = pair(&server).await;
    let mut alice2 =
        Client::connect_on_other_core(&server.ws_url("alice"), "alice", alice.core).await;
    let mut carol = Client::connect(&server.ws_url("carol"), "carol").await;

    alice
        .send(json!({"type":"dm","to":"bob","cid":"d1","body":"psst"}))
        .await;
    let (ack, _) = alice.until("ack").await;
    assert_eq!(ack["room"], "dm:alice:bob");
    assert_eq!(ack["seq"], 1);
    for c in [&mut bob, &mut alice2] {
        let m = c.expect("msg").await;
        assert_eq!(m["room"], "dm:alice:bob");
        assert_eq!(m["body"], "psst");
        assert_eq!(m["from"], "alice");
        assert_eq!(m["seq"], 1);
    }
    // bob answers from the other side: same room, next seq; he needs no join.
    bob.send(json!({"type":"dm","to":"alice","cid":"d2","body":"hey"}))
        .await;
    let (ack, _) = bob.until("ack").await;
    assert_eq!(
        (ack["room"].as_str(), ack["seq"].as_u64()),
        (Some("dm:alice:bob"), Some(2))
    );
    assert_eq!(alice2.expect("msg").await["seq"], 2);
    // `send` to the DM room works for its users too.
    bob.send(send_req("dm:alice:bob", "d3", "via send")).await;
    let (ack, _) = bob.until("ack").await;
    assert_eq!(ack["seq"], 3);

    // Privacy: carol can neither read, join, resume nor send into it.
    for req in [
        json!({"type":"history","room":"dm:alice:bob"}),
        json!({"type":"join","room":"dm:alice:bob"}),
        json!({"type":"resume","room":"dm:alice:bob","after":0}),
        json!({"type":"send","room":"dm:alice:bob","cid":"x","body":"hi"}),
        json!({"type":"join","room":"dm:nonsense"}),
    ] {
        carol.send(req.clone()).await;
        let e = carol.expect("error").await;
        assert_eq!(e["code"], "forbidden", "{req}");
    }
    assert!(
        carol
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "carol saw no DM"
    );

    // bob reads the conversation.
    bob.send(json!({"type":"history","room":"dm:alice:bob"}))
        .await;
    let (h, _) = bob.until("history").await;
    assert_eq!(seqs(h["messages"].as_array().unwrap()), vec![1, 2, 3]);

    alice
        .send(json!({"type":"dm","to":"alice","cid":"self","body":"me"}))
        .await;
    let (e, _) = alice.until("error").await;
    assert_eq!(
        (e["code"].as_str(), e["cid"].as_str()),
        (Some("bad_request"), Some("self"))
    );
}

#[tokio::test]
async fn resume_returns_exactly_the_missed_messages() {
    let server = Server::start(&[]);
    let (mut alice, mut bob) = pair(&server).await;
    alice.join("r").await;
    bob.join("r").await;
    alice
        .send_all((1..=3).map(|i| send_req("r", &format!("c{i}"), "x")))
        .await;
    assert_eq!(seqs(&msgs(&mut bob, 3).await), vec![1, 2, 3]);
    bob.close().await;

    alice
        .send_all((4..=8).map(|i| send_req("r", &format!("c{i}"), "x")))
        .await;
    for _ in 0..5 {
        alice.until("ack").await;
    }
    let mut bob = Client::connect_on_other_core(&server.ws_url("bob"), "bob", alice.core).await;
    bob.send(json!({"type":"resume","room":"r","after":3}))
        .await;
    let (resumed, missed) = bob.until("resumed").await;
    assert_eq!(
        seqs(&missed),
        vec![4, 5, 6, 7, 8],
        "exactly the missed messages, in order"
    );
    assert_eq!(resumed["seq"], 8);
    assert_eq!(resumed["complete"], true);
    assert_eq!(resumed["room"], "r");

    // Live messages continue right after, without a duplicate.
    alice.send(send_req("r", "c9", "x")).await;
    assert_eq!(bob.expect("msg").await["seq"], 9);
    assert!(bob.recv_within(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn resume_during_traffic_has_no_gap_and_no_duplicate() {
    let server = Server::start(&[]);
    let (mut alice, _) = pair(&server).await;
    alice.join("busy").await;
    let total = 400u64;
    let url = server.ws_url("bob");
    let sender = tokio::spawn(async move {
        for start in (1..=total).step_by(20) {
            let batch: Vec<Value> = (start..start + 20)
                .map(|i| send_req("busy", &format!("c{i}"), "x"))
                .collect();
            alice.send_all(batch).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        alice
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut bob = Client::connect(&url, "bob").await;
    bob.send(json!({"type":"resume","room":"busy","after":0}))
        .await;
    let mut seen = Vec::new();
    let mut resumed = None;
    while seen.len() < total as usize {
        let v = bob.recv().await;
        match v["type"].as_str().unwrap() {
            "msg" => seen.push(v["seq"].as_u64().unwrap()),
            "resumed" => resumed = Some(v),
            other => panic!("{other}"),
        }
    }
    sender.await.unwrap();
    let resumed = resumed.expect("resumed arrived");
    assert_eq!(resumed["complete"], true);
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "every seq once, in order, across the resume boundary"
    );
}

#[tokio::test]
async fn history_pages_backwards_without_gaps() {
    let server = Server::start(&[]);
    let (mut alice, mut bob) = pair(&server).await;
    alice.join("h").await;
    alice
        .send_all((1..=120).map(|i| send_req("h", &format!("c{i}"), &format!("m{i}"))))
        .await;
    let mut acks = 0;
    while acks < 120 {
        if alice.recv().await["type"] == "ack" {
            acks += 1;
        }
    }
    // bob reads without joining.
    let page = |before: Option<u64>, limit: Option<u64>| {
        let mut req = json!({"type":"history","room":"h"});
        if let Some(b) = before {
            req["before"] = b.into();
        }
        if let Some(l) = limit {
            req["limit"] = l.into();
        }
        req
    };
    bob.send(page(None, None)).await;
    let h = bob.expect("history").await;
    assert_eq!(h["room"], "h");
    let first = h["messages"].as_array().unwrap();
    assert_eq!(
        seqs(first),
        (71..=120).collect::<Vec<_>>(),
        "default limit 50, newest page"
    );
    assert_eq!(first[0]["body"], "m71");
    bob.send(page(Some(71), Some(100))).await;
    assert_eq!(
        seqs(bob.expect("history").await["messages"].as_array().unwrap()),
        (1..=70).collect::<Vec<_>>()
    );
    bob.send(page(Some(21), Some(10))).await;
    assert_eq!(
        seqs(bob.expect("history").await["messages"].as_array().unwrap()),
        (11..=20).collect::<Vec<_>>()
    );
    bob.send(page(Some(1), None)).await;
    assert_eq!(bob.expect("history").await["messages"], json!([]));
    bob.send(json!({"type":"history","room":"never-used"}))
        .await;
    assert_eq!(bob.expect("history").await["messages"], json!([]));
    for bad in [page(None, Some(0)), page(None, Some(101))] {
        bob.send(bad).await;
        assert_eq!(bob.expect("error").await["code"], "bad_request");
    }
}

#[tokio::test]
async fn resume_past_the_kept_history_says_incomplete() {
    let server = Server::start(&["--history-len", "5"]);
    let (mut alice, mut bob) = pair(&server).await;
    alice.join("small").await;
    alice
        .send_all((1..=10).map(|i| send_req("small", &format!("c{i}"), "x")))
        .await;
    let mut acks = 0;
    while acks < 10 {
        if alice.recv().await["type"] == "ack" {
            acks += 1;
        }
    }
    bob.send(json!({"type":"resume","room":"small","after":2}))
        .await;
    let (resumed, sent) = bob.until("resumed").await;
    assert_eq!(seqs(&sent), vec![6, 7, 8, 9, 10], "what is still held");
    assert_eq!(
        resumed["complete"], false,
        "3, 4, 5 are gone and the reply says so"
    );
    bob.send(json!({"type":"resume","room":"small","after":6}))
        .await;
    let (resumed, sent) = bob.until("resumed").await;
    assert_eq!(seqs(&sent), vec![7, 8, 9, 10]);
    assert_eq!(resumed["complete"], true);
}

#[tokio::test]
async fn a_retried_cid_is_the_same_message() {
    let server = Server::start(&[]);
    let (mut alice, mut bob) = pair(&server).await;
    alice.join("d").await;
    bob.join("d").await;
    alice
        .send_all([
            send_req("d", "once", "hello"),
            send_req("d", "once", "hello again"),
            send_req("d", "other", "x"),
        ])
        .await;
    let mut acks = Vec::new();
    while acks.len() < 3 {
        let v = alice.recv().await;
        if v["type"] == "ack" {
            acks.push(v);
        }
    }
    assert_eq!(
        (
            acks[0]["seq"].as_u64(),
            acks[1]["seq"].as_u64(),
            acks[2]["seq"].as_u64()
        ),
        (Some(1), Some(1), Some(2))
    );
    assert_eq!(acks[0]["id"], acks[1]["id"]);
    let got = msgs(&mut bob, 2).await;
    assert_eq!(seqs(&got), vec![1, 2], "delivered once");
    assert_eq!(got[0]["body"], "hello", "the first body stands");
    // A retry from another connection of the same user, on another core, is the same message too.
    let mut alice2 =
        Client::connect_on_other_core(&server.ws_url("alice"), "alice", alice.core).await;
    alice2.join("d").await;
    alice2.send(send_req("d", "once", "hello")).await;
    let ack = alice2.expect("ack").await;
    assert_eq!((ack["seq"].as_u64(), &ack["id"]), (Some(1), &acks[0]["id"]));
    assert!(
        bob.recv_within(Duration::from_millis(300)).await.is_none(),
        "no second delivery"
    );
    // Two (room, from, cid) pairs remembered, whichever core owns the room; none forgotten.
    assert_eq!(metric_sum(server.addr, "chat_dedupe_pairs").await, 2);
    assert_eq!(
        metric_sum(server.addr, "chat_dedupe_evicted_early_total").await,
        0
    );
}
