//! v1.1 in memory: who is present in each room a core owns, `typing` deduplication, and read
//! pointers; the standalone side of [`RoomOwner`](super::super::owner::RoomOwner)'s presence
//! methods.
//!
//! Presence is per user, not per connection: the owner counts each user's connections that are
//! members of the room (cores report every member made or gone, `CoreMsg::PresenceChange`) and
//! sends `online` when the first one comes and `offline` when the last one goes. In a room with
//! more than [`COALESCE_ABOVE`] present users, single events stop: a join or leave there only
//! marks the room, and once a second every member gets one small `presence` frame with the
//! count only (`{"type":"presence","room":R,"count":N}`; the list is a `presence` request away)
//! instead, so a 100,000-member room's churn costs each member ~50 bytes a second, not one
//! frame per change. Read pointers standalone live only in memory, like everything else.

use super::RoomShard;
use crate::bus::owner::reply_msg;
use crate::fanout::user_owner;
use crate::messages::{Channel, CoreMsg, Name, Reply, ReplyTo};
use ahash::{AHashMap, AHashSet};
use bytes::Bytes;
use chat_wire::protocol::{reply, ErrorCode, RequestError};
use std::collections::BTreeMap;

/// Present users above which a room's joins and leaves are coalesced into one `presence`
/// frame a second.
pub const COALESCE_ABOVE: usize = 1000;
/// At most one `typing` per user and room in this many ms.
pub const TYPING_EVERY_MS: u64 = 1000;

/// The v1.1 state of the rooms one core owns.
#[derive(Default)]
pub struct Social {
    /// Room -> its present users, sorted, with their number of member connections.
    present: AHashMap<Name, BTreeMap<Name, u32>>,
    /// Large rooms whose presence changed since their last `presence` frame.
    coalesced: AHashSet<Name>,
    /// `(room, user)` -> when its last `typing` went out, ms.
    pub(super) typing: AHashMap<(Name, Name), u64>,
    /// Room -> user -> read pointer.
    read: AHashMap<Name, AHashMap<Name, u64>>,
}

impl Social {
    pub fn read_pointer(&self, room: &str, user: &str) -> u64 {
        self.read
            .get(room)
            .and_then(|r| r.get(user))
            .copied()
            .unwrap_or(0)
    }
}

impl RoomShard {
    /// Sends `frame` to every core with members of `room`.
    fn to_members(&self, room: &Name, frame: Bytes, except_user: Option<Name>) {
        let Some(state) = self.rooms.get(room) else {
            return;
        };
        for core in state.subscribers.iter() {
            let event = CoreMsg::Event {
                channel: Channel::Room(room.clone()),
                frame: frame.clone(),
                except_user: except_user.clone(),
                except_conn: None,
            };
            self.out.push(core, event);
        }
    }

    pub(super) fn presence_changed(&mut self, room: Name, user: Name, came: bool) {
        let users = self.social.present.entry(room.clone()).or_default();
        let now = {
            let n = users.entry(user.clone()).or_insert(0);
            if came {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
            *n
        };
        let first_or_last = (came && now == 1) || (!came && now == 0);
        if now == 0 {
            users.remove(&user);
        }
        let large = users.len() > COALESCE_ABOVE || (!came && users.len() == COALESCE_ABOVE);
        if users.is_empty() {
            self.social.present.remove(&room);
            super::shrink_if_sparse(&mut self.social.present);
        }
        if !first_or_last {
            return;
        }
        if large {
            self.social.coalesced.insert(room);
            return;
        }
        let frame = if came {
            reply::online(&room, &user)
        } else {
            reply::offline(&room, &user)
        };
        self.to_members(&room, frame, None);
    }

    fn presence_frame(&self, room: &str) -> Bytes {
        match self.social.present.get(room) {
            Some(users) => reply::presence(room, users.len(), users.keys().map(|u| &u[..])),
            None => reply::presence(room, 0, []),
        }
    }

    pub(super) fn answer_presence(&mut self, room: Name, to: ReplyTo) {
        let frame = self.presence_frame(&room);
        self.out
            .push(to.core, reply_msg(to, Reply::Frames(vec![frame])));
    }

    pub(super) fn answer_dm_presence(&mut self, room: Name, asker: Name, other: Name, to: ReplyTo) {
        let mut users = vec![&asker[..]];
        if self.users.contains_key(&other) {
            users.push(&other[..]);
        }
        users.sort_unstable();
        let frame = reply::presence(&room, users.len(), users.iter().copied());
        self.out
            .push(to.core, reply_msg(to, Reply::Frames(vec![frame])));
    }

    pub(super) fn typed(&mut self, room: Name, user: Name, now_ms: u64) {
        let key = (room.clone(), user.clone());
        match self.social.typing.get(&key) {
            Some(&last) if now_ms < last + TYPING_EVERY_MS => return,
            _ => {}
        }
        self.social.typing.insert(key, now_ms);
        let frame = reply::typing(&room, &user);
        match chat_wire::protocol::dm_members(&room) {
            Some((a, b)) => {
                let other: Name = if *a == *user { b } else { a }.into();
                let msg = CoreMsg::ToUser {
                    user: other.clone(),
                    frame,
                    except: None,
                };
                self.out.push(user_owner(&other, self.cores), msg);
            }
            None => self.to_members(&room, frame, Some(user)),
        }
    }

    pub(super) fn advance_read(&mut self, room: Name, user: Name, seq: u64, to: ReplyTo) {
        let latest = self.rooms.get(&room).map_or(0, |s| s.seq);
        if seq > latest {
            let e = RequestError::new(
                ErrorCode::BadRequest,
                format!("seq {seq} is past the room's latest message ({latest})"),
            );
            let frames = vec![reply::error(&e)];
            self.out.push(to.core, reply_msg(to, Reply::Frames(frames)));
            return;
        }
        let pointer = self
            .social
            .read
            .entry(room.clone())
            .or_default()
            .entry(user.clone())
            .or_insert(0);
        let moved = seq > *pointer;
        *pointer = (*pointer).max(seq);
        let frame = reply::read(&room, *pointer);
        if moved {
            let msg = CoreMsg::ToUser {
                user: user.clone(),
                frame: frame.clone(),
                except: Some(to),
            };
            self.out.push(user_owner(&user, self.cores), msg);
        }
        self.out
            .push(to.core, reply_msg(to, Reply::Frames(vec![frame])));
    }

    pub(super) fn relay_to_user(&mut self, user: Name, frame: Bytes, except: Option<ReplyTo>) {
        let Some(cores) = self.users.get(&user) else {
            return;
        };
        for core in cores.iter() {
            let event = CoreMsg::Event {
                channel: Channel::User(user.clone()),
                frame: frame.clone(),
                except_user: None,
                except_conn: except.filter(|e| e.core == core).map(|e| e.conn),
            };
            self.out.push(core, event);
        }
    }

    /// Once a second: the coalesced `presence` frames of large rooms, and forgetting old
    /// `typing` marks.
    pub fn tick(&mut self, now_ms: u64) {
        for room in std::mem::take(&mut self.social.coalesced) {
            let count = self.social.present.get(&room).map_or(0, |u| u.len());
            let frame = reply::presence_count(&room, count);
            self.to_members(&room, frame, None);
        }
        self.social
            .typing
            .retain(|_, last| now_ms < *last + TYPING_EVERY_MS);
        super::shrink_if_sparse(&mut self.social.typing);
    }
}
