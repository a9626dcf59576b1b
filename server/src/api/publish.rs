//! `POST /api/publish`: a backend publishes a message as one of its users.
//!
//! Wire: `{"room":R,"from":U,"cid":C,"body":B}` (`Content-Type: application/json`, at most
//! `--max-frame` bytes) -> `200 {"room":R,"seq":S,"id":ID}` once the message is durable, as
//! `send`'s `ack`; every member of `R` gets the same `msg` a `send` of `U` would make
//! (`"from":U,"cid":C`), in the room's one seq stream.
//!
//! `U` is a user id (`validate_user`), `R`, `C` and `B` are checked by the decoder that checks
//! `send` (room names as `join`, `cid` length, `--max-body`, nothing PostgreSQL cannot store):
//! `bad_request` 400, `too_large` 413. The same `(U, C)` again within the dedupe window is the
//! same message: the first one's seq and id, no second delivery. `U` need not have joined `R`
//! (nor be connected): the API speaks for a backend. A direct-message room takes messages only
//! from its two users (`forbidden` 403), as a `dm` would. `--rate-limit`/`--rate-burst` apply
//! per `U` on each core (like one connection of `U` per core): `rate_limited` 429. While the
//! server drains, and when Redis or Kafka cannot take the message: `unavailable` 503.

use super::{bad_request, error, exchange, json_response, request_error};
use crate::core::{Core, CoreRef};
use crate::messages::{ConnId, Name};
use crate::node::Node;
use crate::ops::Sender;
use crate::rate_limit::TokenBucket;
use ahash::AHashMap;
use bytes::BytesMut;
use chat_wire::handshake::Request;
use chat_wire::protocol::{validate_user, ClientOp, RequestError};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRent, AsyncWriteRentExt};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Checks the head of a publish: its body's type and length. The body is read by [`serve`].
pub fn route(req: &Request<'_>, node: &Node) -> Result<super::Call, Vec<u8>> {
    if let Some(ct) = req.header("content-type") {
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            let why = format!("Content-Type must be application/json, not {media:?}");
            return Err(error(415, "bad_request", &why, None));
        }
    }
    if req.header("transfer-encoding").is_some() {
        let why = "send the body with Content-Length (chunked bodies are not taken)";
        return Err(error(411, "bad_request", why, None));
    }
    let Some(length) = req.header("content-length") else {
        return Err(error(
            411,
            "bad_request",
            "Content-Length is required",
            None,
        ));
    };
    let Ok(length) = length.parse::<usize>() else {
        let why = "Content-Length is not a number";
        return Err(error(400, "bad_request", why, None));
    };
    let max = node.config.max_frame;
    if length > max {
        let why = format!("request body over {max} bytes (--max-frame)");
        return Err(error(413, "too_large", &why, None));
    }
    let expect_continue = req
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    Ok(super::Call::Publish {
        length,
        expect_continue,
    })
}

/// Reads the body, publishes, and returns the answer; `None` when the client went away.
pub async fn serve<S: AsyncReadRent + AsyncWriteRent>(
    core: &CoreRef,
    stream: &mut S,
    buf: BytesMut,
    length: usize,
    expect_continue: bool,
) -> Option<Vec<u8>> {
    if expect_continue && buf.len() < length {
        let (res, _) = stream
            .write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])
            .await;
        res.ok()?;
    }
    let wait = Duration::from_millis(core.borrow().node.config.head_timeout_ms.max(1));
    let body = match monoio::time::timeout(wait, read_body(stream, buf, length)).await {
        Ok(body) => body?,
        Err(_) => {
            let why = "request body not finished in time (--head-timeout-ms)";
            return Some(error(408, "bad_request", why, None));
        }
    };
    let message = match parse(core, &body) {
        Ok(message) => message,
        Err(e) => return Some(request_error(&e)),
    };
    let asked = exchange(core, &message.from, |c, conn| publish_as(c, conn, &message));
    let payload = match asked.await {
        Ok(payload) => payload,
        Err(resp) => return Some(resp),
    };
    if let Some(resp) = super::error_reply(&payload) {
        return Some(resp);
    }
    let ack: Value = serde_json::from_slice(&payload).unwrap_or_default();
    let body = json!({ "room": ack["room"], "seq": ack["seq"], "id": ack["id"] });
    Some(json_response(200, body.to_string().as_bytes()))
}

/// Reads until `buf` holds `length` bytes of body; `None` when the client went away.
async fn read_body<S: AsyncReadRent>(
    stream: &mut S,
    mut buf: BytesMut,
    length: usize,
) -> Option<BytesMut> {
    let have = buf.len();
    if have >= length {
        buf.truncate(length);
        return Some(buf);
    }
    buf.reserve(length - have);
    let (res, rest) = stream.read_exact(buf.slice_mut(have..length)).await;
    res.ok()?;
    Some(rest.into_inner())
}

/// A publish request's message, checked.
struct Message {
    from: String,
    room: String,
    cid: String,
    body: String,
}

/// The checked message of a publish body: `from` by `validate_user`, the rest by the very
/// decoder that checks a `send`.
fn parse(core: &CoreRef, body: &[u8]) -> Result<Message, RequestError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(bad_request("the body must be a JSON object"));
    };
    let cid = obj.get("cid").and_then(Value::as_str);
    let from = match obj.get("from") {
        Some(Value::String(from)) => from,
        Some(_) => return Err(bad_request("`from` must be a string").with_cid(cid)),
        None => return Err(bad_request("missing field `from`").with_cid(cid)),
    };
    validate_user(from).map_err(|m| bad_request(format!("`from`: {m}")).with_cid(cid))?;
    let mut send = Map::new();
    send.insert("type".into(), "send".into());
    for field in ["room", "cid", "body"] {
        if let Some(value) = obj.get(field) {
            send.insert(field.into(), value.clone());
        }
    }
    let mut send = serde_json::to_vec(&send).expect("JSON");
    match core.borrow_mut().decoder.decode(&mut send)? {
        ClientOp::Send { room, cid, body } => Ok(Message {
            from: from.clone(),
            room: room.into(),
            cid: cid.into(),
            body: body.into(),
        }),
        other => unreachable!("a send decodes as a send: {other:?}"),
    }
}

thread_local! {
    /// This core's `--rate-limit` buckets of the users the API publishes as (an internal
    /// connection lives for one request; its user's bucket outlives it here).
    static RATES: RefCell<AHashMap<Name, TokenBucket>> = RefCell::new(AHashMap::new());
}

/// Buckets kept before the full ones (no different from new) are forgotten.
const RATES_KEPT: usize = 4096;

/// `send` without the join, with the user's bucket of this core as the connection's.
fn publish_as(core: &mut Core, conn: ConnId, m: &Message) -> Result<(), RequestError> {
    let cfg = &core.node.config;
    let (rate, burst) = (cfg.rate_limit, cfg.rate_burst);
    let c = core.conns.get_mut(&conn).expect("the request's connection");
    let user = c.user.clone();
    if let Some(bucket) = RATES.with_borrow_mut(|r| r.remove(&user)) {
        c.rate = bucket;
    }
    let result = crate::ops::send(core, conn, &m.room, &m.cid, &m.body, Sender::Api);
    let c = core.conns.get_mut(&conn).expect("the request's connection");
    let bucket = std::mem::replace(&mut c.rate, TokenBucket::new(burst));
    RATES.with_borrow_mut(|rates| {
        if rates.len() >= RATES_KEPT {
            let now = Instant::now();
            rates.retain(|_, b| !b.is_full(rate, burst, now));
        }
        rates.insert(user, bucket);
    });
    result
}
