//! One file per client request type: its semantics and wire format in the doc comment, then
//! how it is checked and applied. Decoding is `chat_wire::protocol::Decoder`'s job; by the time a
//! request reaches [`apply`] every field has the right type and shape.

mod dm;
mod history;
mod join;
mod leave;
mod presence;
mod read;
mod resume;
mod send;
mod typing;

pub use history::ask as history_of_any_room;
pub use send::{apply as send, Sender};

use crate::core::Core;
use crate::messages::ConnId;
use crate::metrics::inc;
use chat_wire::protocol::{dm_members, ClientOp, ErrorCode, RequestError, DM_PREFIX};

/// Serves one decoded request of `conn`. An `Err` is answered as an `error` reply.
pub fn apply(core: &mut Core, conn: ConnId, op: ClientOp<'_>) -> Result<(), RequestError> {
    if matches!(
        op,
        ClientOp::Join { .. } | ClientOp::History { .. } | ClientOp::Resume { .. }
    ) {
        within_room_rate(core, conn)?;
    }
    match op {
        ClientOp::Join { room } => join::apply(core, conn, room),
        ClientOp::Leave { room } => leave::apply(core, conn, room),
        ClientOp::Send { room, cid, body } => {
            send::apply(core, conn, room, cid, body, Sender::Member)
        }
        ClientOp::Dm { to, cid, body } => dm::apply(core, conn, to, cid, body),
        ClientOp::History {
            room,
            before,
            limit,
        } => history::apply(core, conn, room, before, limit),
        ClientOp::Resume { room, after } => resume::apply(core, conn, room, after),
        ClientOp::Presence { room } => presence::apply(core, conn, room),
        ClientOp::Typing { room } => typing::apply(core, conn, room),
        ClientOp::Read { room, seq } => read::apply(core, conn, room, seq),
    }
}

/// Whether `conn` may act in `room` as a member: joined, or one of its two direct-message
/// users (`not_joined` / `forbidden` otherwise).
fn member_of(core: &Core, conn: ConnId, room: &str) -> Result<(), RequestError> {
    let c = &core.conns[&conn];
    if is_own_dm(room, &c.user)? || c.rooms.contains_key(room) {
        return Ok(());
    }
    Err(RequestError::new(
        ErrorCode::NotJoined,
        format!("join {room:?} first"),
    ))
}

/// `join`, `history` and `resume` read a room's state (in cluster mode Redis, PostgreSQL):
/// over `--room-rate-limit` per connection they are answered `rate_limited`.
fn within_room_rate(core: &mut Core, conn: ConnId) -> Result<(), RequestError> {
    let cfg = &core.node.config;
    let (rate, burst) = (cfg.room_rate_limit, cfg.room_rate_burst);
    let c = core.conns.get_mut(&conn).expect("a live connection");
    if c.room_rate.take(rate, burst, std::time::Instant::now()) {
        Ok(())
    } else {
        Err(RequestError::new(
            ErrorCode::RateLimited,
            format!("over {rate} join/history/resume requests per second"),
        ))
    }
}

/// A connection joining one more room (`join`, `resume`) stays within `--max-rooms-per-conn`,
/// or gets `forbidden`.
fn may_add_room(core: &Core, conn: ConnId) -> Result<(), RequestError> {
    let most = core.node.config.max_rooms_per_conn;
    if core.conns[&conn].rooms.len() < most {
        Ok(())
    } else {
        Err(RequestError::new(
            ErrorCode::Forbidden,
            format!("a connection may be in at most {most} rooms (--max-rooms-per-conn); leave one first"),
        ))
    }
}

/// Whether `room` is a direct-message room, checking that `user` may use it: `Ok(true)` for one
/// of its two users, `forbidden` for anyone else (and for malformed `dm:` names, which are
/// reserved), `Ok(false)` for an ordinary room.
fn is_own_dm(room: &str, user: &str) -> Result<bool, RequestError> {
    if !room.starts_with(DM_PREFIX) {
        return Ok(false);
    }
    match dm_members(room) {
        Some((a, b)) if a == user || b == user => Ok(true),
        Some(_) => Err(RequestError::new(
            ErrorCode::Forbidden,
            "this direct-message room belongs to two other users",
        )),
        None => Err(RequestError::new(
            ErrorCode::Forbidden,
            "room names starting with dm: are reserved for direct messages",
        )),
    }
}

/// Decodes and serves one text message of `conn`.
pub fn on_text(core: &mut Core, conn: ConnId, data: &mut [u8]) {
    inc(&core.counters().requests);
    match core.decoder.decode(data) {
        Ok(op) => {
            // The op borrows `data`, not the decoder; reborrow the core freely.
            if let Err(e) = apply(core, conn, op) {
                core.reply_error(conn, e);
            }
        }
        Err(e) => core.reply_error(conn, e),
    }
}
