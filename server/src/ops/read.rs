//! `read` (v1.1): move the user's read pointer in a room.
//!
//! Wire: `{"type":"read","room":R,"seq":S}` -> `{"type":"read","room":R,"seq":P}` where `P` is
//! the pointer now, max(old, `S`): pointers never go back. When it moved, every other
//! connection of the user (any node) gets the same `read` frame, so all devices agree; `joined`
//! and `resumed` carry the pointer as `read`, and unread = `seq` - `read`. `S` past the room's
//! latest seq is `bad_request`. Any room the user may read: ordinary rooms need no join (a
//! device marks what another read), direct-message rooms only their two users (`forbidden`).
//! Standalone the pointers live in memory; in cluster mode in Redis and PostgreSQL (durable
//! before the answer; `bus/cluster/read_pointers.rs`).

use crate::core::Core;
use crate::messages::{ConnId, CoreMsg};
use chat_wire::protocol::RequestError;

pub fn apply(core: &mut Core, conn: ConnId, room: &str, seq: u64) -> Result<(), RequestError> {
    let user = core.conns[&conn].user.clone();
    super::is_own_dm(room, &user)?;
    let reply = core.ticket(conn, None);
    let msg = CoreMsg::Read {
        room: room.into(),
        user,
        seq,
        reply,
    };
    core.ask_owner(room, msg);
    Ok(())
}
