//! The write side of a sender whose messages are published over HTTP (Pusher's events API):
//! one keep-alive HTTP/1.1 connection, requests written as they are due (pipelined: the open
//! model must not wait for the previous answer), responses read in order and handed to the
//! engine as the protocol's ack (`200`) or error (any other status) for the matching message.

use crate::client::{Kind, ServerMsg};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::Message;

/// Room and cid of a request, owned (they outlive the request's buffer).
type Ids = (Vec<u8>, Vec<u8>);

/// Reads the room and cid out of a request (e.g. [`super::pusher::request_ids`]).
pub type IdsOf = fn(&[u8]) -> Option<(&[u8], &[u8])>;

/// Publishes every request of `messages` (binary messages holding whole HTTP requests) on one
/// connection to `addr`; `ids` reads a request's room and cid, `on_reply` gets the ack or
/// error of each, `on_error` a connection failure (after which nothing more is answered).
pub async fn run<K>(
    addr: SocketAddr,
    mut messages: UnboundedReceiver<(K, Message)>,
    ids: IdsOf,
    on_reply: impl Fn(ServerMsg<'_>, Instant),
    on_error: impl Fn(String),
) {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return on_error(format!("publish connection to {addr}: {e}")),
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let inflight: RefCell<VecDeque<Ids>> = RefCell::new(VecDeque::new());
    let writer = async {
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Some((_, first)) = messages.recv().await {
            let mut next = Some(first);
            while let Some(m) = next.take() {
                let req = m.into_data();
                let Some((room, cid)) = ids(&req) else {
                    return Err("a publish request without room or cid".to_string());
                };
                inflight
                    .borrow_mut()
                    .push_back((room.to_vec(), cid.to_vec()));
                batch.extend_from_slice(&req);
                next = messages.try_recv().ok().map(|(_, m)| m);
            }
            wr.write_all(&batch)
                .await
                .map_err(|e| format!("publish: {e}"))?;
            batch.clear();
        }
        Ok(())
    };
    let reader = async {
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            while let Some((status, used)) = response(&buf)? {
                buf.drain(..used);
                let Some((room, cid)) = inflight.borrow_mut().pop_front() else {
                    return Err("publish: a response to no request".to_string());
                };
                let now = Instant::now();
                let Some(mut m) = super::delivered(Kind::Ack, &room, &cid) else {
                    continue;
                };
                if status != 200 {
                    m.kind = Kind::Error;
                    m.code = b"http_error";
                }
                on_reply(m, now);
            }
            let mut chunk = [0u8; 8192];
            let n = rd
                .read(&mut chunk)
                .await
                .map_err(|e| format!("publish: {e}"))?;
            if n == 0 {
                return Err::<(), String>("publish: connection closed".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::select! {
        r = writer => if let Err(e) = r { on_error(e) },
        r = reader => if let Err(e) = r { on_error(e) },
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
