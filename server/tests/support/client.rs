//! A protocol client for tests: `tokio-tungstenite` speaking PROTOCOL.md's JSON.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    pub user: String,
    /// The server core (thread) that serves this connection, from the `X-Chat-Core` header.
    pub core: usize,
    /// Whether `recv` returns the v1.1 events (`online`, `offline`, `typing`, `read` pushed by
    /// another connection, a coalesced `presence`); off by default, so the v1 tests read as
    /// a v1 client does, which ignores them as unknown types (PROTOCOL.md).
    pub events: bool,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// The v1.1 event types a v1 client skips.
const EVENTS: &[&str] = &["online", "offline", "typing"];

impl Client {
    pub async fn connect(url: &str, user: &str) -> Client {
        let (ws, resp) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let core = resp
            .headers()
            .get("x-chat-core")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("X-Chat-Core header");
        Client {
            user: user.into(),
            core,
            events: false,
            ws,
        }
    }

    /// Connects `user` on a core other than `not_on` (retrying: the kernel picks the core).
    pub async fn connect_on_other_core(url: &str, user: &str, not_on: usize) -> Client {
        for _ in 0..64 {
            let c = Client::connect(url, user).await;
            if c.core != not_on {
                return c;
            }
        }
        panic!("64 connections all landed on core {not_on}");
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Queues many messages and flushes once (pipelining).
    pub async fn send_all(&mut self, vs: impl IntoIterator<Item = Value>) {
        for v in vs {
            self.ws
                .feed(Message::text(v.to_string()))
                .await
                .expect("feed");
        }
        self.ws.flush().await.expect("flush");
    }

    /// The next JSON message (pings are answered by tungstenite and skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no message within {TIMEOUT:?}", self.user))
                .unwrap_or_else(|| panic!("{}: connection ended", self.user))
                .unwrap_or_else(|e| panic!("{}: {e}", self.user));
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent JSON");
                    if !self.events && EVENTS.iter().any(|e| v["type"] == *e) {
                        continue;
                    }
                    return v;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("{}: unexpected {other:?}", self.user),
            }
        }
    }

    /// Whether anything arrives within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if !self.events && EVENTS.iter().any(|e| v["type"] == *e) {
                        continue;
                    }
                    return Some(v);
                }
                Ok(other) => panic!("{}: unexpected {other:?}", self.user),
            }
        }
    }

    /// The next message, which must be of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], ty, "{}: expected {ty}, got {v}", self.user);
        v
    }

    /// Reads until a message of type `ty`, returning it and what came before.
    pub async fn until(&mut self, ty: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return (v, before);
            }
            before.push(v);
        }
    }

    pub async fn join(&mut self, room: &str) -> u64 {
        self.send(json!({"type":"join","room":room})).await;
        let v = self.expect("joined").await;
        assert_eq!(v["room"], room);
        v["seq"].as_u64().unwrap()
    }

    /// Reads until the close frame and returns its status code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("close within timeout")
            {
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                    return Some(code.into())
                }
                Some(Ok(Message::Close(None))) => return None,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{}: {e} before a close frame", self.user),
                None => panic!("{}: stream ended without a close frame", self.user),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

pub fn send_req(room: &str, cid: &str, body: &str) -> Value {
    json!({"type":"send","room":room,"cid":cid,"body":body})
}

/// A plain HTTP GET; returns the status and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The `seq`s of `msgs`, in order.
pub fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

/// alice and bob on different cores of one server.
pub async fn pair(server: &super::Server) -> (Client, Client) {
    let alice = Client::connect(&server.ws_url("alice"), "alice").await;
    let bob = Client::connect_on_other_core(&server.ws_url("bob"), "bob", alice.core).await;
    assert_ne!(alice.core, bob.core);
    (alice, bob)
}

/// A per-core series of `/metrics`, summed over the cores.
pub async fn metric_sum(addr: std::net::SocketAddr, name: &str) -> u64 {
    let (_, metrics) = http_get(addr, "/metrics").await;
    series_sum(&metrics, name)
}

/// A per-core series (`name{core="N"} value`) of a `/metrics` page, summed over the cores.
pub fn series_sum(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}
