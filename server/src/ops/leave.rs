//! `leave`: stop being a member of a room.
//!
//! Wire: `{"type":"leave","room":R}` -> `{"type":"left","room":R}`; `not_joined` when the
//! connection is not a member. After `left`, no `msg` of the room reaches the connection.
//! Direct-message rooms cannot be left (their users are always members): `bad_request`.

use crate::core::Core;
use crate::messages::ConnId;
use crate::messages::Reply;
use chat_wire::protocol::{reply, ErrorCode, RequestError};

pub fn apply(core: &mut Core, conn: ConnId, room: &str) -> Result<(), RequestError> {
    if super::is_own_dm(room, &core.conns[&conn].user)? {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            "direct-message rooms cannot be left",
        ));
    }
    let Some((name, key)) = core.conns.get_mut(&conn).unwrap().rooms.remove_entry(room) else {
        return Err(RequestError::new(
            ErrorCode::NotJoined,
            format!("not a member of {room:?}"),
        ));
    };
    core.remove_member(&name, key);
    core.reply_now(conn, Reply::Frames(vec![reply::left(room)]));
    Ok(())
}
