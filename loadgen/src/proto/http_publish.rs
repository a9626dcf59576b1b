//! The write side of a sender whose messages are published over HTTP (Pusher's events API):
//! every request on its own connection, sent as soon as it is due (the open model must not
//! wait for the previous answer; Sockudo answers `connection: close`, so a connection carries
//! one request anyway), its response handed to the engine as the protocol's ack (`200`) or
//! error (any other status) for that message.

use crate::client::{Kind, ServerMsg};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::Message;

/// Reads the room and cid out of a request (e.g. [`super::pusher::request_ids`]).
pub type IdsOf = fn(&[u8]) -> Option<(&[u8], &[u8])>;

/// Publishes every request of `messages` (binary messages holding whole HTTP requests) to
/// `addr`; `ids` reads a request's room and cid, `on_reply` gets the ack or error of each,
/// `on_error` a failed request (which stays unanswered).
pub async fn run<K>(
    addr: SocketAddr,
    mut messages: UnboundedReceiver<(K, Message)>,
    ids: IdsOf,
    on_reply: impl Fn(ServerMsg<'_>, Instant),
    on_error: impl Fn(String),
) {
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    while open || !inflight.is_empty() {
        tokio::select! {
            m = messages.recv(), if open => {
                let Some((_, m)) = m else { open = false; continue };
                let req = m.into_data();
                let Some((room, cid)) = ids(&req).map(|(r, c)| (r.to_vec(), c.to_vec())) else {
                    on_error("a publish request without room or cid".into());
                    continue;
                };
                inflight.push(async move { (one(addr, &req).await, room, cid) });
            }
            Some((res, room, cid)) = inflight.next(), if !inflight.is_empty() => {
                let Some(mut m) = super::delivered(Kind::Ack, &room, &cid) else { continue };
                match res {
                    Ok((status, at)) => {
                        if status != 200 {
                            m.kind = Kind::Error;
                            m.code = b"http_error";
                        }
                        on_reply(m, at);
                    }
                    Err(e) => on_error(e),
                }
            }
        }
    }
}

/// One request on a fresh connection: its response's status and arrival time.
async fn one(addr: SocketAddr, req: &[u8]) -> Result<(u16, Instant), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("publish connection to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(req)
        .await
        .map_err(|e| format!("publish: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((status, _)) = response(&buf)? {
            return Ok((status, Instant::now()));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        if n == 0 {
            return Err("publish: connection closed before the response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A complete response at the start of `buf`: its status and length (`None`: incomplete).
fn response(buf: &[u8]) -> Result<Option<(u16, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("publish: bad response: {e}")),
    };
    let mut length = 0usize;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("publish: bad content-length")?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("publish: chunked responses are not supported".into());
        }
    }
    let status = r.code.unwrap_or(0);
    Ok((buf.len() >= head + length).then_some((status, head + length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_pipelined_responses() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 429 Too Many\r\nContent-Length: 0\r\n\r\n";
        let (s, n) = response(two).unwrap().unwrap();
        assert_eq!((s, &two[n..n + 8]), (200, &b"HTTP/1.1"[..]));
        assert_eq!(response(&two[n..]).unwrap(), Some((429, two.len() - n)));
        assert_eq!(response(&two[..n - 1]).unwrap(), None, "body incomplete");
        assert_eq!(response(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(response(b"garbage\r\n\r\n").is_err());
    }
}
