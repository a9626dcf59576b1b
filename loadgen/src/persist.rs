//! Sampled persistence latency: for one acked message in `persist_sample`, poll PostgreSQL
//! until its row (`messages`, keyed by room and seq, per PROTOCOL.md) is visible, and record
//! the time from the message's intended send time. All pending samples are checked with one
//! query per poll (every 5 ms), so the figure's resolution is about 5 ms plus a query.

use crate::stats::{new_hist, record_ns};
use hdrhistogram::Histogram;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::task::JoinHandle;

/// A message to look for.
pub struct Sample {
    pub room: String,
    pub seq: i64,
    pub intended: Instant,
}

/// What the poller saw.
pub struct Outcome {
    pub hist: Histogram<u64>,
    pub found: u64,
    pub missing: u64,
    pub error: Option<String>,
}

const QUERY: &str = "SELECT m.room, m.seq FROM messages m \
     JOIN unnest($1::text[], $2::bigint[]) AS p(room, seq) ON m.room = p.room AND m.seq = p.seq";

/// Starts a poller on the current runtime; it ends once the sender side is dropped and every
/// sample was found or timed out.
pub fn spawn(
    url: String,
    timeout: Duration,
) -> (mpsc::UnboundedSender<Sample>, JoinHandle<Outcome>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, tokio::spawn(poll(url, timeout, rx)))
}

async fn poll(url: String, timeout: Duration, mut rx: mpsc::UnboundedReceiver<Sample>) -> Outcome {
    let mut out = Outcome {
        hist: new_hist(),
        found: 0,
        missing: 0,
        error: None,
    };
    let client = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => {
            out.error = Some(format!("PostgreSQL {url}: {e}"));
            while rx.recv().await.is_some() {
                out.missing += 1;
            }
            return out;
        }
    };
    let stmt = match client.prepare(QUERY).await {
        Ok(s) => Some(s),
        Err(e) => {
            out.error = Some(format!("PostgreSQL query: {e}"));
            None
        }
    };
    let mut pending: Vec<Sample> = Vec::new();
    let mut closed = false;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        loop {
            match rx.try_recv() {
                Ok(s) => pending.push(s),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed && pending.is_empty() {
            return out;
        }
        if let (Some(stmt), false) = (&stmt, pending.is_empty()) {
            let rooms: Vec<&str> = pending.iter().map(|s| s.room.as_str()).collect();
            let seqs: Vec<i64> = pending.iter().map(|s| s.seq).collect();
            match client.query(stmt, &[&rooms, &seqs]).await {
                Ok(rows) => {
                    let now = Instant::now();
                    let found: HashSet<(String, i64)> =
                        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                    pending.retain(|s| {
                        if found.contains(&(s.room.clone(), s.seq)) {
                            record_ns(
                                &mut out.hist,
                                now.saturating_duration_since(s.intended).as_nanos() as u64,
                            );
                            out.found += 1;
                            false
                        } else {
                            true
                        }
                    });
                }
                Err(e) => {
                    out.error
                        .get_or_insert_with(|| format!("PostgreSQL query: {e}"));
                }
            }
        }
        let now = Instant::now();
        pending.retain(|s| {
            let expired = now.saturating_duration_since(s.intended) > timeout;
            out.missing += u64::from(expired);
            !expired
        });
        tick.tick().await;
    }
}
