//! What the persister shows about itself: `GET /metrics` (the counters and histograms of
//! [`crate::metrics`], the gauges of the owned partitions of [`crate::partitions`], the
//! process's own from `/proc`), `GET /healthz`, and the periodic one-line progress log. It only
//! reads: the others write to the metrics and the partitions, and this shows them.

use crate::metrics::Metrics;
use crate::partitions::Partitions;
use chat_process_metrics::ProcessStats;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The whole exposition text.
pub fn render(metrics: &Metrics, partitions: &Partitions) -> String {
    let mut out = String::with_capacity(4096);
    metrics.render(&mut out);
    gauges(&mut out, partitions);
    ProcessStats::read().render(&mut out);
    out
}

/// The partitions this persister owns, and per partition its lag, stored offset and high
/// watermark.
fn gauges(out: &mut String, partitions: &Partitions) {
    let snapshot = partitions.snapshot();
    let _ = writeln!(
        out,
        "# HELP chat_persister_assigned_partitions Partitions this persister owns.\n\
         # TYPE chat_persister_assigned_partitions gauge\n\
         chat_persister_assigned_partitions {}",
        snapshot.len()
    );
    let topic = partitions.topic();
    for (name, help, pick) in [
        (
            "chat_persister_consumer_lag",
            "Records in Kafka not yet in PostgreSQL: high watermark minus stored offset.",
            0,
        ),
        (
            "chat_persister_stored_offset",
            "Next offset to read, as stored in PostgreSQL.",
            1,
        ),
        (
            "chat_persister_high_watermark",
            "Partition high watermark at the last fetch.",
            2,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (partition, p) in &snapshot {
            let value = match pick {
                0 => p.lag(),
                1 => p.stored,
                _ => p.high,
            };
            if let Some(v) = value {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{topic}\",partition=\"{partition}\"}} {v}"
                );
            }
        }
    }
}

/// Logs one line every `every`: rows/s, batches, lag, dead letters. Runs forever.
pub async fn log_progress(metrics: Arc<Metrics>, partitions: Arc<Partitions>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut last = (Instant::now(), 0u64, 0u64);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let rows = metrics.rows_written.load(Relaxed);
        let batches = metrics.batches.load(Relaxed);
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
        let lag: i64 = partitions
            .snapshot()
            .iter()
            .filter_map(|(_, p)| p.lag())
            .sum();
        tracing::info!(
            "{:.0} rows/s, {} batches, lag {}, {} dead letters ({} rows in {:.0} s)",
            (rows - last.1) as f64 / secs,
            batches - last.2,
            lag,
            metrics.dead_letters.load(Relaxed),
            rows,
            metrics.uptime().as_secs_f64()
        );
        last = (now, rows, batches);
    }
}

/// Serves `GET /metrics` and `GET /healthz` on `listener`, one short connection per request.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, partitions: Arc<Partitions>) {
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let partitions = partitions.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                respond(socket, &metrics, &partitions),
            )
            .await;
        });
    }
}

async fn respond(
    mut socket: TcpStream,
    metrics: &Metrics,
    partitions: &Partitions,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(metrics, partitions),
        ),
        (b"GET", b"/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}
