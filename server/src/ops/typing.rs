//! `typing` (v1.1): tell the room's other members that this user is typing.
//!
//! Wire: `{"type":"typing","room":R}`, no reply; every connection of every other member of `R`
//! gets `{"type":"typing","room":R,"from":U}` (in a direct-message room: the other user's
//! connections). Ephemeral: never stored, never in Kafka, never replayed. At most one per user
//! and room a second reaches anyone (the room's owner drops the rest silently; so does the
//! connection's core once the connection is over its `send` rate). The connection must have
//! joined `R` or be one of its direct-message users (`not_joined` / `forbidden`).

use crate::core::Core;
use crate::messages::{ConnId, CoreMsg};
use chat_wire::protocol::RequestError;
use std::time::Instant;

pub fn apply(core: &mut Core, conn: ConnId, room: &str) -> Result<(), RequestError> {
    super::member_of(core, conn, room)?;
    let cfg = &core.node.config;
    let (rate, burst) = (cfg.rate_limit, cfg.rate_burst);
    let c = core.conns.get_mut(&conn).expect("a live connection");
    if !c.rate.take(rate, burst, Instant::now()) {
        return Ok(());
    }
    let msg = CoreMsg::Typing {
        room: room.into(),
        user: c.user.clone(),
    };
    core.ask_owner(room, msg);
    Ok(())
}
