//! Memory bounds that hold against any client (standalone): `--history-memory` caps the recent
//! history of all rooms together under a flood of large messages, and rooms a connection
//! touched are given back when it closes. The server's RSS is read from /proc and printed, so
//! a run of this file gives the figures of the README's "What bounds each resource" table
//! (`CHAT_TEST_ROOMS=1000000` for the million-room figure).

mod support;

use serde_json::json;
use std::time::Duration;
use support::client::{http_get, send_req, Client};
use support::Server;

/// The server's resident set, bytes.
fn rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// The sum over cores of a metric without other labels.
async fn metric(server: &Server, name: &str) -> f64 {
    let (_, text) = http_get(server.addr, "/metrics").await;
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn a_flood_of_large_messages_stays_within_history_memory() {
    // 6,000 messages of 15 KB (about 92 MB of frames) in 30 rooms that would each keep all of
    // theirs (--history-len 100000), against a budget of 16 MiB.
    let server = Server::start(&[
        "--history-memory-mb",
        "16",
        "--history-len",
        "100000",
        "--rate-limit",
        "0",
        "--max-body",
        "16384",
    ]);
    let mut c = Client::connect(&server.ws_url("flood"), "flood").await;
    const ROOMS: usize = 30;
    for r in 0..ROOMS {
        c.join(&format!("f{r}")).await;
    }
    let before = rss(&server);
    let body = "y".repeat(15_000);
    let mut acked = 0;
    for chunk in 0..60 {
        c.send_all((0..100).map(|i| {
            let n = chunk * 100 + i;
            send_req(&format!("f{}", n % ROOMS), &format!("c{n}"), &body)
        }))
        .await;
        while acked < (chunk + 1) * 100 {
            if c.recv().await["type"] == "ack" {
                acked += 1;
            }
        }
    }
    let after = rss(&server);
    let held = metric(&server, "chat_history_bytes").await;
    let evicted = metric(&server, "chat_history_evicted_total").await;
    println!(
        "flood of 6000 x 15 KB with --history-memory-mb 16: RSS {:.1} MiB before, {:.1} MiB after \
         (+{:.1} MiB); history holds {:.1} MiB, {evicted} messages evicted",
        before as f64 / MIB as f64,
        after as f64 / MIB as f64,
        (after.saturating_sub(before)) as f64 / MIB as f64,
        held / MIB as f64
    );
    assert!(
        held <= (16 * MIB) as f64,
        "history within its budget: {held}"
    );
    assert!(evicted >= 4000.0, "the oldest were evicted: {evicted}");
    assert!(
        after.saturating_sub(before) < 48 * MIB,
        "RSS grew {} MiB for a 16 MiB budget (the frames sent were ~92 MB)",
        (after - before) / MIB
    );

    // Every room keeps its seq; a resume from the start says what is gone.
    let mut r = Client::connect(&server.ws_url("reader"), "reader").await;
    r.send(json!({"type":"resume","room":"f0","after":0})).await;
    let (resumed, msgs) = r.until("resumed").await;
    assert_eq!(resumed["seq"], 200, "{resumed}");
    assert_eq!(resumed["complete"], false, "{resumed}");
    let seqs: Vec<u64> = msgs.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert!(!seqs.is_empty() && seqs.len() < 200, "{} held", seqs.len());
    assert_eq!(*seqs.last().unwrap(), 200, "the newest are the ones kept");
    // And the room goes on from there.
    r.send(send_req("f0", "next", "after the flood")).await;
    let (ack, _) = r.until("ack").await;
    assert_eq!(ack["seq"], 201);
}

#[tokio::test]
async fn rooms_a_connection_joined_are_given_back_when_it_closes() {
    let n: usize = std::env::var("CHAT_TEST_ROOMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let limit = n.to_string();
    let server = Server::start(&[
        "--room-rate-limit",
        "0",
        "--max-rooms-per-conn",
        &limit,
        "--max-inflight",
        "1024",
    ]);
    let mut c = Client::connect(&server.ws_url("toucher"), "toucher").await;
    let before = rss(&server);
    for chunk in (0..n).step_by(1000) {
        let end = (chunk + 1000).min(n);
        c.send_all((chunk..end).map(|i| json!({"type":"join","room":format!("t{i}")})))
            .await;
        let mut joined = chunk;
        while joined < end {
            if c.recv().await["type"] == "joined" {
                joined += 1;
            }
        }
    }
    let held = rss(&server);
    assert_eq!(metric(&server, "chat_rooms").await, n as f64);
    c.close().await;
    let mut rooms = f64::NAN;
    for _ in 0..100 {
        rooms = metric(&server, "chat_rooms").await;
        if rooms == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rooms, 0.0, "every room it touched is freed");
    // The cores give the memory back to the system within a few housekeeping rounds.
    let grown = held.saturating_sub(before);
    let mut after = rss(&server);
    for _ in 0..50 {
        if after < before + grown / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss(&server);
    }
    println!(
        "{n} rooms joined by one connection: RSS {:.1} MiB before, {:.1} MiB while joined \
         ({:.0} B per room), {:.1} MiB after it closed",
        before as f64 / MIB as f64,
        held as f64 / MIB as f64,
        held.saturating_sub(before) as f64 / n as f64,
        after as f64 / MIB as f64
    );
    assert!(
        after < before + grown / 4,
        "RSS after the close: {} MiB (before {} MiB, joined {} MiB)",
        after / MIB,
        before / MIB,
        held / MIB
    );
}
