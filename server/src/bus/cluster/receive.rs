//! Receiving: pub/sub pushes from Redis, each room's messages passed on in seq order to the
//! cores with members (a gap is filled from the cache before anything after it goes out).

use super::resp::{msg_head, stream_messages};
use super::Bus;
use crate::bus::redis as keys;
use crate::messages::{CoreMsg, Name};
use crate::metrics::{add, inc};
use bytes::Bytes;
use chat_wire::frame::{encode_frame, OpCode};
use redis::{PushInfo, PushKind, Value};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::mpsc;

impl Bus {
    pub(super) async fn receive(self: Rc<Self>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
        let threads = self.node.threads;
        loop {
            let Some(first) = pushes.recv().await else {
                return;
            };
            let mut out: Vec<Vec<CoreMsg>> = (0..threads).map(|_| Vec::new()).collect();
            self.on_push(first, &mut out);
            while let Ok(more) = pushes.try_recv() {
                self.on_push(more, &mut out);
            }
            for (core, msgs) in out.into_iter().enumerate() {
                self.send(core, msgs);
            }
        }
    }

    pub(super) fn on_push(self: &Rc<Self>, push: PushInfo, out: &mut [Vec<CoreMsg>]) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    return;
                };
                inc(&self.node.metrics.bus.pubsub_messages);
                if self.on_event(&channel, &payload, out) {
                    return;
                }
                let Some(head) = msg_head(&payload) else {
                    tracing::warn!(
                        "unparsable message on {}",
                        String::from_utf8_lossy(&channel)
                    );
                    return;
                };
                let (room, seq): (Name, u64) = (head.room.as_ref().into(), head.seq);
                self.state.borrow_mut().saw(&room, seq);
                let frame = encode_frame(OpCode::Text, &payload);
                if let Some(user) = keys::user_of_channel(&channel) {
                    self.on_dm(user, room, seq, frame, out);
                } else if keys::room_of_channel(&channel).is_some() {
                    self.on_room_message(room, seq, frame, out);
                }
            }
            PushKind::Disconnection => {
                inc(&self.node.metrics.bus.redis_disconnects);
                self.node.metrics.bus.redis_up.store(0, Relaxed);
                tracing::warn!("Redis link lost; will compare rooms with Redis once it is back");
                let start = !std::mem::replace(&mut self.state.borrow_mut().resync_pending, true);
                if start {
                    tokio::task::spawn_local(self.clone().resync());
                }
            }
            _ => {}
        }
    }

    /// Passes a room message on in seq order, or holds it while a gap is filled.
    pub(super) fn on_room_message(
        self: &Rc<Self>,
        room: Name,
        seq: u64,
        frame: Bytes,
        out: &mut [Vec<CoreMsg>],
    ) {
        let mut st = self.state.borrow_mut();
        let Some(track) = st.rooms.get_mut(&room) else {
            return;
        };
        if track.filling {
            track.held.push((seq, frame));
            return;
        }
        match track.last {
            Some(last) if seq <= last => {}
            Some(last) if seq > last + 1 => {
                track.filling = true;
                track.held.push((seq, frame));
                tokio::task::spawn_local(self.clone().fill(room, last + 1));
            }
            _ => {
                track.last = Some(seq);
                track.hand_out(&room, seq, &frame, out);
            }
        }
    }

    /// Reads the messages from `from` on out of the cache and passes them on, then what was held.
    pub(super) async fn fill(self: Rc<Self>, room: Name, from: u64) {
        inc(&self.node.metrics.bus.gap_fills);
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(keys::log_key(&room))
            .arg(format!("{from}-0"))
            .arg("+");
        let slot = keys::key_slot(&keys::log_key(&room));
        let cached = match self.run_retrying(&[(slot, cmd)]).await.map(|mut v| v.pop()) {
            Ok(Some(Ok(v))) => stream_messages(v),
            other => {
                tracing::warn!(%room, ?other, "gap fill failed");
                Vec::new()
            }
        };
        let mut out: Vec<Vec<CoreMsg>> = (0..self.node.threads).map(|_| Vec::new()).collect();
        {
            let mut st = self.state.borrow_mut();
            let Some(track) = st.rooms.get_mut(&room) else {
                return;
            };
            let mut items: Vec<(u64, Bytes)> = cached
                .iter()
                .filter_map(|m| msg_head(m).map(|h| (h.seq, encode_frame(OpCode::Text, m))))
                .collect();
            items.append(&mut track.held);
            items.sort_by_key(|(s, _)| *s);
            let mut last = track.last.unwrap_or(0);
            if items.first().is_some_and(|(s, _)| *s > last + 1) {
                inc(&self.node.metrics.bus.gap_unrecoverable);
                tracing::warn!(%room, after = last, next = items[0].0, "messages missing from the cache too; members must resume");
            }
            for (seq, frame) in items {
                if seq <= last {
                    continue;
                }
                last = seq;
                add(&self.node.metrics.bus.gap_messages, 1);
                track.hand_out(&room, seq, &frame, &mut out);
            }
            track.last = Some(last);
            track.filling = false;
        }
        for (core, msgs) in out.into_iter().enumerate() {
            self.send(core, msgs);
        }
    }
}
