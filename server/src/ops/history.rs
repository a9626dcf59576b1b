//! `history`: a page of a room's past messages.
//!
//! Wire: `{"type":"history","room":R,"before":S?,"limit":N?}` ->
//! `{"type":"history","room":R,"messages":[msg...]}`, ascending by seq: the newest `N` (default
//! 50, at most 100) messages with seq < `S` (all seqs without `before`). Page backwards by
//! passing the smallest seq received as the next `before`; an empty page is the beginning (or
//! the end of what the server still holds). Any room may be read without joining it, except
//! direct-message rooms, which only their two users may read (`forbidden`).

use crate::core::Core;
use crate::messages::{ConnId, CoreMsg};
use crate::messages::{FetchKind, FetchRequest};
use chat_wire::protocol::RequestError;

pub fn apply(
    core: &mut Core,
    conn: ConnId,
    room: &str,
    before: Option<u64>,
    limit: u32,
) -> Result<(), RequestError> {
    super::is_own_dm(room, &core.conns[&conn].user)?;
    ask(core, conn, room, before, limit);
    Ok(())
}

/// Asks the room's owner for the page, with no check of who asks: `apply` after its checks, and
/// the server API, which may read every room (`api/history.rs`).
pub fn ask(core: &mut Core, conn: ConnId, room: &str, before: Option<u64>, limit: u32) {
    let reply = core.ticket(conn, None);
    let kind = FetchKind::History { before, limit };
    core.ask_owner(
        room,
        CoreMsg::Fetch(FetchRequest {
            room: room.into(),
            user: core.conns[&conn].user.clone(),
            kind,
            subscribe: false,
            reply,
            gauge: core.conns[&conn].io.replay_gauge(),
        }),
    );
}
