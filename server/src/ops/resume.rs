//! `resume`: join a room and catch up from a known seq.
//!
//! Wire: `{"type":"resume","room":R,"after":A}` -> every `msg` of the room with seq > `A`, in
//! order, then `{"type":"resumed","room":R,"seq":S,"read":P,"complete":B}` (`P`: the user's
//! read pointer, v1.1); live messages with seq > `S`
//! follow with no gap and no duplicate.
//!
//! `complete` is false when some messages after `A` are no longer held (evicted from the recent
//! history); what is sent then is the newest run the server still has. Resuming a room the
//! connection is already in restarts its position at `A`. Direct-message rooms: their two users
//! only (`forbidden`), and they need no join. The limits of `join` apply (`--max-rooms-per-conn`,
//! `--room-rate-limit`).

use crate::core::Core;
use crate::members::{Member, MemberState};
use crate::messages::{ConnId, CoreMsg, Name};
use crate::messages::{FetchKind, FetchRequest};
use chat_wire::protocol::RequestError;

pub fn apply(core: &mut Core, conn: ConnId, room: &str, after: u64) -> Result<(), RequestError> {
    let own_dm = super::is_own_dm(room, &core.conns[&conn].user)?;
    let room: Name = room.into();
    if !own_dm && !core.conns[&conn].rooms.contains_key(&room) {
        super::may_add_room(core, conn)?;
    }
    let reply = core.ticket(conn, None);
    let gauge = core.conns[&conn].io.replay_gauge();
    let kind = FetchKind::Resume { after };
    let mut subscribe = false;
    if own_dm {
        let c = core.conns.get_mut(&conn).unwrap();
        let member = Member {
            io: c.io.clone(),
            user: c.user.clone(),
            ticket: reply.ticket,
            state: MemberState::Waiting(Vec::new()),
        };
        c.dm_positions.insert(room.clone(), member);
    } else if let Some(&key) = core.conns[&conn].rooms.get(&room) {
        // Already a member: hold live messages again until this resume's reply is out.
        let member = &mut core.rooms.get_mut(&room).expect("member's room").members[key];
        member.ticket = reply.ticket;
        member.state = MemberState::Waiting(Vec::new());
    } else {
        subscribe = core.add_member(&room, conn, reply.ticket);
    }
    core.ask_owner(
        &room.clone(),
        CoreMsg::Fetch(FetchRequest {
            room,
            user: core.conns[&conn].user.clone(),
            kind,
            subscribe,
            reply,
            gauge,
        }),
    );
    Ok(())
}
