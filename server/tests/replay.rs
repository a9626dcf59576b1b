//! Replays paced by the client's reading: a `resume` (or `history`) whose backlog is larger
//! than `--outbound-limit` reaches a client that reads it, whatever its size; only a client
//! that stops reading is cut. Standalone and on a node with Redis.
//! (Before: the whole replay was queued at once and the fast reader was closed with 1008
//! before receiving a single message.)

mod support;

use chat_testkit::RedisServer;
use serde_json::json;
use std::time::{Duration, Instant};
use support::client::{send_req, Client};
use support::Server;

const MESSAGES: usize = 300;
const BODY: usize = 15_000;

/// Sends 300 messages of 15 KB to room `big`, each acked.
async fn fill_big(server: &Server) {
    let body = "x".repeat(BODY);
    let mut sender = Client::connect(&server.ws_url("sender"), "sender").await;
    sender.join("big").await;
    for i in 0..MESSAGES {
        sender.send(send_req("big", &format!("c{i}"), &body)).await;
        sender.until("ack").await;
    }
}

/// Fills room `big` with 300 messages of 15 KB (4.5 MB, over the 1 MB outbound limit), then
/// resumes it from the start and reads `history` of it with a fresh client reading as fast
/// as it can. Returns how long the resume took.
async fn backlog_reaches_a_fast_reader(server: &Server) -> Duration {
    fill_big(server).await;

    let mut reader = Client::connect(&server.ws_url("reader"), "reader").await;
    let started = Instant::now();
    reader
        .send(json!({"type":"resume","room":"big","after":0}))
        .await;
    let mut seqs = Vec::new();
    loop {
        let m = reader.recv().await;
        match m["type"].as_str() {
            Some("msg") => seqs.push(m["seq"].as_u64().unwrap()),
            Some("resumed") => {
                assert_eq!(m["complete"], true, "{m}");
                break;
            }
            _ => panic!("unexpected during the resume: {m}"),
        }
    }
    let took = started.elapsed();
    assert_eq!(
        seqs,
        (1..=MESSAGES as u64).collect::<Vec<_>>(),
        "every message, in order"
    );

    // A history page (100 x 15 KB) larger than the limit, twice in a row: read as fast as it comes.
    for _ in 0..2 {
        reader
            .send(json!({"type":"history","room":"big","limit":100}))
            .await;
        let h = reader.expect("history").await;
        assert_eq!(h["messages"].as_array().unwrap().len(), 100);
    }
    // The connection lives on.
    reader.send(send_req("big", "after", "still here")).await;
    reader.until("ack").await;
    took
}

fn args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec![
        "--history-len",
        "300",
        "--outbound-limit",
        "1048576",
        "--max-body",
        "16384",
        "--rate-limit",
        "0",
    ];
    v.extend_from_slice(extra);
    v
}

#[tokio::test]
async fn a_backlog_larger_than_the_outbound_limit_reaches_a_fast_reader_standalone() {
    let server = Server::start(&args(&[]));
    let took = backlog_reaches_a_fast_reader(&server).await;
    eprintln!("standalone: resumed {MESSAGES} x {BODY} B in {took:?}");
}

#[tokio::test]
async fn a_backlog_larger_than_the_outbound_limit_reaches_a_fast_reader_with_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut a = args(&["--redis"]);
    let url: &'static str = Box::leak(url.into_boxed_str());
    a.push(url);
    let server = Server::start(&a);
    let took = backlog_reaches_a_fast_reader(&server).await;
    eprintln!("with Redis: resumed {MESSAGES} x {BODY} B in {took:?}");
}

/// A client that asks for a large replay and then reads nothing is not served further: it is
/// closed once it stops answering pings, and memory does not grow with its requests.
#[tokio::test]
async fn a_client_that_stops_reading_a_replay_is_cut() {
    let server = Server::start(&args(&["--idle-ping", "1"]));
    fill_big(&server).await;
    // A raw socket: it sends its upgrade and many history requests, then never reads.
    use std::io::Write;
    use support::raw_ws::{encode, upgrade_request, FIN, TEXT, VALID_KEY, VERSION_13};
    let mut raw = std::net::TcpStream::connect(server.addr).unwrap();
    raw.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let upgrade = upgrade_request("/ws?user=stuck", &[VALID_KEY, VERSION_13]);
    raw.write_all(upgrade.as_bytes()).unwrap();
    let request = br#"{"type":"history","room":"big","limit":100}"#;
    // Masked with an all-zero key: the payload goes out as it is.
    let frame = encode(FIN | TEXT, request, Some([0; 4]));
    for _ in 0..50 {
        if raw.write_all(&frame).is_err() {
            break; // the server stopped reading: its receive window is full
        }
    }
    // Closed as idle (no pong read) within a few ping periods.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut closed = false;
    while Instant::now() < deadline {
        let (_, metrics) = support::client::http_get(server.addr, "/metrics").await;
        let open: f64 = metrics
            .lines()
            .filter_map(|l| l.strip_prefix("chat_connections "))
            .filter_map(|v| v.parse::<f64>().ok())
            .sum();
        let open = if open == 0.0 {
            metrics
                .lines()
                .filter(|l| l.starts_with("chat_connections{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        } else {
            open
        };
        if open <= 1.0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(closed, "the client that stopped reading was closed");
    drop(raw);
}
