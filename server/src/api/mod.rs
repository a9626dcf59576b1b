//! The server API for backends (PROTOCOL.md, "Transport additions (v1.1)"): plain HTTP/1.1 on
//! the listen port, on only when the server has `--api-key`.
//!
//! Wire (every request with `Authorization: Bearer <--api-key>`; one request per connection,
//! answered with `Connection: close`):
//! * `POST /api/publish`, `Content-Type: application/json`, `{"room":R,"from":U,"cid":C,"body":B}`
//!   -> `200 {"room":R,"seq":S,"id":ID}` once the message is durable, exactly as `send`'s `ack`
//!   ([`publish`]);
//! * `GET /api/history?room=R&before=S&limit=N` -> `200 {"type":"history","room":R,"messages":[msg...]}`,
//!   the `history` reply ([`history`]).
//!
//! Errors answer `{"code":CODE,"message":TEXT}` (plus `cid` when the request had one), the fields
//! of an `error` frame. The status says which: `bad_request` 400, `forbidden` 403, `too_large`
//! 413 (a request body over `--max-frame`, a `body` over `--max-body`), `rate_limited` 429,
//! `unavailable` 503 (draining, Redis or Kafka down), and 504 `unavailable` when no answer came
//! within `--kafka-timeout-ms` + 5 s (a publish may still have happened: retry with the same
//! `cid`). HTTP-only codes: 401 `unauthorized` (no or wrong key; `WWW-Authenticate: Bearer`),
//! 404 `not_found` (an unknown `/api/` path, and every `/api/` path without `--api-key`: the
//! API is off, not forbidden), 405 `method_not_allowed` (with `Allow`), 408 (the body did not
//! arrive within `--head-timeout-ms`), 411 (no `Content-Length`; chunked bodies are refused),
//! 415 (a `Content-Type` other than `application/json`).
//!
//! How: a request is served on the core that accepted it, through the path a WebSocket request
//! takes. It registers an internal connection of its user ([`Core::add_internal_conn`]: it gets
//! the replies to its own requests and nothing else), makes the request as that connection
//! would, and waits for the reply frame in the connection's outbound queue, which no socket
//! drains. So seq, dedupe, limits and durability are `send`'s and `history`'s own, and a
//! message published here reaches the members of its room as the same `msg`. While the request
//! waits, its internal connection counts in `chat_connections` (it holds a socket).

mod history;
mod publish;

use crate::core::{Core, CoreRef};
use crate::messages::ConnId;
use crate::node::Node;
use crate::outbound::ConnIo;
use bytes::{Bytes, BytesMut};
use chat_wire::frame::payload_of;
use chat_wire::handshake::{http_response, Request};
use chat_wire::protocol::{ErrorCode, RequestError};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use serde_json::{json, Value};
use std::future::poll_fn;
use std::rc::Rc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// An authorised API request whose head has been read, for [`serve`].
pub enum Call {
    /// `POST /api/publish` with a body of `length` bytes to read.
    Publish {
        length: usize,
        expect_continue: bool,
    },
    /// `GET /api/history` with its query parameters, not yet checked.
    History {
        room: Option<String>,
        before: Option<String>,
        limit: Option<String>,
    },
}

/// What routes one endpoint's request head.
type Router = fn(&Request<'_>, &Node) -> Result<Call, Vec<u8>>;

/// Routes a request head under `/api/`: a [`Call`] to serve, or the HTTP answer when there is
/// none.
pub fn route(req: &Request<'_>, node: &Node) -> Result<Call, Vec<u8>> {
    let Some(key) = node.config.api_key.as_deref() else {
        let why = "the server API is off (start the server with --api-key)";
        return Err(error(404, "not_found", why, None));
    };
    let (method, call) = match req.path {
        "/api/publish" => ("POST", publish::route as Router),
        "/api/history" => ("GET", history::route as Router),
        _ => return Err(error(404, "not_found", "no such API endpoint", None)),
    };
    if !authorised(req.header("authorization"), key) {
        let resp = error(401, "unauthorized", "missing or wrong API key", None);
        return Err(with_header(resp, "WWW-Authenticate: Bearer"));
    }
    if req.method != method {
        let why = format!("{} takes {method} only", req.path);
        let resp = error(405, "method_not_allowed", &why, None);
        return Err(with_header(resp, &format!("Allow: {method}")));
    }
    call(req, node)
}

/// Whether `Authorization` is `Bearer <key>`, compared in constant time (`subtle`: the time
/// depends on the lengths only, never on where the first wrong byte is).
fn authorised(header: Option<&str>, key: &str) -> bool {
    let Some(given) = header.and_then(|h| {
        let (scheme, token) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }) else {
        return false;
    };
    given.as_bytes().ct_eq(key.as_bytes()).into()
}

/// Serves an authorised request to the end: reads its body, answers, closes. `buf` holds what
/// followed the request head.
pub async fn serve<S: AsyncReadRent + AsyncWriteRent>(
    core: &CoreRef,
    mut stream: S,
    buf: BytesMut,
    call: Call,
) {
    let resp = match call {
        Call::Publish {
            length,
            expect_continue,
        } => publish::serve(core, &mut stream, buf, length, expect_continue).await,
        Call::History {
            room,
            before,
            limit,
        } => Some(history::serve(core, room, before, limit).await),
    };
    let Some(resp) = resp else {
        return; // the client went away
    };
    let _ = stream.write_all(resp).await;
    linger_close(stream).await;
}

/// How long a closed API connection keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// Ends the write side, then reads and drops what the client still sends (the body of a request
/// refused before it was read) until it closes or [`LINGER`] passes: a socket closed with
/// unread input is reset, and the reset can destroy the answer before the client reads it.
async fn linger_close<S: AsyncReadRent + AsyncWriteRent>(mut stream: S) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let (res, b) = stream.read(buf).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                return;
            }
        }
    };
    let _ = monoio::time::timeout(LINGER, drain).await;
}

/// How long a request waits for its reply: a publish is answered (`ack` or `unavailable`)
/// within `--kafka-timeout-ms`; the rest is slack for Redis and the cores.
fn reply_wait(node: &Node) -> Duration {
    Duration::from_millis(node.config.kafka_timeout_ms) + Duration::from_secs(5)
}

/// Makes one request as an internal connection of `user` (`ask` issues it) and returns the
/// payload of its reply frame (`ack`, `history`, `error`), or the HTTP answer when there is none.
async fn exchange(
    core: &CoreRef,
    user: &str,
    ask: impl FnOnce(&mut Core, ConnId) -> Result<(), RequestError>,
) -> Result<Bytes, Vec<u8>> {
    let (node, core_id) = {
        let c = core.borrow();
        (c.node.clone(), c.id)
    };
    // No descriptor: nothing writes this connection's queue to a socket (see `reply_frame`),
    // and nothing compresses it.
    let io = Rc::new(ConnIo::new(-1, node.clone(), core_id, None));
    let conn = core.borrow_mut().add_internal_conn(user, io.clone());
    let asked = ask(&mut core.borrow_mut(), conn);
    let result = match asked {
        Err(e) => Err(request_error(&e)),
        Ok(()) => match monoio::time::timeout(reply_wait(&node), reply_frame(&io)).await {
            Ok(Some(payload)) => Ok(payload),
            Ok(None) => {
                let why = "server shutting down; retry on another node with the same cid";
                Err(error(503, "unavailable", why, None))
            }
            Err(_) => {
                let why = "no answer in time; retry (a publish with the same cid is not repeated)";
                Err(error(504, "unavailable", why, None))
            }
        },
    };
    core.borrow_mut().remove_conn(conn);
    io.finish();
    result
}

/// The payload of the first text frame queued for `io`; `None` once it is closed.
async fn reply_frame(io: &ConnIo) -> Option<Bytes> {
    let mut frames = Vec::new();
    loop {
        poll_fn(|cx| io.poll_batch(cx, &mut frames)).await?;
        // Text frames (opcode 1) only: an idle ping is no answer, and nobody will pong it, so
        // the connection counts as heard from (housekeeping closes silent ones).
        if let Some(text) = frames.iter().find(|f| f[0] & 0x0F == 1) {
            return Some(payload_of(text));
        }
        io.touch();
        frames.clear();
    }
}

/// An `error` reply frame's payload as the HTTP answer, or `None` when it is not an error.
fn error_reply(payload: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    if v["type"] != "error" {
        return None;
    }
    let code = v["code"].as_str().unwrap_or("unavailable");
    let message = v["message"].as_str().unwrap_or("");
    Some(error(status_of(code), code, message, v["cid"].as_str()))
}

/// A refused request as the HTTP answer.
fn request_error(e: &RequestError) -> Vec<u8> {
    let code = e.code.as_str();
    error(status_of(code), code, &e.message, e.cid.as_deref())
}

fn bad_request(message: impl Into<String>) -> RequestError {
    RequestError::new(ErrorCode::BadRequest, message)
}

/// The HTTP status of a PROTOCOL.md error code.
fn status_of(code: &str) -> u16 {
    match code {
        "bad_request" => 400,
        "forbidden" | "not_joined" => 403,
        "too_large" => 413,
        "rate_limited" => 429,
        _ => 503,
    }
}

/// `{"code":CODE,"message":TEXT,"cid":C}` (`cid` when known) with `status`.
fn error(status: u16, code: &str, message: &str, cid: Option<&str>) -> Vec<u8> {
    let mut body = json!({ "code": code, "message": message });
    if let Some(cid) = cid {
        body["cid"] = cid.into();
    }
    json_response(status, body.to_string().as_bytes())
}

fn json_response(status: u16, body: &[u8]) -> Vec<u8> {
    http_response(status, "application/json", body)
}

/// Adds one header line (without its CRLF) to a response made by `http_response`.
fn with_header(mut resp: Vec<u8>, header: &str) -> Vec<u8> {
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let line = format!("{header}\r\n");
    resp.splice(end + 2..end + 2, line.into_bytes());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_key_is_compared_whole() {
        assert!(authorised(Some("Bearer s3cret"), "s3cret"));
        assert!(authorised(Some("bearer  s3cret "), "s3cret"));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer ",
            "Basic s3cret",
            "s3cret",
        ] {
            assert!(!authorised(Some(wrong), "s3cret"), "{wrong}");
        }
        assert!(!authorised(None, "s3cret"));
    }

    #[test]
    fn extra_header_lands_in_the_head() {
        let resp = with_header(http_response(405, "text/plain", b"x"), "Allow: POST");
        let text = String::from_utf8(resp).unwrap();
        assert!(text.contains("\r\nAllow: POST\r\n\r\nx"), "{text}");
    }
}
