//! The server publish API (`POST /api/publish`, `GET /api/history`, PROTOCOL.md "Transport
//! additions (v1.1)") against a real standalone server: the key, the refusals and their status
//! codes, delivery to WebSocket members as a `msg`, dedupe, the rate limit, drain, and history.
//! Durability (a 200 is a row in PostgreSQL, through Kafka and the persister) is
//! `api_durability.rs`.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::client::{Client, TIMEOUT};
use support::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "test-api-key";

/// One HTTP request; the status, the head and the body as JSON (`Null` when it is not JSON).
async fn request(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &[u8],
) -> (u16, String, Value) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
    if let Some(key) = key {
        head += &format!("Authorization: Bearer {key}\r\n");
    }
    if method == "POST" {
        head += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    head += "\r\n";
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // A refused body may be answered before it is all sent: the answer still arrives.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head[9..12].parse().unwrap();
    (
        status,
        head.to_owned(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

async fn publish(server: &Server, body: Value) -> (u16, Value) {
    let (status, _, v) = request(
        server,
        "POST",
        "/api/publish",
        Some(KEY),
        body.to_string().as_bytes(),
    )
    .await;
    (status, v)
}

fn message(room: &str, from: &str, cid: &str, body: &str) -> Value {
    json!({"room": room, "from": from, "cid": cid, "body": body})
}

#[tokio::test]
async fn without_an_api_key_the_api_is_off() {
    let server = Server::start(&[]);
    let body = message("r", "bot", "c1", "hi").to_string();
    let (status, _, v) = request(&server, "POST", "/api/publish", Some(KEY), body.as_bytes()).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (status, _, _) = request(&server, "GET", "/api/history?room=r", Some(KEY), b"").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_key_is_required_and_checked() {
    let server = Server::start(&["--api-key", KEY]);
    let body = message("r", "bot", "c1", "hi").to_string();
    for key in [
        None,
        Some("wrong"),
        Some("test-api-ke"),
        Some("test-api-key2"),
    ] {
        let (status, head, v) =
            request(&server, "POST", "/api/publish", key, body.as_bytes()).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (401, Some("unauthorized")),
            "{key:?}"
        );
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        let (status, _, _) = request(&server, "GET", "/api/history?room=r", key, b"").await;
        assert_eq!(status, 401, "history with {key:?}");
    }
    // Nothing was published by the refused requests.
    let (status, _, h) = request(&server, "GET", "/api/history?room=r", Some(KEY), b"").await;
    assert_eq!(status, 200);
    assert_eq!(h["messages"], json!([]));
}

#[tokio::test]
async fn bad_requests_get_their_status_and_code() {
    let server = Server::start(&["--api-key", KEY]);
    let (status, head, v) = request(&server, "GET", "/api/publish", Some(KEY), b"").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert!(head.contains("Allow: POST"), "{head}");
    let (status, _, _) = request(&server, "POST", "/api/history", Some(KEY), b"{}").await;
    assert_eq!(status, 405);
    let (status, _, _) = request(&server, "GET", "/api/nothing", Some(KEY), b"").await;
    assert_eq!(status, 404);

    let cases: Vec<(&[u8], &str)> = vec![
        (b"{not json", "invalid JSON"),
        (b"[1,2]", "JSON object"),
        (br#"{"room":"r","cid":"c","body":"b"}"#, "`from`"),
        (
            br#"{"room":"r","from":"bad user!","cid":"c","body":"b"}"#,
            "`from`",
        ),
        (br#"{"room":"r","from":7,"cid":"c","body":"b"}"#, "`from`"),
        (br#"{"from":"bot","cid":"c","body":"b"}"#, "`room`"),
        (
            br#"{"room":"two words","from":"bot","cid":"c","body":"b"}"#,
            "`room`",
        ),
        (br#"{"room":"r","from":"bot","body":"b"}"#, "`cid`"),
        (br#"{"room":"r","from":"bot","cid":"c"}"#, "`body`"),
        (
            br#"{"room":"r","from":"bot","cid":"c","body":"nul \u0000"}"#,
            "U+0000",
        ),
    ];
    for (body, says) in cases {
        let (status, _, v) = request(&server, "POST", "/api/publish", Some(KEY), body).await;
        let text = String::from_utf8_lossy(body);
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("bad_request")),
            "{text}: {v}"
        );
        assert!(v["message"].as_str().unwrap().contains(says), "{text}: {v}");
    }
    // Someone else's direct-message room.
    let (status, v) = publish(&server, message("dm:alice:bob", "carol", "c", "hi")).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    // Bad history parameters.
    for query in [
        "",
        "?room=r&limit=0",
        "?room=r&limit=101",
        "?room=r&before=x",
    ] {
        let path = format!("/api/history{query}");
        let (status, _, v) = request(&server, "GET", &path, Some(KEY), b"").await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("bad_request")),
            "{query}"
        );
    }
}

#[tokio::test]
async fn oversized_requests_are_413() {
    let server = Server::start(&["--api-key", KEY]);
    // A request body over --max-frame (64 KiB), refused before it is read.
    let huge = message("r", "bot", "c1", &"x".repeat(70_000)).to_string();
    let (status, _, v) = request(&server, "POST", "/api/publish", Some(KEY), huge.as_bytes()).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (413, Some("too_large")),
        "{v}"
    );
    // A `body` over --max-body (16 KiB) in a request under the frame limit.
    let (status, v) = publish(&server, message("r", "bot", "c2", &"x".repeat(20_000))).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (413, Some("too_large")),
        "{v}"
    );
    assert_eq!(v["cid"], "c2");
}

#[tokio::test]
async fn a_published_message_reaches_members_once_as_a_msg() {
    let server = Server::start(&["--api-key", KEY]);
    let mut bob = Client::connect(&server.ws_url("bob"), "bob").await;
    bob.join("lobby").await;
    let (status, ack) = publish(&server, message("lobby", "bot", "c1", "hello from the API")).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(
        (ack["room"].as_str(), ack["seq"].as_u64()),
        (Some("lobby"), Some(1))
    );
    let id = ack["id"].as_str().expect("an id").to_owned();
    let m = bob.expect("msg").await;
    assert_eq!(m["room"], "lobby");
    assert_eq!(m["seq"], 1);
    assert_eq!(m["id"], id);
    assert_eq!(m["from"], "bot");
    assert_eq!(m["cid"], "c1");
    assert_eq!(m["body"], "hello from the API");

    // The same (from, cid) again: the same message, not delivered again.
    let (status, again) =
        publish(&server, message("lobby", "bot", "c1", "hello from the API")).await;
    assert_eq!(status, 200);
    assert_eq!(again, ack, "a retry is answered with the first message");
    // A WebSocket send continues the same seq stream.
    bob.send(support::client::send_req("lobby", "b1", "hi bot"))
        .await;
    let (ack2, before) = bob.until("ack").await;
    assert_eq!(ack2["seq"], 2, "the retry took no seq");
    assert!(
        before.iter().all(|v| v["seq"] != 1),
        "no second delivery: {before:?}"
    );
    let (status, third) = publish(&server, message("lobby", "bot", "c2", "third")).await;
    assert_eq!((status, third["seq"].as_u64()), (200, Some(3)));
    let (m3, _) = bob.until("msg").await;
    let m3 = if m3["seq"] == 2 {
        bob.expect("msg").await
    } else {
        m3
    };
    assert_eq!(
        (m3["seq"].as_u64(), m3["body"].as_str()),
        (Some(3), Some("third"))
    );
    assert!(bob.recv_within(Duration::from_millis(300)).await.is_none());

    // A direct message from one of the room's users reaches the other without a join.
    let (status, dm) = publish(&server, message("dm:alice:bob", "alice", "d1", "psst")).await;
    assert_eq!(status, 200, "{dm}");
    let m = bob.expect("msg").await;
    assert_eq!(
        (m["room"].as_str(), m["from"].as_str()),
        (Some("dm:alice:bob"), Some("alice"))
    );

    // History answers as the `history` op does, what was published included.
    let (status, _, h) = request(
        &server,
        "GET",
        "/api/history?room=lobby&limit=2",
        Some(KEY),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        (h["type"].as_str(), h["room"].as_str()),
        (Some("history"), Some("lobby"))
    );
    let msgs = h["messages"].as_array().unwrap();
    let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![2, 3]);
    let (_, _, older) = request(
        &server,
        "GET",
        "/api/history?room=lobby&before=2",
        Some(KEY),
        b"",
    )
    .await;
    assert_eq!(older["messages"][0]["id"], id);
    assert_eq!(older["messages"][0]["body"], "hello from the API");
    assert_eq!(older["messages"].as_array().unwrap().len(), 1);
    // Direct-message rooms are readable with the key.
    let path = "/api/history?room=dm%3Aalice%3Abob";
    let (status, _, h) = request(&server, "GET", path, Some(KEY), b"").await;
    assert_eq!(
        (status, h["messages"][0]["body"].as_str()),
        (200, Some("psst")),
        "{h}"
    );
}

/// Writes a publish head, then its body up to each of `ends` in turn, with a pause before each
/// part; the answer.
async fn publish_in_parts(server: &Server, body: &[u8], ends: &[usize]) -> String {
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut start = 0;
    for &end in ends {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(&body[start..end]).await.unwrap();
        start = end;
    }
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read the answer");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_body_that_comes_after_the_head_in_parts_is_read_whole_or_times_out() {
    let server = Server::start(&["--api-key", KEY, "--head-timeout-ms", "1000"]);
    let body = message("r", "bot", "c1", "sent in three parts").to_string();
    let n = body.len();
    let answer = publish_in_parts(&server, body.as_bytes(), &[10, n / 2, n]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""seq":1"#), "{answer}");
    // Half a body, then nothing: 408 once --head-timeout-ms has passed.
    let body = message("r", "bot", "c2", "never finished").to_string();
    let answer = publish_in_parts(&server, body.as_bytes(), &[body.len() / 2]).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn over_the_rate_is_429() {
    // One core: the API's buckets are per user and core.
    let server = Server::start_with_args(&[
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--api-key",
        KEY,
        "--rate-limit",
        "0.5",
        "--rate-burst",
        "3",
    ]);
    for i in 1..=3 {
        let (status, v) = publish(&server, message("r", "bot", &format!("c{i}"), "x")).await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, v) = publish(&server, message("r", "bot", "c4", "x")).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    assert_eq!(v["cid"], "c4");
    // Another user has a bucket of its own.
    let (status, _) = publish(&server, message("r", "other", "c1", "x")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn draining_is_503() {
    let mut server = Server::start(&["--api-key", KEY, "--drain-grace", "5"]);
    let pid = server.child.id();
    chat_testkit::send_signal(pid, "TERM");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let (health, _) = support::client::http_get(server.addr, "/healthz").await;
        if health == 503 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, v) = publish(&server, message("r", "bot", "c1", "x")).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );
    let _ = server.child.kill();
}
