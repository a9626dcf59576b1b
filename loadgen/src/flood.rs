//! Closed-loop flood: each connection keeps `window` sends in flight and sends the next as soon
//! as an ack returns. The result is the node's accepted (acked) messages per second, not a
//! latency figure: a closed loop hides queueing delay by design.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct FloodArgs {
    /// WebSocket base URLs (`ws://host:port`), connections spread round-robin.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080")]
    url: Vec<String>,
    /// Sending connections.
    #[arg(long, default_value_t = 20)]
    conns: usize,
    /// Rooms the connections send to (connection i uses room i % rooms).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Unacknowledged sends per connection.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 100)]
    body: usize,
    /// Seconds to measure (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

pub async fn run(args: FloodArgs) {
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let run_id = std::process::id();
    let stop = Instant::now() + Duration::from_secs(args.duration + 1);
    let body = "x".repeat(args.body);
    let mut tasks = Vec::new();
    for i in 0..args.conns {
        let url = format!("{}/ws?user=flood{run_id}-{i}", args.url[i % args.url.len()]);
        let room = format!("flood-{run_id}-{}", i % args.rooms);
        let (acked, errors, body, window) =
            (acked.clone(), errors.clone(), body.clone(), args.window);
        tasks.push(tokio::spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .expect("connect");
            let (mut tx, mut rx) = ws.split();
            tx.send(Message::text(format!(
                r#"{{"type":"join","room":"{room}"}}"#
            )))
            .await
            .unwrap();
            let mut next = 0u64;
            let send = |n: &mut u64| {
                *n += 1;
                Message::text(format!(
                    r#"{{"type":"send","room":"{room}","cid":"{n}","body":"{body}"}}"#
                ))
            };
            for _ in 0..window {
                tx.feed(send(&mut next)).await.unwrap();
            }
            tx.flush().await.unwrap();
            while Instant::now() < stop {
                let Ok(Some(Ok(Message::Text(t)))) =
                    tokio::time::timeout(Duration::from_secs(5), rx.next()).await
                else {
                    continue;
                };
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                match v["type"].as_str() {
                    Some("ack") => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        tx.send(send(&mut next)).await.unwrap();
                    }
                    Some("error") => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tx.send(send(&mut next)).await.unwrap();
                    }
                    _ => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_count = acked.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let n = acked.load(Ordering::Relaxed) - start_count;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "flood: {} connections, window {}, {} rooms, {} B bodies: {:.0} acked msgs/s over {:.1} s ({} errors)",
        args.conns,
        args.window,
        args.rooms,
        args.body,
        n as f64 / secs,
        secs,
        errors.load(Ordering::Relaxed)
    );
    for t in tasks {
        t.abort();
    }
}
