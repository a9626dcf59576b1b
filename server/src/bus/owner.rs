//! A room's owner: the one place its seq lives, and what every core asks of it.
//!
//! Standalone, each room is owned by one core's [`RoomShard`](super::memory::RoomShard); in
//! cluster mode every room is owned by the node's bus thread, in front of Redis
//! ([`super::cluster`]). A core does not know which: it sends the request to the room's owner's
//! mailbox ([`crate::fanout::owner_of`], or the bus's), and the owner answers with finished
//! frames ([`Reply`]) that the core sends in request order. So the core code is the same in
//! both modes, and a message of the wrong kind is refused in one place ([`RoomOwner::handle`]).

use crate::messages::ReplyTo;
use crate::messages::{Channel, CoreId, CoreMsg, FetchRequest, Name, PublishRequest, Reply};
use bytes::Bytes;

/// What a room's owner does. Answers go to `reply.core` as `CoreMsg::Reply` ([`Reply`]).
pub trait RoomOwner {
    /// Assigns the next seq, stores the message, fans it out, and acks (or answers a `cid`
    /// retry with its first ack).
    fn publish(&mut self, req: PublishRequest);
    /// Answers `joined` with the room's latest seq; with `subscribe`, also starts delivering
    /// the room to `reply.core`.
    fn join(&mut self, room: Name, subscribe: bool, reply: ReplyTo);
    /// A `history` page or a `resume`, paced by its gauge where the owner reads page by page.
    fn fetch(&mut self, req: FetchRequest);
    fn subscribe(&mut self, channel: Channel, core: CoreId);
    fn unsubscribe(&mut self, channel: Channel, core: CoreId);
    /// A direct message for the cores where `user` is connected.
    fn forward_to_user(&mut self, user: Name, room: Name, seq: u64, frame: Bytes);

    /// Hands one message to the method for it; gives back a message that is not for an owner.
    fn handle(&mut self, msg: CoreMsg) -> Result<(), Box<CoreMsg>> {
        match msg {
            CoreMsg::Publish(req) => self.publish(req),
            CoreMsg::Join {
                room,
                subscribe,
                reply,
            } => self.join(room, subscribe, reply),
            CoreMsg::Fetch(req) => self.fetch(req),
            CoreMsg::Subscribe { channel, core } => self.subscribe(channel, core),
            CoreMsg::Unsubscribe { channel, core } => self.unsubscribe(channel, core),
            CoreMsg::ForwardToUser {
                user,
                room,
                seq,
                frame,
            } => self.forward_to_user(user, room, seq, frame),
            other => return Err(Box::new(other)),
        }
        Ok(())
    }
}

/// Where a finished reply goes.
pub fn reply_msg(to: ReplyTo, reply: Reply) -> CoreMsg {
    CoreMsg::Reply { to, reply }
}
