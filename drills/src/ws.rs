//! A minimal protocol client (`tokio-tungstenite`, JSON per PROTOCOL.md) for the checks a
//! drill makes itself after the load: `resume` of a room from a given seq, and HTTP probes of
//! a draining node.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What a `resume` answered: the `msg`s before `resumed`, and `resumed` itself.
pub struct Resumed {
    pub messages: Vec<Value>,
    pub seq: u64,
    pub complete: bool,
}

impl Resumed {
    pub fn seqs(&self) -> Vec<u64> {
        self.messages
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect()
    }
}

impl Client {
    /// Connects to `ws://ADDR/ws?user=USER`.
    pub async fn connect(addr: SocketAddr, user: &str) -> Result<Client, String> {
        let url = format!("ws://{addr}/ws?user={user}");
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(Client { ws })
    }

    pub async fn send(&mut self, v: Value) -> Result<(), String> {
        self.send_text(&v.to_string()).await
    }

    /// One text frame as given (for JSON that `serde_json` would not write, say a lone
    /// surrogate escape).
    pub async fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next JSON message within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Result<Value, String> {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .map_err(|_| format!("nothing within {wait:?}"))?
                .ok_or("connection ended")?
                .map_err(|e| e.to_string())?;
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).map_err(|e| e.to_string()),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return Err(format!("unexpected {other:?}")),
            }
        }
    }

    /// `resume {room, after}`: every `msg` of the room up to `resumed`.
    pub async fn resume(&mut self, room: &str, after: u64) -> Result<Resumed, String> {
        self.send(json!({"type": "resume", "room": room, "after": after}))
            .await?;
        let mut messages = Vec::new();
        loop {
            let v = self.recv(Duration::from_secs(20)).await?;
            match v["type"].as_str() {
                Some("msg") if v["room"] == room => messages.push(v),
                Some("resumed") => {
                    return Ok(Resumed {
                        messages,
                        seq: v["seq"].as_u64().ok_or("resumed without seq")?,
                        complete: v["complete"].as_bool().ok_or("resumed without complete")?,
                    })
                }
                Some("error") => return Err(format!("resume {room}: {v}")),
                _ => {}
            }
        }
    }

    /// Reads (discarding messages) until the server's close frame, within `wait`: its status
    /// code (`Err` when the connection ended without one).
    pub async fn close_code(&mut self, wait: Duration) -> Result<u16, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("no close frame within {wait:?}"))?
                .ok_or("the connection ended without a close frame")?
                .map_err(|e| format!("{e} before a close frame"))?;
            if let Message::Close(frame) = msg {
                return frame
                    .map(|f| u16::from(f.code))
                    .ok_or_else(|| "a close frame without a code".to_string());
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The status line of `GET path` (`Err` when the connection is refused or cut).
pub async fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out);
        text.get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not HTTP: {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
}

/// The HTTP status a WebSocket upgrade request gets (101 when it is accepted).
pub async fn upgrade_status(addr: SocketAddr, user: &str) -> Result<u16, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!(
            "GET /ws?user={user} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf[..n]);
        text.get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not HTTP: {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
}
