//! PROTOCOL.md through a real client (`tokio-tungstenite`) against a real standalone server with
//! two cores, one connection's side: replies in request order, 1000 pipelined sends, every
//! error code, the SIGTERM drain, slow-consumer close, and the HTTP endpoints with metrics.
//! Rooms, DMs, resume and history are `protocol.rs`.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::client::{http_get, metric_sum, pair, send_req, Client};
use support::Server;

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
