//! The bus as the owner of every room in cluster mode: each request a core sends becomes a
//! task on the bus thread (the sends of one turn are batched per core first, for `publish`).

use super::Bus;
use crate::bus::owner::RoomOwner;
use crate::messages::{Channel, CoreId, FetchRequest, Name, PublishRequest, ReplyTo};
use bytes::Bytes;
use std::rc::Rc;

pub(super) struct ClusterOwner {
    bus: Rc<Bus>,
    /// This turn's sends, per core (taken by the bus's main loop after each batch of mail).
    pub(super) publishes: Vec<Vec<PublishRequest>>,
}

impl ClusterOwner {
    pub(super) fn new(bus: Rc<Bus>) -> ClusterOwner {
        let publishes = (0..bus.node.threads).map(|_| Vec::new()).collect();
        ClusterOwner { bus, publishes }
    }
}

impl RoomOwner for ClusterOwner {
    fn publish(&mut self, req: PublishRequest) {
        self.publishes[req.reply.core].push(req);
    }

    fn join(&mut self, room: Name, user: Name, subscribe: bool, reply: ReplyTo) {
        tokio::task::spawn_local(Bus::join(self.bus.clone(), room, user, subscribe, reply));
    }

    fn fetch(&mut self, req: FetchRequest) {
        tokio::task::spawn_local(Bus::fetch(self.bus.clone(), req));
    }

    fn subscribe(&mut self, channel: Channel, core: CoreId) {
        match channel {
            Channel::User(user) => self.bus.subscribe_user(user, core),
            // A room's channel is subscribed by the join or resume that needs it.
            Channel::Room(room) => tracing::error!(%room, "room subscribe outside a join"),
        }
    }

    fn unsubscribe(&mut self, channel: Channel, core: CoreId) {
        self.bus.unsubscribe(channel, core);
    }

    fn forward_to_user(&mut self, user: Name, _room: Name, _seq: u64, _frame: Bytes) {
        // Direct messages reach a user's nodes through the user's Redis channel.
        tracing::error!(%user, "forward_to_user on the cluster bus");
    }

    fn presence_change(&mut self, room: Name, user: Name, came: bool) {
        self.bus.presence_change(room, user, came);
    }

    fn presence(&mut self, room: Name, reply: ReplyTo) {
        tokio::task::spawn_local(Bus::presence(self.bus.clone(), room, reply));
    }

    fn dm_presence(&mut self, room: Name, asker: Name, other: Name, reply: ReplyTo) {
        let bus = self.bus.clone();
        tokio::task::spawn_local(Bus::dm_presence(bus, room, asker, other, reply));
    }

    fn typing(&mut self, room: Name, user: Name) {
        tokio::task::spawn_local(Bus::typing(self.bus.clone(), room, user));
    }

    fn read(&mut self, room: Name, user: Name, seq: u64, reply: ReplyTo) {
        tokio::task::spawn_local(Bus::read(self.bus.clone(), room, user, seq, reply));
    }

    fn to_user(&mut self, user: Name, _frame: Bytes, _except: Option<ReplyTo>) {
        // Events for a user's connections travel on the user's Redis channel.
        tracing::error!(%user, "to_user on the cluster bus");
    }
}
