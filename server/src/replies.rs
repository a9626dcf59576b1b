//! A connection's replies, released in request order.
//!
//! Every request takes a ticket in its connection's [`ReplyQueue`]; a reply that arrives
//! early (from another core, from the bus thread) waits for those before it. The first frames
//! of a long reply (a `resume` read page by page from PostgreSQL) may go ahead of their reply
//! once every reply before it is out.

use crate::messages::Reply;
use ahash::AHashMap;
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Instant;

/// Replies of one connection, released in request order.
#[derive(Default)]
pub struct ReplyQueue {
    next_ticket: u64,
    /// `(ticket, reply once known, when a timed request was read)`, ascending by ticket.
    slots: VecDeque<(u64, Option<Reply>, Option<Instant>)>,
    /// The first frames of replies that are not at the front yet (`Reply::ResumePart`).
    early: AHashMap<u64, Vec<Bytes>>,
}

impl ReplyQueue {
    pub fn reserve(&mut self) -> u64 {
        self.reserve_timed(None)
    }

    /// A ticket whose reply's latency is measured from `read` (sends: `chat_ack_latency_seconds`).
    pub fn reserve_timed(&mut self, read: Option<Instant>) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.slots.push_back((t, None, read));
        t
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Frames that open the reply to `ticket`: given back to be sent now when every reply
    /// before it is out, else kept until the reply is complete and its turn comes (`None`).
    pub fn part(&mut self, ticket: u64, frames: Vec<Bytes>) -> Option<Vec<Bytes>> {
        if self.slots.front().is_some_and(|s| s.0 == ticket) && !self.early.contains_key(&ticket) {
            return Some(frames);
        }
        if self.slots.iter().any(|s| s.0 == ticket) {
            self.early.entry(ticket).or_default().extend(frames);
        }
        None
    }

    pub fn fill(&mut self, ticket: u64, ready: Reply) {
        let Some(front) = self.slots.front().map(|s| s.0) else {
            return;
        };
        if let Some(slot) = ticket
            .checked_sub(front)
            .and_then(|i| self.slots.get_mut(i as usize))
        {
            debug_assert_eq!(slot.0, ticket);
            slot.1 = Some(ready);
        }
    }

    /// The front reply once complete, with the frames that came before it (`part`).
    pub fn pop_ready(&mut self) -> Option<(u64, Vec<Bytes>, Reply, Option<Instant>)> {
        if matches!(self.slots.front(), Some((_, Some(_), _))) {
            let (t, r, read) = self.slots.pop_front().unwrap();
            let early = self.early.remove(&t).unwrap_or_default();
            return Some((t, early, r.unwrap(), read));
        }
        None
    }

    /// Frames held for the front reply, to send now that it is at the front.
    pub fn take_front_early(&mut self) -> Option<Vec<Bytes>> {
        let front = self.slots.front()?.0;
        self.early.remove(&front)
    }
}
