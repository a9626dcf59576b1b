//! `presence` (v1.1): who is in a room now.
//!
//! Wire: `{"type":"presence","room":R}` -> `{"type":"presence","room":R,"count":N,"users":[U...]}`,
//! `users` sorted and at most 1000 of them, `count` exact. A user counts once however many
//! connections (on however many nodes) are members. The connection must have joined `R`
//! (`not_joined`), or `R` is one of its own direct-message rooms: then the answer lists which of
//! the two users is connected anywhere (`forbidden` for someone else's).
//!
//! Members also get, unasked, `{"type":"online","room":R,"user":U}` when a user's first
//! connection joins and `{"type":"offline",...}` when the last one leaves or closes (in rooms
//! with more than 1000 present users: one `presence` event with the count only, a second, see
//! `bus/memory/presence.rs`).

use crate::core::Core;
use crate::messages::{ConnId, CoreMsg, Name};
use chat_wire::protocol::{dm_members, RequestError};

pub fn apply(core: &mut Core, conn: ConnId, room: &str) -> Result<(), RequestError> {
    let user = core.conns[&conn].user.clone();
    if super::is_own_dm(room, &user)? {
        let (a, b) = dm_members(room).expect("checked");
        let other: Name = if *a == *user { b } else { a }.into();
        let reply = core.ticket(conn, None);
        let msg = CoreMsg::DmPresence {
            room: room.into(),
            asker: user,
            other: other.clone(),
            reply,
        };
        core.out.push(core.node.route_user(&other), msg);
        return Ok(());
    }
    super::member_of(core, conn, room)?;
    let reply = core.ticket(conn, None);
    core.ask_owner(
        room,
        CoreMsg::Presence {
            room: room.into(),
            reply,
        },
    );
    Ok(())
}
