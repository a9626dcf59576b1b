//! v1.1 in cluster mode: presence and typing, through Redis
//! ([`crate::bus::redis_presence`] has the keys and Lua steps).
//!
//! **Presence costs nothing per chat message.** The node counts its own member connections
//! per (room, user) and tells Redis only when a user's first one here comes or the last one
//! goes, through one task that runs those steps in order (each step is idempotent, and reads
//! the node's state when it runs, so the last word always wins). Every `--presence-ttl`/3 the
//! node writes its heartbeat in `chat:nodes` and looks for nodes whose heartbeat is older than
//! the TTL: one live node takes a dead node's lock and removes its entries, room by room,
//! which sends `offline` for the users who were only there. A node that finds its own
//! heartbeat gone (Redis restarted empty, or it was taken for dead) writes all of its presence
//! again. Rooms with more than [`COALESCE_ABOVE`] present users get one `presence` frame a
//! second instead of single events, as standalone.
//!
//! Read pointers: [`super::read_pointers`].

use super::resp::value_u64;
use super::Bus;
use crate::bus::memory::COALESCE_ABOVE;
use crate::bus::redis::{self as keys, key_slot};
use crate::bus::redis_presence::{self as pkeys, split_event};
use crate::messages::{Channel, CoreMsg, Name, Reply, ReplyTo};
use ahash::{AHashMap, AHashSet};
use bytes::Bytes;
use chat_wire::frame::{encode_frame, OpCode};
use chat_wire::protocol::{reply, ErrorCode};
use redis::Value;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What the node knows of its own presence.
#[derive(Default)]
pub(super) struct Social {
    /// (room, user) -> member connections of the user in the room on this node.
    present: AHashMap<(Name, Name), u32>,
    /// Large rooms whose coalesced `presence` frame is due.
    coalesced: AHashSet<Name>,
    /// Steps for the presence task, in order.
    queue: Option<mpsc::UnboundedSender<Step>>,
    /// Whether this node's heartbeat has been written once (after that, a heartbeat that
    /// creates the field again means Redis forgot this node).
    registered: bool,
}

/// A change the presence task brings to Redis.
enum Step {
    Room(Name, Name),
    User(Name),
}

pub(super) fn json_str(s: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    chat_wire::protocol::put_json_str(&mut out, s);
    out.to_vec()
}

impl Bus {
    pub(super) fn node_hex(&self) -> String {
        format!("{:x}", self.node.node_id)
    }

    fn publish_mode(&self) -> &'static [u8] {
        if self.redis().is_cluster() {
            b"s"
        } else {
            b"p"
        }
    }

    pub(super) async fn eval_text(
        &self,
        lua: &str,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Option<Value> {
        let slot = key_slot(&keys[0]);
        let sha = redis::Script::new(lua).get_hash().to_string();
        let by_sha = super::resp::evalsha(&sha, keys, args);
        let mut answer = self.run_retrying(&[(slot, by_sha)]).await;
        if matches!(&answer, Ok(v) if matches!(v.first(), Some(Err(e)) if e.code() == Some("NOSCRIPT")))
        {
            // Redis does not have it (yet, or any more): the text once, which caches it.
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(lua).arg(keys.len());
            keys.iter().for_each(|k| {
                cmd.arg(k);
            });
            args.iter().for_each(|a| {
                cmd.arg(&a[..]);
            });
            answer = self.run_retrying(&[(slot, cmd)]).await;
        }
        match answer {
            Ok(mut v) => match v.pop() {
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "presence step failed");
                    None
                }
                None => None,
            },
            Err(e) => {
                tracing::warn!(error = %e, "presence step failed");
                None
            }
        }
    }

    /// Starts the presence task and the heartbeat (from `run`).
    pub(super) fn start_social(self: &Rc<Self>) {
        let bus = self.clone();
        tokio::task::spawn_local(async move {
            // So that the first steps find their script (a NOSCRIPT also loads it later).
            if let Err(e) = bus.redis().load_script(pkeys::PRESENCE_LUA).await {
                tracing::warn!(error = %e, "SCRIPT LOAD of the presence step failed");
            }
        });
        let (tx, rx) = mpsc::unbounded_channel();
        self.social.borrow_mut().queue = Some(tx);
        tokio::task::spawn_local(self.clone().presence_task(rx));
        tokio::task::spawn_local(self.clone().heartbeat());
    }

    fn queue(&self, step: Step) {
        if let Some(q) = &self.social.borrow().queue {
            let _ = q.send(step);
        }
    }

    pub(super) fn presence_change(&self, room: Name, user: Name, came: bool) {
        let edge = {
            let mut s = self.social.borrow_mut();
            let key = (room.clone(), user.clone());
            let n = s.present.entry(key.clone()).or_insert(0);
            if came {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
            let now = *n;
            if now == 0 {
                s.present.remove(&key);
            }
            (came && now == 1) || (!came && now == 0)
        };
        if edge {
            self.queue(Step::Room(room, user));
        }
    }

    /// The user's first connection on this node came or the last went (user channel
    /// subscribed or not): `chat:node:{N}:users`.
    pub(super) fn user_changed(&self, user: Name) {
        self.queue(Step::User(user));
    }

    /// Runs the queued steps: everything queued since the last round trip goes as one
    /// pipeline, in order (each step reads the node's state when it is built, and is
    /// idempotent, so a retried or merged batch ends where the node's state says).
    async fn presence_task(self: Rc<Self>, mut steps: mpsc::UnboundedReceiver<Step>) {
        let node = self.node_hex();
        let sha = redis::Script::new(pkeys::PRESENCE_LUA)
            .get_hash()
            .to_string();
        while let Some(first) = steps.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = steps.try_recv() {
                batch.push(more);
            }
            let mut cmds = Vec::with_capacity(batch.len() * 2);
            let mut rooms = Vec::new();
            for step in batch {
                match step {
                    Step::Room(room, user) => {
                        let step = self.room_step(&node, &sha, &room, &user);
                        rooms.push((room.clone(), cmds.len() + step.len() - 1));
                        cmds.extend(step);
                    }
                    Step::User(user) => {
                        let here = self.state.borrow().users.contains_key(&user);
                        let mut cmd = redis::cmd(if here { "SADD" } else { "SREM" });
                        let key = pkeys::node_users_key(&node);
                        cmd.arg(&key).arg(&user[..]);
                        cmds.push((key_slot(&key), cmd));
                    }
                }
            }
            let answers = match self.run_retrying(&cmds).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, steps = cmds.len(), "presence steps failed");
                    continue;
                }
            };
            if answers
                .iter()
                .any(|a| matches!(a, Err(e) if e.code() == Some("NOSCRIPT")))
            {
                // Redis restarted and forgot the script: load it, and run the batch again.
                let _ = self.redis().load_script(pkeys::PRESENCE_LUA).await;
                let _ = self.run_retrying(&cmds).await;
                continue;
            }
            for (room, at) in rooms {
                if let Some(Ok(Value::Array(r))) = answers.get(at) {
                    let (changed, n) = (value_u64(&r[0]), value_u64(&r[1]) as usize);
                    if changed == 1 && n >= COALESCE_ABOVE {
                        self.social.borrow_mut().coalesced.insert(room);
                    }
                }
            }
        }
    }

    /// The commands of one room step: `SADD` of the room to this node's rooms when the user
    /// came, then the presence script (always last).
    fn room_step(&self, node: &str, sha: &str, room: &Name, user: &Name) -> Vec<(u16, redis::Cmd)> {
        let here = self
            .social
            .borrow()
            .present
            .contains_key(&(room.clone(), user.clone()));
        let mut cmds = Vec::with_capacity(2);
        if here {
            let rooms_key = pkeys::node_rooms_key(node);
            let mut sadd = redis::cmd("SADD");
            sadd.arg(&rooms_key).arg(&room[..]);
            cmds.push((key_slot(&rooms_key), sadd));
        }
        let event = if here {
            reply::online(room, user)
        } else {
            reply::offline(room, user)
        };
        let args = vec![
            user.as_bytes().to_vec(),
            node.as_bytes().to_vec(),
            if here { b"+".to_vec() } else { b"-".to_vec() },
            self.publish_mode().to_vec(),
            keys::room_channel(room).into_bytes(),
            pkeys::event_payload("", &chat_wire::frame::payload_of(&event)),
            COALESCE_ABOVE.to_string().into_bytes(),
        ];
        let keys = [
            pkeys::present_nodes_key(room),
            pkeys::present_users_key(room),
        ];
        cmds.push((key_slot(&keys[0]), super::resp::evalsha(sha, &keys, &args)));
        cmds
    }

    /// Heartbeat, reaping of dead nodes, coalesced presence: once a second, the heartbeat
    /// every `--presence-ttl`/3.
    async fn heartbeat(self: Rc<Self>) {
        let ttl_ms = self.cfg.presence_ttl.as_millis().max(1000) as u64;
        let every = (ttl_ms / 3).max(500);
        let node = self.node_hex();
        let mut last_beat = 0;
        let mut tick =
            tokio::time::interval(Duration::from_secs(1).min(Duration::from_millis(every)));
        loop {
            tick.tick().await;
            let now = super::dm_index::now_ms();
            let due = std::mem::take(&mut self.social.borrow_mut().coalesced);
            for room in due {
                self.publish_presence(&room).await;
            }
            if now < last_beat + every {
                continue;
            }
            last_beat = now;
            let mut hset = redis::cmd("HSET");
            hset.arg(pkeys::NODES_KEY).arg(&node).arg(now);
            let mut all = redis::cmd("HGETALL");
            all.arg(pkeys::NODES_KEY);
            let slot = key_slot(pkeys::NODES_KEY);
            let Ok(answers) = self.run_retrying(&[(slot, hset), (slot, all)]).await else {
                continue;
            };
            let mut answers = answers.into_iter();
            let created = matches!(answers.next(), Some(Ok(Value::Int(1))));
            let forgotten = std::mem::replace(&mut self.social.borrow_mut().registered, true);
            if created && forgotten {
                tracing::warn!("Redis forgot this node's presence; writing it again");
                self.register_again();
            }
            if let Some(Ok(nodes)) = answers.next() {
                for (other, beat) in node_beats(nodes) {
                    if other != node && beat + ttl_ms < now {
                        self.clone().reap(&other).await;
                    }
                }
            }
        }
    }

    fn register_again(&self) {
        let rooms: Vec<(Name, Name)> = self.social.borrow().present.keys().cloned().collect();
        for (room, user) in rooms {
            self.queue(Step::Room(room, user));
        }
        let users: Vec<Name> = self.state.borrow().users.keys().cloned().collect();
        for user in users {
            self.queue(Step::User(user));
        }
    }

    /// Takes a dead node's presence away (if no other node is at it).
    async fn reap(self: Rc<Self>, dead: &str) {
        let lock = pkeys::reap_lock_key(dead);
        let mut set = redis::cmd("SET");
        set.arg(&lock)
            .arg(self.node_hex())
            .arg("NX")
            .arg("EX")
            .arg(30);
        match self.run_retrying(&[(key_slot(&lock), set)]).await {
            Ok(v)
                if matches!(
                    v.first(),
                    Some(Ok(Value::Okay)) | Some(Ok(Value::SimpleString(_)))
                ) => {}
            _ => return,
        }
        let rooms_key = pkeys::node_rooms_key(dead);
        let mut members = redis::cmd("SMEMBERS");
        members.arg(&rooms_key);
        let rooms: Vec<String> = match self.run_retrying(&[(key_slot(&rooms_key), members)]).await {
            Ok(mut v) => match v.pop() {
                Some(Ok(Value::Array(items))) | Some(Ok(Value::Set(items))) => items
                    .iter()
                    .filter_map(super::resp::bulk)
                    .filter_map(|b| String::from_utf8(b).ok())
                    .collect(),
                _ => Vec::new(),
            },
            Err(_) => return,
        };
        tracing::info!(
            node = dead,
            rooms = rooms.len(),
            "reaping a dead node's presence"
        );
        for room in &rooms {
            let keys = [
                pkeys::present_nodes_key(room),
                pkeys::present_users_key(room),
            ];
            let args = vec![
                dead.as_bytes().to_vec(),
                self.publish_mode().to_vec(),
                keys::room_channel(room).into_bytes(),
                json_str(room),
                COALESCE_ABOVE.to_string().into_bytes(),
            ];
            if let Some(Value::Array(r)) = self.eval_text(pkeys::REAP_LUA, &keys, &args).await {
                if value_u64(&r[0]) > 0 && value_u64(&r[1]) as usize > COALESCE_ABOVE {
                    self.social
                        .borrow_mut()
                        .coalesced
                        .insert(room.as_str().into());
                }
            }
        }
        for key in [rooms_key, pkeys::node_users_key(dead)] {
            let mut del = redis::cmd("DEL");
            del.arg(&key);
            let _ = self.run_retrying(&[(key_slot(&key), del)]).await;
        }
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(pkeys::NODES_KEY).arg(dead);
        let _ = self
            .run_retrying(&[(key_slot(pkeys::NODES_KEY), hdel)])
            .await;
    }

    /// The room's present users, sorted (`HKEYS` of `chat:{R}:pu`).
    async fn present_users(&self, room: &str) -> Option<Vec<String>> {
        let key = pkeys::present_users_key(room);
        let mut cmd = redis::cmd("HKEYS");
        cmd.arg(&key);
        let mut v = self.run_retrying(&[(key_slot(&key), cmd)]).await.ok()?;
        let mut users: Vec<String> = match v.pop()? {
            Ok(Value::Array(items)) | Ok(Value::Set(items)) => items
                .iter()
                .filter_map(super::resp::bulk)
                .filter_map(|b| String::from_utf8(b).ok())
                .collect(),
            _ => return None,
        };
        users.sort_unstable();
        Some(users)
    }

    async fn publish_presence(&self, room: &Name) {
        let key = pkeys::present_users_key(room);
        let mut hlen = redis::cmd("HLEN");
        hlen.arg(&key);
        let count = match self.run_retrying(&[(key_slot(&key), hlen)]).await {
            Ok(mut v) => match v.pop() {
                Some(Ok(n)) => value_u64(&n) as usize,
                _ => return,
            },
            Err(_) => return,
        };
        let frame = reply::presence_count(room, count);
        let channel = keys::room_channel(room);
        let mut cmd = redis::cmd(if self.redis().is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        cmd.arg(&channel).arg(pkeys::event_payload(
            "",
            &chat_wire::frame::payload_of(&frame),
        ));
        let _ = self.run_retrying(&[(key_slot(&channel), cmd)]).await;
    }

    pub(super) async fn presence(self: Rc<Self>, room: Name, to: ReplyTo) {
        match self.present_users(&room).await {
            Some(users) => {
                let frame = reply::presence(&room, users.len(), users.iter().map(|u| u.as_str()));
                self.reply(to, Reply::Frames(vec![frame]));
            }
            None => self.reply_error(
                to,
                ErrorCode::Unavailable,
                "Redis is unavailable; retry",
                None,
            ),
        }
    }

    pub(super) async fn dm_presence(
        self: Rc<Self>,
        room: Name,
        asker: Name,
        other: Name,
        to: ReplyTo,
    ) {
        let ttl_ms = self.cfg.presence_ttl.as_millis() as u64;
        let mut all = redis::cmd("HGETALL");
        all.arg(pkeys::NODES_KEY);
        let nodes = match self
            .run_retrying(&[(key_slot(pkeys::NODES_KEY), all)])
            .await
        {
            Ok(mut v) => match v.pop() {
                Some(Ok(nodes)) => node_beats(nodes),
                _ => Vec::new(),
            },
            Err(_) => {
                self.reply_error(
                    to,
                    ErrorCode::Unavailable,
                    "Redis is unavailable; retry",
                    None,
                );
                return;
            }
        };
        let now = super::dm_index::now_ms();
        let cmds: Vec<(u16, redis::Cmd)> = nodes
            .iter()
            .filter(|(_, beat)| beat + ttl_ms >= now)
            .map(|(n, _)| {
                let key = pkeys::node_users_key(n);
                let mut cmd = redis::cmd("SISMEMBER");
                cmd.arg(&key).arg(&other[..]);
                (key_slot(&key), cmd)
            })
            .collect();
        let online = self.state.borrow().users.contains_key(&other)
            || match self.run_retrying(&cmds).await {
                Ok(answers) => answers
                    .iter()
                    .any(|a| matches!(a, Ok(Value::Int(1)) | Ok(Value::Boolean(true)))),
                Err(_) => false,
            };
        let mut users = vec![&asker[..]];
        if online {
            users.push(&other[..]);
        }
        users.sort_unstable();
        let frame = reply::presence(&room, users.len(), users.iter().copied());
        self.reply(to, Reply::Frames(vec![frame]));
    }

    pub(super) async fn typing(self: Rc<Self>, room: Name, user: Name) {
        let frame = reply::typing(&room, &user);
        let json = chat_wire::frame::payload_of(&frame);
        let (mode, channel, payload) = match chat_wire::protocol::dm_members(&room) {
            Some((a, b)) => {
                let other = if a == &*user { b } else { a };
                (
                    b"p".to_vec(),
                    keys::user_channel(other),
                    pkeys::event_payload("", &json),
                )
            }
            None => (
                self.publish_mode().to_vec(),
                keys::room_channel(&room),
                pkeys::event_payload(&user, &json),
            ),
        };
        let keys = [pkeys::typing_key(&room, &user)];
        let args = vec![mode, channel.into_bytes(), payload];
        self.eval_text(pkeys::TYPING_LUA, &keys, &args).await;
    }

    /// An event from a room or user channel: to the cores with members / connections.
    /// Returns false for a payload that is not an event.
    pub(super) fn on_event(
        &self,
        channel: &[u8],
        payload: &[u8],
        out: &mut [Vec<CoreMsg>],
    ) -> bool {
        let Some((except, json)) = split_event(payload) else {
            return false;
        };
        let frame: Bytes = encode_frame(OpCode::Text, json);
        let st = self.state.borrow();
        if let Some(user) = keys::user_of_channel(channel) {
            let Some(cores) = st.users.get(user) else {
                return true;
            };
            let mine = except.split(':').collect::<Vec<_>>();
            let here = mine.len() == 3 && mine[0] == self.node_hex();
            for core in cores.iter() {
                let except_conn = (here && mine[1] == core.to_string())
                    .then(|| mine[2].parse().ok())
                    .flatten();
                out[core].push(CoreMsg::Event {
                    channel: Channel::User(user.into()),
                    frame: frame.clone(),
                    except_user: None,
                    except_conn,
                });
            }
        } else if let Some(room) = keys::room_of_channel(channel) {
            let Some(track) = st.rooms.get(room) else {
                return true;
            };
            let except_user: Option<Name> = (!except.is_empty()).then(|| except.into());
            for core in track.cores.iter() {
                out[core].push(CoreMsg::Event {
                    channel: Channel::Room(room.into()),
                    frame: frame.clone(),
                    except_user: except_user.clone(),
                    except_conn: None,
                });
            }
        }
        true
    }
}

/// `HGETALL chat:nodes` as (node, heartbeat ms).
fn node_beats(v: Value) -> Vec<(String, u64)> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Map(m) => m,
        Value::Array(items) => {
            let mut it = items.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        }
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| {
            let k = super::resp::bulk(&k)?;
            Some((String::from_utf8(k).ok()?, value_u64(&v)))
        })
        .collect()
}
