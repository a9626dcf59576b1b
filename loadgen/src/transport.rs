//! `loadgen transport`: what TLS and permessage-deflate cost the server per delivery, and what
//! they save (or add) on the wire, measured the same way for all four combinations (#17).
//!
//! The run engine's client is tokio-tungstenite, which refuses RSV1 frames and, in this build,
//! speaks no TLS; so this mode is a small client of its own on chat-wire's frame code. It opens
//! `conns` connections to one `ws://` or `wss://` URL (rustls with ring, trusting `--ca`),
//! optionally offering permessage-deflate, in rooms of `room_size`; the first member of each
//! room sends chat-like text (words, not random bytes: random bytes do not compress, chat does)
//! at an open-loop share of `rate`. Over the measured window it counts the TCP bytes the clients
//! read (ciphertext under TLS; acks and frame headers included), the deliveries, and the
//! server's CPU from `/proc/PID/stat`, so that both figures are per delivery. After a drain,
//! every member must have received every message of its room (`lost`, `extra`).

mod conn;

use crate::cpu;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

/// The largest message a client reassembles (inflated): far above any body sent here.
const MAX_MESSAGE: usize = 1 << 20;

#[derive(clap::Args, Clone, Debug)]
pub struct TransportArgs {
    /// Server URL: `ws://HOST:PORT` or `wss://HOST:PORT` (the endpoint is `/ws`).
    #[arg(long)]
    pub url: String,
    /// PEM certificate(s) to trust for `wss://` (the server's self-signed certificate or its CA).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Offer permessage-deflate (`client_max_window_bits`) and read compressed frames.
    #[arg(long)]
    pub deflate: bool,
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Members per room (the first one of each room sends).
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Bytes of each message's body (words, varied per message).
    #[arg(long, default_value_t = 100)]
    pub body: usize,
    /// Messages per second over all rooms (open loop).
    #[arg(long, default_value_t = 400.0)]
    pub rate: f64,
    /// Seconds of sending before the measured window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Longest wait, after the last send, for the deliveries still on their way.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// The server's process id: its CPU over the window comes from `/proc/PID/stat`.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// What one run measured; printed as one JSON object.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TransportResult {
    pub url: String,
    pub tls: bool,
    /// Offered, and how many connections the server accepted it on.
    pub deflate: bool,
    pub deflate_negotiated: usize,
    pub conns: usize,
    pub room_size: usize,
    pub rooms: usize,
    pub body: usize,
    pub rate: f64,
    pub warmup: f64,
    pub duration: f64,
    /// Whole run: messages sent, deliveries expected (sent x members) and received.
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub extra: u64,
    pub acks: u64,
    pub errors: u64,
    /// The measured window: its deliveries, and the TCP bytes the clients read (`wire`) and the
    /// `msg` JSON they got out of them (`app`, inflated), per delivery.
    pub window_seconds: f64,
    pub window_deliveries: u64,
    pub deliveries_per_s: f64,
    pub wire_bytes_per_delivery: f64,
    pub app_bytes_per_delivery: f64,
    /// TCP bytes the clients wrote per message sent (sends go uncompressed).
    pub wire_bytes_sent_per_message: f64,
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// This process (TLS decryption and inflation of every member included).
    pub client_cpu_seconds: f64,
    pub client_cpu_us_per_delivery: f64,
    /// From the write of a `send` to the arrival of each delivery, after the warm-up.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

impl TransportResult {
    /// One human line.
    pub fn summary(&self) -> String {
        let cpu = self
            .server_cpu_us_per_delivery
            .map_or("n/a".into(), |c| format!("{c:.2}"));
        format!(
            "transport tls={} deflate={} ({}/{} negotiated) body={} B: {} deliveries ({:.0}/s), lost {}, extra {}, errors {}; {:.1} wire B/delivery ({:.1} B of msg); server {cpu} µs/delivery, client {:.2}; latency p50 {:.2} ms, p99 {:.2} ms",
            self.tls, self.deflate, self.deflate_negotiated, self.conns, self.body,
            self.window_deliveries, self.deliveries_per_s, self.lost, self.extra, self.errors,
            self.wire_bytes_per_delivery, self.app_bytes_per_delivery,
            self.client_cpu_us_per_delivery, self.latency_p50_ms, self.latency_p99_ms
        )
    }

    /// Nothing lost, duplicated or refused.
    pub fn verified(&self) -> bool {
        self.lost == 0 && self.extra == 0 && self.errors == 0 && self.sent > 0
    }
}

/// Words of a chat (no character that JSON would escape).
const WORDS: &[&str] = &[
    "are",
    "you",
    "coming",
    "to",
    "the",
    "standup",
    "today",
    "I",
    "think",
    "we",
    "should",
    "ship",
    "it",
    "after",
    "lunch",
    "can",
    "someone",
    "review",
    "my",
    "pull",
    "request",
    "please",
    "thanks",
    "sure",
    "on",
    "it",
    "looks",
    "good",
    "to",
    "me",
    "the",
    "build",
    "is",
    "broken",
    "again",
    "who",
    "merged",
    "that",
    "fix",
    "deploy",
    "staging",
    "is",
    "down",
    "for",
    "a",
    "bit",
    "sorry",
    "running",
    "late",
    "meeting",
    "moved",
    "tomorrow",
    "morning",
    "what",
    "about",
    "the",
    "release",
    "notes",
    "let's",
    "sync",
    "later",
    "ok",
    "sounds",
    "great",
    "did",
    "anyone",
    "see",
    "alert",
    "from",
    "last",
    "night",
    "database",
    "migration",
    "finished",
    "in",
    "ten",
    "minutes",
    "coffee",
    "anyone",
    "here",
    "is",
    "link",
    "design",
    "doc",
    "updated",
    "with",
    "your",
    "comments",
    "yes",
    "no",
    "maybe",
    "next",
    "week",
    "customer",
    "reported",
    "bug",
    "in",
    "checkout",
    "page",
    "fixed",
    "test",
    "flaky",
    "retry",
    "load",
    "numbers",
    "look",
    "better",
    "than",
    "yesterday",
    "nice",
    "work",
    "team",
    "lunch",
    "at",
    "noon",
    "pizza",
    "or",
    "sushi",
    "I'll",
    "be",
    "there",
    "soon",
];

/// A chat-like body of exactly `n` bytes, different for every `seed`.
pub fn chat_body(n: usize, seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut s = String::with_capacity(n + 16);
    while s.len() < n {
        if !s.is_empty() {
            s.push_str(match rng.u8(..20) {
                0 => ". ",
                1 => ", ",
                2 => "? ",
                _ => " ",
            });
        }
        s.push_str(WORDS[rng.usize(..WORDS.len())]);
    }
    s.truncate(n);
    s
}

/// Counters shared by every connection.
struct Shared {
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    delivered: AtomicU64,
    app_bytes: AtomicU64,
    sent_total: AtomicU64,
    acks: AtomicU64,
    errors: AtomicU64,
    joined: AtomicU64,
    negotiated: AtomicU64,
    /// Per room: messages sent, deliveries received.
    sent: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    /// Microseconds, deliveries whose send came after the warm-up.
    latency: Mutex<Histogram<u64>>,
    base: Instant,
}

/// A snapshot of the counters a window is the difference of.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    read: u64,
    written: u64,
    delivered: u64,
    app: u64,
    sent: u64,
    client_cpu: f64,
    server_cpu: Option<f64>,
}

impl Shared {
    fn mark(&self, server_pid: Option<u32>) -> Mark {
        Mark {
            at: Instant::now(),
            read: self.read_bytes.load(Relaxed),
            written: self.written_bytes.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            app: self.app_bytes.load(Relaxed),
            sent: self.sent_total.load(Relaxed),
            client_cpu: cpu::process_seconds(),
            server_cpu: server_pid.and_then(cpu::pid_seconds),
        }
    }

    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

/// Where to connect and how.
struct Setup {
    addr: SocketAddr,
    authority: String,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    deflate: bool,
    run: String,
    body: usize,
    /// Seconds between two sends of one room.
    interval: f64,
    rooms: usize,
    room_size: usize,
}

/// The sending window, known once every connection has joined.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    warm_end: Instant,
    end: Instant,
}

fn setup(a: &TransportArgs) -> Result<Setup, String> {
    let (tls, rest) = if let Some(r) = a.url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = a.url.strip_prefix("ws://") {
        (false, r)
    } else {
        return Err(format!("{}: ws:// or wss:// expected", a.url));
    };
    if a.conns == 0 || a.room_size == 0 || a.body == 0 || !(a.rate > 0.0 && a.duration > 0.0) {
        return Err("conns, room-size, body, rate and duration must be positive".into());
    }
    // The same host, port and address as the plain URL's.
    let crate::client::Target {
        authority, addr, ..
    } = crate::client::Target::parse(&format!("ws://{rest}"))?;
    let tls = if tls {
        let ca = a.ca.as_ref().ok_or("wss:// needs --ca FILE")?;
        let host = authority.rsplit_once(':').map_or(&*authority, |(h, _)| h);
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
        Some((conn::tls_connector(ca)?, name))
    } else {
        None
    };
    let rooms = a.conns.div_ceil(a.room_size);
    Ok(Setup {
        addr,
        authority,
        tls,
        deflate: a.deflate,
        run: format!("{:08x}", fastrand::u32(..)),
        body: a.body,
        interval: rooms as f64 / a.rate,
        rooms,
        room_size: a.room_size,
    })
}

/// Runs the whole measurement.
pub async fn run(a: &TransportArgs) -> Result<TransportResult, String> {
    let setup = Arc::new(setup(a)?);
    let shared = Arc::new(Shared {
        read_bytes: AtomicU64::new(0),
        written_bytes: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        app_bytes: AtomicU64::new(0),
        sent_total: AtomicU64::new(0),
        acks: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        joined: AtomicU64::new(0),
        negotiated: AtomicU64::new(0),
        sent: (0..setup.rooms).map(|_| AtomicU64::new(0)).collect(),
        received: (0..setup.rooms).map(|_| AtomicU64::new(0)).collect(),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
        base: Instant::now(),
    });
    let (start_tx, start_rx) = watch::channel(None::<Window>);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Bounded handshakes at a time: a thousand TLS handshakes at once time out nothing but
    // crowd the server's accept queue.
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.conns {
        let (setup, shared, gate) = (setup.clone(), shared.clone(), gate.clone());
        let (start, stop) = (start_rx.clone(), stop_rx.clone());
        tasks.spawn(async move { conn::connection(i, setup, shared, gate, start, stop).await });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.joined.load(Relaxed) < a.conns as u64 {
        if let Some(Ok(Err(e))) = tasks.try_join_next() {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} connections joined in 60 s",
                shared.joined.load(Relaxed),
                a.conns
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now() + Duration::from_millis(200);
    let w = Window {
        start,
        warm_end: start + Duration::from_secs_f64(a.warmup),
        end: start + Duration::from_secs_f64(a.warmup + a.duration),
    };
    let _ = start_tx.send(Some(w));
    tokio::time::sleep_until(w.warm_end.into()).await;
    let m0 = shared.mark(a.server_pid);
    tokio::time::sleep_until(w.end.into()).await;
    let m1 = shared.mark(a.server_pid);
    let drain_end = Instant::now() + Duration::from_secs_f64(a.drain);
    while Instant::now() < drain_end && !all_received(&shared, a) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            eprintln!("loadgen transport: {e}");
            shared.errors.fetch_add(1, Relaxed);
        }
    }
    Ok(result(a, &setup, &shared, &m0, &m1))
}

/// Members of room `r` (the last room may be short).
fn members(a: &TransportArgs, r: usize) -> u64 {
    (a.conns - r * a.room_size).min(a.room_size) as u64
}

fn all_received(s: &Shared, a: &TransportArgs) -> bool {
    (0..s.sent.len())
        .all(|r| s.received[r].load(Relaxed) >= s.sent[r].load(Relaxed) * members(a, r))
}

fn result(a: &TransportArgs, setup: &Setup, s: &Shared, m0: &Mark, m1: &Mark) -> TransportResult {
    let (mut expected, mut lost, mut extra) = (0, 0, 0);
    for r in 0..setup.rooms {
        let want = s.sent[r].load(Relaxed) * members(a, r);
        let got = s.received[r].load(Relaxed);
        expected += want;
        lost += want.saturating_sub(got);
        extra += got.saturating_sub(want);
    }
    let deliveries = m1.delivered - m0.delivered;
    let per = |x: f64| x / deliveries.max(1) as f64;
    let server_cpu = m0.server_cpu.zip(m1.server_cpu).map(|(a, b)| b - a);
    let client_cpu = m1.client_cpu - m0.client_cpu;
    let window = (m1.at - m0.at).as_secs_f64();
    let h = s.latency.lock().expect("latency");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    TransportResult {
        url: a.url.clone(),
        tls: setup.tls.is_some(),
        deflate: a.deflate,
        deflate_negotiated: s.negotiated.load(Relaxed) as usize,
        conns: a.conns,
        room_size: a.room_size,
        rooms: setup.rooms,
        body: a.body,
        rate: a.rate,
        warmup: a.warmup,
        duration: a.duration,
        sent: s.sent_total.load(Relaxed),
        expected,
        delivered: s.delivered.load(Relaxed),
        lost,
        extra,
        acks: s.acks.load(Relaxed),
        errors: s.errors.load(Relaxed),
        window_seconds: window,
        window_deliveries: deliveries,
        deliveries_per_s: deliveries as f64 / window,
        wire_bytes_per_delivery: per((m1.read - m0.read) as f64),
        app_bytes_per_delivery: per((m1.app - m0.app) as f64),
        wire_bytes_sent_per_message: (m1.written - m0.written) as f64
            / (m1.sent - m0.sent).max(1) as f64,
        server_cpu_seconds: server_cpu,
        server_cpu_us_per_delivery: server_cpu.map(|c| per(c * 1e6)),
        client_cpu_seconds: client_cpu,
        client_cpu_us_per_delivery: per(client_cpu * 1e6),
        latency_p50_ms: ms(0.5),
        latency_p99_ms: ms(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_words_of_the_asked_length_and_vary() {
        let a = chat_body(100, 1);
        assert_eq!(a.len(), 100);
        assert_ne!(a, chat_body(100, 2));
        assert_eq!(chat_body(4096, 7).len(), 4096);
        assert!(a.split(' ').count() > 10, "{a}");
        assert!(!a.contains('"') && !a.contains('\\'));
    }
}
