//! `send`: post a message to a room.
//!
//! Wire: `{"type":"send","room":R,"cid":C,"body":B}` -> `{"type":"ack","cid":C,"room":R,"seq":S,"id":ID}`,
//! and a `msg` to every member of the room, the sender included.
//!
//! The sender must have joined the room (`not_joined`), or be one of the two users of a
//! direct-message room (`forbidden` otherwise); the server publish API sends the same way
//! without a join ([`Sender::Api`], `api/publish.rs`). The request is not awaited: the connection's next
//! request is read while this one is with the room's owner, and acks still leave in request
//! order. A `(from, cid)` seen in the room within the dedupe window is answered with the first
//! message's seq and id and is not delivered again. Over the connection's rate: `rate_limited`;
//! while the server drains: `unavailable`.

use crate::core::Core;
use crate::messages::PublishRequest;
use crate::messages::{ConnId, CoreMsg, Name};
use chat_wire::protocol::{dm_members, ErrorCode, RequestError};
use std::time::Instant;

/// Who sends: a member of the room (a connection's `send`), or the server API, which speaks for
/// a backend and needs no `join` (`api/publish.rs`). Direct-message rooms take messages from
/// their two users only, either way (`forbidden`).
pub enum Sender {
    Member,
    Api,
}

pub fn apply(
    core: &mut Core,
    conn: ConnId,
    room: &str,
    cid: &str,
    body: &str,
    sender: Sender,
) -> Result<(), RequestError> {
    let c = &core.conns[&conn];
    let dm = dm_users(room, &c.user).map_err(|e| e.with_cid(Some(cid)))?;
    if dm.is_none() && matches!(sender, Sender::Member) && !c.rooms.contains_key(room) {
        let e = RequestError::new(
            ErrorCode::NotJoined,
            format!("join {room:?} before sending to it"),
        );
        return Err(e.with_cid(Some(cid)));
    }
    publish(core, conn, room.into(), cid, body, dm)
}

/// The two users of a direct-message room `user` may write to; `None` for an ordinary room.
fn dm_users(room: &str, user: &str) -> Result<Option<(Name, Name)>, RequestError> {
    if !super::is_own_dm(room, user)? {
        return Ok(None);
    }
    let (a, b) = dm_members(room).expect("checked");
    Ok(Some((Name::from(a), Name::from(b))))
}

/// Checks the connection's limits and hands the message to the room's owner.
pub fn publish(
    core: &mut Core,
    conn: ConnId,
    room: Name,
    cid: &str,
    body: &str,
    dm: Option<(Name, Name)>,
) -> Result<(), RequestError> {
    if core.node.draining() {
        return Err(RequestError::new(
            ErrorCode::Unavailable,
            "server is draining; reconnect to another node",
        )
        .with_cid(Some(cid)));
    }
    let cfg = &core.node.config;
    let (rate, burst) = (cfg.rate_limit, cfg.rate_burst);
    let c = core.conns.get_mut(&conn).unwrap();
    let now = Instant::now();
    if !c.rate.take(rate, burst, now) {
        return Err(RequestError::new(
            ErrorCode::RateLimited,
            format!("over {rate} messages per second"),
        )
        .with_cid(Some(cid)));
    }
    let from = c.user.clone();
    let reply = core.ticket(conn, Some(now));
    let ts = crate::messages::now_ms();
    let req = PublishRequest {
        room: room.clone(),
        from,
        cid: cid.into(),
        body: body.into(),
        ts,
        dm,
        reply,
    };
    core.ask_owner(&room, CoreMsg::Publish(req));
    Ok(())
}
