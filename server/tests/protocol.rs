//! PROTOCOL.md through a real client (`tokio-tungstenite`) against a real standalone server with
//! two cores: every request type, every error code, and the guarantees on order, dedupe,
//! resume and slow consumers. Connections are placed on different server threads on purpose
//! (the server names its core in the `X-Chat-Core` upgrade header).

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use support::client::{http_get, send_req, Client};
use support::Server;

/// alice and bob on different cores of one server.
async fn pair(server: &Server) -> (Client, Client) {
    let alice = Client::connect(&server.ws_url("alice"), "alice").await;
    let bob = Client::connect_on_other_core(&server.ws_url("bob"), "bob", alice.core).await;
    assert_ne!(alice.core, bob.core);
    (alice, bob)
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

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

#[tokio::test]
async fn requests_are_answered_in_the_order_they_were_sent() {
    let server = Server::start(&[]);
    let mut c = Client::connect(&server.ws_url("ann"), "ann").await;
    c.send_all([
        json!({"type":"join","room":"o"}),
        send_req("o", "1", "a"),
        json!({"type":"history","room":"o"}),
        json!({"type":"leave","room":"o"}),
        send_req("o", "2", "b"),
        json!({"type":"bogus"}),
        json!({"type":"join","room":"o2"}),
    ])
    .await;
    let mut replies = Vec::new();
    while replies.len() < 7 {
        let v = c.recv().await;
        if v["type"] != "msg" {
            replies.push(v);
        }
    }
    let types: Vec<&str> = replies
        .iter()
        .map(|v| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["joined", "ack", "history", "left", "error", "error", "joined"]
    );
    assert_eq!(
        replies[2]["messages"][0]["seq"], 1,
        "history saw the send before it"
    );
    assert_eq!(
        (replies[4]["code"].as_str(), replies[4]["cid"].as_str()),
        (Some("not_joined"), Some("2"))
    );
    assert_eq!(replies[5]["code"], "bad_request");
}

#[tokio::test]
async fn a_thousand_pipelined_sends_are_acked_in_order() {
    let server = Server::start(&[]);
    let mut c = Client::connect(&server.ws_url("fast"), "fast").await;
    c.join("p").await;
    c.send_all((1..=1000).map(|i| send_req("p", &i.to_string(), "x")))
        .await;
    let mut acks = Vec::new();
    while acks.len() < 1000 {
        let v = c.recv().await;
        if v["type"] == "ack" {
            acks.push(v["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(acks, (1..=1000).collect::<Vec<_>>());
}

#[tokio::test]
async fn every_error_code_and_bad_input_keeps_the_connection() {
    let server = Server::start(&["--rate-limit", "1", "--rate-burst", "3"]);
    let mut c = Client::connect(&server.ws_url("eve"), "eve").await;
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (json!("not an object"), "bad_request", None),
        (json!({"type":"fly"}), "bad_request", None),
        (json!({"type":"join"}), "bad_request", None),
        (
            json!({"type":"join","room":"has space"}),
            "bad_request",
            None,
        ),
        (
            json!({"type":"join","room":"x".repeat(129)}),
            "bad_request",
            None,
        ),
        (
            json!({"type":"send","room":"r","cid":"c1","body":"x"}),
            "not_joined",
            Some("c1"),
        ),
        (json!({"type":"leave","room":"r"}), "not_joined", None),
        (json!({"type":"history","room":"dm:a:b"}), "forbidden", None),
        (
            json!({"type":"dm","to":"bob","cid":"big","body":"x".repeat(16 * 1024 + 1)}),
            "too_large",
            Some("big"),
        ),
        (
            json!({"type":"dm","to":"not valid!","cid":"c2","body":"x"}),
            "bad_request",
            Some("c2"),
        ),
    ];
    for (req, code, cid) in cases {
        c.send(req.clone()).await;
        let e = c.expect("error").await;
        assert_eq!(e["code"], code, "{req}");
        assert_eq!(e["cid"].as_str(), cid, "{req}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.send_raw("{\"type\":").await;
    assert_eq!(c.expect("error").await["code"], "bad_request");

    // rate_limited: a burst of 3, then one per second.
    c.join("r").await;
    c.send_all((1..=5).map(|i| send_req("r", &format!("r{i}"), "x")))
        .await;
    let mut codes = Vec::new();
    while codes.len() < 5 {
        let v = c.recv().await;
        match v["type"].as_str().unwrap() {
            "ack" => codes.push("ack".to_string()),
            "error" => codes.push(v["code"].as_str().unwrap().to_string()),
            _ => {}
        }
    }
    assert_eq!(codes, ["ack", "ack", "ack", "rate_limited", "rate_limited"]);
    // After all that, the connection still works.
    assert_eq!(c.join("still-here").await, 0);
}

#[tokio::test]
async fn draining_answers_unavailable_then_closes_with_1001() {
    let mut server = Server::start(&["--drain-grace", "3"]);
    let mut c = Client::connect(&server.ws_url("dora"), "dora").await;
    c.join("r").await;
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    // Health turns 503 while draining.
    let mut status = 0;
    for _ in 0..100 {
        status = http_get(server.addr, "/healthz").await.0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 503);
    c.send(send_req("r", "late", "x")).await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["cid"].as_str()),
        (Some("unavailable"), Some("late"))
    );
    assert_eq!(c.close_code().await, Some(1001));
    let exit = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "exit 0 after draining: {exit:?}");
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_and_the_others_get_everything() {
    let server = Server::start(&["--outbound-limit", "524288", "--rate-limit", "0"]);
    let (mut alice, mut bob) = pair(&server).await;
    let mut slow = Client::connect(&server.ws_url("slow"), "slow").await;
    alice.join("flood").await;
    bob.join("flood").await;
    slow.join("flood").await;
    // slow does not read until the server says it cut slow off; then it finds close 1008
    // after whatever was already in its socket.
    let addr = server.addr;
    let slow_side = tokio::spawn(async move {
        while metric_sum(addr, "chat_slow_consumer_disconnects_total").await == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slow.close_code().await
    });
    // 20 MB go out (4 KiB bodies), far past socket buffers and the 512 KiB queue bound, in
    // bursts of 100 KiB that a reading client absorbs.
    let body = "z".repeat(4096);
    let n = 5000;
    // bob reads as fast as he can; alice never gets more than 3 bursts ahead of him, so only
    // the client that does not read at all overflows.
    let bob_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = bob_count.clone();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < n {
            got.push(bob.expect("msg").await["seq"].as_u64().unwrap());
            counter.store(got.len(), std::sync::atomic::Ordering::Relaxed);
        }
        (bob, got)
    });
    for start in (1..=n).step_by(25) {
        while bob_count.load(std::sync::atomic::Ordering::Relaxed) + 75 < start {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        alice
            .send_all((start..start + 25).map(|i| send_req("flood", &i.to_string(), &body)))
            .await;
        let mut acks = 0;
        while acks < 25 {
            let v = alice.recv().await;
            assert_ne!(v["type"], "error", "{v}");
            acks += (v["type"] == "ack") as usize;
        }
    }
    let (_bob, got) = reader.await.unwrap();
    assert_eq!(
        got,
        (1..=n as u64).collect::<Vec<_>>(),
        "bob got every message in order"
    );
    assert_eq!(slow_side.await.unwrap(), Some(1008));
    assert_eq!(
        metric_sum(addr, "chat_slow_consumer_disconnects_total").await,
        1,
        "only the slow one was cut"
    );
}

/// A per-core series of `/metrics`, summed over the cores.
async fn metric_sum(addr: std::net::SocketAddr, name: &str) -> u64 {
    let (_, metrics) = http_get(addr, "/metrics").await;
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn http_endpoints() {
    let server = Server::start(&[]);
    let (status, body) = http_get(server.addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        body.to_lowercase().contains("<html") || body.to_lowercase().contains("<!doctype html")
    );
    assert_eq!(
        http_get(server.addr, "/healthz").await,
        (200, "ok\n".into())
    );
    assert_eq!(http_get(server.addr, "/nope").await.0, 404);
    assert_eq!(
        http_get(server.addr, "/ws").await.0,
        426,
        "plain GET on the WebSocket endpoint"
    );
    assert_eq!(http_get(server.addr, "/ws?user=bad%20name").await.0, 426);

    let _c = Client::connect(&server.ws_url("m"), "m").await;
    let (status, metrics) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "chat_connections{core=\"0\"}",
        "chat_connections{core=\"1\"}",
        "chat_requests_total",
        "chat_messages_delivered_total",
        "chat_frames_rejected_total",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let open: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("chat_connections{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(open, 1);
}
