//! `dm`: a direct message to one user.
//!
//! Wire: `{"type":"dm","to":U,"cid":C,"body":B}` -> `{"type":"ack","cid":C,"room":"dm:A:B","seq":S,"id":ID}`.
//!
//! The message lives in room `dm:<a>:<b>` (`a` < `b`, the two user ids) and reaches every
//! connection of both users, wherever they are connected, without a `join`. The rest is `send`.
//! A direct message to oneself is a `bad_request`.

use crate::core::Core;
use crate::messages::{ConnId, Name};
use chat_wire::protocol::{dm_members, dm_room, ErrorCode, RequestError};

pub fn apply(
    core: &mut Core,
    conn: ConnId,
    to: &str,
    cid: &str,
    body: &str,
) -> Result<(), RequestError> {
    let from = core.conns[&conn].user.clone();
    let Some(room) = dm_room(&from, to) else {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            "cannot send a direct message to yourself",
        )
        .with_cid(Some(cid)));
    };
    let (a, b) = dm_members(&room).expect("well-formed");
    let users = (Name::from(a), Name::from(b));
    super::send::publish(core, conn, room.into(), cid, body, Some(users))
}
