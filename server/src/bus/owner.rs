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
    /// Answers `joined` with the room's latest seq and `user`'s read pointer; with
    /// `subscribe`, also starts delivering the room to `reply.core`.
    fn join(&mut self, room: Name, user: Name, subscribe: bool, reply: ReplyTo);
    /// A `history` page or a `resume`, paced by its gauge where the owner reads page by page.
    fn fetch(&mut self, req: FetchRequest);
    fn subscribe(&mut self, channel: Channel, core: CoreId);
    fn unsubscribe(&mut self, channel: Channel, core: CoreId);
    /// A direct message for the cores where `user` is connected.
    fn forward_to_user(&mut self, user: Name, room: Name, seq: u64, frame: Bytes);

    // ---- v1.1 (presence.rs of each owner) ----
    /// One more or one fewer connection of `user` in `room`: `online`/`offline` to the room's
    /// members when the user's first connection came or last one went.
    fn presence_change(&mut self, room: Name, user: Name, came: bool);
    /// Answers `presence`: the users with a connection in the room.
    fn presence(&mut self, room: Name, reply: ReplyTo);
    /// Answers `presence` for a direct-message room of `asker` and `other`.
    fn dm_presence(&mut self, room: Name, asker: Name, other: Name, reply: ReplyTo);
    /// `typing` to the other members, at most once per user and room a second.
    fn typing(&mut self, room: Name, user: Name);
    /// Moves the read pointer up, answers with it, and tells the user's other connections.
    fn read(&mut self, room: Name, user: Name, seq: u64, reply: ReplyTo);
    /// A frame for every connection of `user` but `except`.
    fn to_user(&mut self, user: Name, frame: Bytes, except: Option<ReplyTo>);

    /// Hands one message to the method for it; gives back a message that is not for an owner.
    fn handle(&mut self, msg: CoreMsg) -> Result<(), Box<CoreMsg>> {
        match msg {
            CoreMsg::Publish(req) => self.publish(req),
            CoreMsg::Join {
                room,
                user,
                subscribe,
                reply,
            } => self.join(room, user, subscribe, reply),
            CoreMsg::Fetch(req) => self.fetch(req),
            CoreMsg::Subscribe { channel, core } => self.subscribe(channel, core),
            CoreMsg::Unsubscribe { channel, core } => self.unsubscribe(channel, core),
            CoreMsg::ForwardToUser {
                user,
                room,
                seq,
                frame,
            } => self.forward_to_user(user, room, seq, frame),
            CoreMsg::PresenceChange { room, user, came } => self.presence_change(room, user, came),
            CoreMsg::Presence { room, reply } => self.presence(room, reply),
            CoreMsg::DmPresence {
                room,
                asker,
                other,
                reply,
            } => self.dm_presence(room, asker, other, reply),
            CoreMsg::Typing { room, user } => self.typing(room, user),
            CoreMsg::Read {
                room,
                user,
                seq,
                reply,
            } => self.read(room, user, seq, reply),
            CoreMsg::ToUser {
                user,
                frame,
                except,
            } => self.to_user(user, frame, except),
            other => return Err(Box::new(other)),
        }
        Ok(())
    }
}

/// Where a finished reply goes.
pub fn reply_msg(to: ReplyTo, reply: Reply) -> CoreMsg {
    CoreMsg::Reply { to, reply }
}
