//! A connection's place in a room's stream, and the local members of each room.
//!
//! A member that joins or resumes holds the room's live messages until its `joined`/`resumed`
//! reply has gone out, then sends only those after the seq that reply named: no gap, no
//! duplicate, and never a message before the reply that introduces it.

use crate::messages::Name;
use crate::outbound::ConnIo;
use bytes::Bytes;
use std::rc::Rc;

/// A connection's place in one room's stream.
pub struct Member {
    pub io: Rc<ConnIo>,
    /// The connection's user (presence counts users; `typing` skips the typist's own).
    pub user: Name,
    /// The request (ticket) whose reply makes this member live.
    pub ticket: u64,
    pub state: MemberState,
}

pub enum MemberState {
    /// Waiting for the `joined`/`resumed` reply to go out; live messages are held meanwhile.
    Waiting(Vec<(u64, Bytes)>),
    /// Sent everything up to this seq.
    Live(u64),
}

impl Member {
    /// Offers one live message; returns whether it was sent now.
    pub fn offer(&mut self, seq: u64, frame: &Bytes) -> bool {
        match &mut self.state {
            MemberState::Waiting(held) => {
                held.push((seq, frame.clone()));
                false
            }
            MemberState::Live(last) => {
                if seq <= *last {
                    return false;
                }
                *last = seq;
                self.io.send(frame.clone());
                true
            }
        }
    }

    /// Sends an event outside the seq stream (`online`, `typing`, ...) if the member is live:
    /// none goes before the `joined` that introduces the member.
    pub fn offer_event(&self, frame: &Bytes) -> bool {
        let live = matches!(self.state, MemberState::Live(_));
        if live {
            self.io.send(frame.clone());
        }
        live
    }

    /// The reply naming `seq` went out: send what was held after it, and go live.
    pub fn go_live(&mut self, seq: u64) -> u64 {
        let mut sent = 0;
        let mut last = seq;
        if let MemberState::Waiting(held) =
            std::mem::replace(&mut self.state, MemberState::Live(seq))
        {
            for (s, frame) in held {
                if s > last {
                    last = s;
                    self.io.send(frame);
                    sent += 1;
                }
            }
        }
        self.state = MemberState::Live(last);
        sent
    }
}

/// Members of one room on this core.
#[derive(Default)]
pub struct LocalRoom {
    pub members: slab::Slab<Member>,
}
