//! One file per client request type: its semantics and wire format in the doc comment, then
//! how it is checked and applied. Decoding is `chat_wire::protocol::Decoder`'s job; by the time a
//! request reaches [`apply`] every field has the right type and shape.

mod dm;
mod history;
mod join;
mod leave;
mod resume;
mod send;

use crate::core::Core;
use crate::fanout::ConnId;
use chat_wire::protocol::{dm_members, ClientOp, ErrorCode, RequestError, DM_PREFIX};

/// Serves one decoded request of `conn`. An `Err` is answered as an `error` reply.
pub fn apply(core: &mut Core, conn: ConnId, op: ClientOp<'_>) -> Result<(), RequestError> {
    match op {
        ClientOp::Join { room } => join::apply(core, conn, room),
        ClientOp::Leave { room } => leave::apply(core, conn, room),
        ClientOp::Send { room, cid, body } => send::apply(core, conn, room, cid, body),
        ClientOp::Dm { to, cid, body } => dm::apply(core, conn, to, cid, body),
        ClientOp::History {
            room,
            before,
            limit,
        } => history::apply(core, conn, room, before, limit),
        ClientOp::Resume { room, after } => resume::apply(core, conn, room, after),
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
