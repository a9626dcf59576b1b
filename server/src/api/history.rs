//! `GET /api/history?room=R&before=S&limit=N`: a page of a room's past messages, for backends.
//!
//! Wire: `200 {"type":"history","room":R,"messages":[msg...]}`, the `history` reply: ascending
//! by seq, the newest `N` (default 50, 1-100) messages with seq < `S` (all without `before`);
//! page backwards with the smallest seq received as the next `before`.
//!
//! The parameters are checked as a `history` request's (`bad_request` 400: a bad room name, a
//! `limit` out of range, a `before` or `limit` that is not a number). Every room may be read,
//! direct-message rooms included: the key's holder may already publish as any user. The
//! `--room-rate-limit` of connections does not apply (the key is the backend's, not a client's);
//! in cluster mode a page older than the Redis cache is read from PostgreSQL, within
//! `--pg-replays`. Redis or PostgreSQL unavailable: `unavailable` 503.

use super::{bad_request, exchange, json_response, request_error};
use crate::core::CoreRef;
use crate::node::Node;
use chat_wire::handshake::Request;
use chat_wire::protocol::{ClientOp, RequestError};
use serde_json::{Map, Value};

/// The user of the API's history requests: not a valid user id, so no user's.
const READER: &str = "api:history";

/// Takes the query parameters of a history request; [`serve`] checks them.
pub fn route(req: &Request<'_>, _node: &Node) -> Result<super::Call, Vec<u8>> {
    let param = |name| req.query_param(name).map(|v| v.into_owned());
    Ok(super::Call::History {
        room: param("room"),
        before: param("before"),
        limit: param("limit"),
    })
}

/// Reads the page and returns the answer.
pub async fn serve(
    core: &CoreRef,
    room: Option<String>,
    before: Option<String>,
    limit: Option<String>,
) -> Vec<u8> {
    let (room, before, limit) = match parse(core, room, before, limit) {
        Ok(request) => request,
        Err(e) => return request_error(&e),
    };
    let asked = exchange(core, READER, |c, conn| {
        crate::ops::history_of_any_room(c, conn, &room, before, limit);
        Ok(())
    });
    match asked.await {
        Ok(payload) => super::error_reply(&payload).unwrap_or_else(|| json_response(200, &payload)),
        Err(resp) => resp,
    }
}

/// The checked (room, before, limit), by the decoder that checks a `history` request.
fn parse(
    core: &CoreRef,
    room: Option<String>,
    before: Option<String>,
    limit: Option<String>,
) -> Result<(String, Option<u64>, u32), RequestError> {
    let mut request = Map::new();
    request.insert("type".into(), "history".into());
    if let Some(room) = room {
        request.insert("room".into(), room.into());
    }
    for (name, value) in [("before", before), ("limit", limit)] {
        if let Some(value) = value {
            let n: u64 = value
                .parse()
                .map_err(|_| bad_request(format!("`{name}` must be a non-negative integer")))?;
            request.insert(name.into(), n.into());
        }
    }
    let mut request = serde_json::to_vec(&Value::Object(request)).expect("JSON");
    match core.borrow_mut().decoder.decode(&mut request)? {
        ClientOp::History {
            room,
            before,
            limit,
        } => Ok((room.into(), before, limit)),
        other => unreachable!("a history request decodes as one: {other:?}"),
    }
}
