//! `join`: become a member of a room.
//!
//! Wire: `{"type":"join","room":R}` -> `{"type":"joined","room":R,"seq":S,"read":P}`.
//!
//! `S` is the room's latest seq (0 if none) when the owner serves the request, `P` the user's
//! read pointer in the room (v1.1; 0 if none), so that `S - P` messages are unread. From then on the
//! connection receives every `msg` of the room with seq > `S`, live, in order; none comes before
//! the `joined` reply. Joining a room again only reports the latest seq. A direct-message room
//! can be "joined" by its two users (they are members anyway); anyone else gets `forbidden`.
//! Beyond `--max-rooms-per-conn` rooms: `forbidden`; beyond `--room-rate-limit` join, history
//! and resume requests per second: `rate_limited`.

use crate::core::Core;
use crate::messages::{ConnId, CoreMsg, Name};
use chat_wire::protocol::RequestError;

pub fn apply(core: &mut Core, conn: ConnId, room: &str) -> Result<(), RequestError> {
    let own_dm = super::is_own_dm(room, &core.conns[&conn].user)?;
    let room: Name = room.into();
    let member = own_dm || core.conns[&conn].rooms.contains_key(&room);
    if !member {
        super::may_add_room(core, conn)?;
    }
    let reply = core.ticket(conn, None);
    let subscribe = if member {
        false
    } else {
        core.add_member(&room, conn, reply.ticket)
    };
    core.ask_owner(
        &room.clone(),
        CoreMsg::Join {
            room,
            user: core.conns[&conn].user.clone(),
            subscribe,
            reply,
        },
    );
    Ok(())
}
