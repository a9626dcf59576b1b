//! What a connection does with each server message once it has joined: deliveries checked
//! against their room's stream and timed, acks timed (and sampled for persistence), errors
//! counted or, with `reconnect`, `unavailable` retried, keep-alives answered.

use super::outbox::{retry_later, Outbox, PONG_KEY};
use super::state::{ConnStreams, Shard};
use crate::client::{Kind, ServerMsg};
use crate::persist;
use crate::proto::Incoming;
use crate::report::AckRecord;
use crate::scenario::{dm_users, is_dm_key};
use crate::schedule::parse_cid;
use crate::stats::record_ns;
use crate::verify::Stream;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

impl Shard {
    /// Everything a connection receives after its joins. `outbox` is the connection's write
    /// side when it sends.
    pub(super) fn on_frame(
        &self,
        c: u32,
        b: &[u8],
        now: Instant,
        streams: &RefCell<ConnStreams>,
        outbox: Option<&Rc<Outbox>>,
    ) {
        let m = match self.scenario.protocol.parse(b) {
            Some(Incoming::Server(m)) => m,
            Some(Incoming::Ping(pong)) => {
                if let Some(ob) = outbox {
                    let _ = ob.messages.send((PONG_KEY, pong));
                }
                return;
            }
            None => {
                self.stats.borrow_mut().counters.unparsed += 1;
                return;
            }
        };
        self.on_msg(c, m, now, streams, outbox);
    }

    /// A server message, parsed (from a frame, or an HTTP publish's response).
    pub(super) fn on_msg(
        &self,
        c: u32,
        m: ServerMsg<'_>,
        now: Instant,
        streams: &RefCell<ConnStreams>,
        outbox: Option<&Rc<Outbox>>,
    ) {
        let now_ns = self
            .start
            .get()
            .map_or(0, |s| now.saturating_duration_since(s).as_nanos() as u64);
        let layout = &*self.layout;
        match m.kind {
            Kind::Msg => {
                self.totals.delivered.fetch_add(1, Relaxed);
                let mut st = self.stats.borrow_mut();
                let st = &mut *st;
                st.counters.delivered += 1;
                st.tick.delivered += 1;
                let mut tracked = false;
                if let Some(key) = layout.key_of_room(m.room) {
                    let mut cs = streams.borrow_mut();
                    let stream = match cs.streams.entry(key) {
                        Entry::Occupied(e) => Some(e.into_mut()),
                        Entry::Vacant(e) => {
                            let (a, b) = dm_users(key);
                            (is_dm_key(key) && (a == c || b == c)).then(|| e.insert(Stream::new(0)))
                        }
                    };
                    if let Some(s) = stream {
                        s.on_seq(m.seq);
                        tracked = true;
                    }
                }
                if !tracked {
                    st.counters.stray += 1;
                }
                if let Some((_, _, intended)) = parse_cid(m.cid) {
                    let lat = now_ns.saturating_sub(intended);
                    record_ns(&mut st.tick.latency, lat);
                    if intended >= self.warmup_ns {
                        record_ns(&mut st.hists.delivery, lat);
                    }
                }
            }
            Kind::Ack => {
                let Some((role, k, intended)) = parse_cid(m.cid) else {
                    self.stats.borrow_mut().counters.unparsed += 1;
                    return;
                };
                if let Some(ob) = outbox.filter(|_| self.scenario.reconnect) {
                    if ob.pending.borrow_mut().remove(&(role, k)).is_none() {
                        // A re-sent message answered a second time (same seq: the dedupe).
                        self.stats.borrow_mut().counters.duplicate_acks += 1;
                        return;
                    }
                }
                self.totals.answered.fetch_add(1, Relaxed);
                let mut st = self.stats.borrow_mut();
                let refused = st.refused.remove(&(role, k));
                if self.scenario.record_acks {
                    st.acks.push(AckRecord {
                        room: String::from_utf8_lossy(m.room).into_owned(),
                        seq: m.seq,
                        cid: String::from_utf8_lossy(m.cid).into_owned(),
                        refused,
                    });
                }
                st.counters.acked += 1;
                st.tick.acked += 1;
                if intended >= self.warmup_ns {
                    record_ns(&mut st.hists.ack, now_ns.saturating_sub(intended));
                }
                if let Some(key) = layout.key_of_room(m.room) {
                    let e = st.acked_max.entry(key).or_default();
                    *e = (*e).max(m.seq);
                    self.totals
                        .expected
                        .fetch_add(layout.receivers(key), Relaxed);
                    st.counters.expected_deliveries += layout.receivers(key);
                }
                if let (Some(tx), Some(start)) = (&self.persist_tx, self.start.get()) {
                    if k % self.scenario.persist_sample == 0 {
                        st.counters.persist_sampled += 1;
                        let _ = tx.send(persist::Sample {
                            room: String::from_utf8_lossy(m.room).into_owned(),
                            seq: m.seq as i64,
                            intended: start + Duration::from_nanos(intended),
                        });
                    }
                }
            }
            Kind::Error => {
                let mut st = self.stats.borrow_mut();
                let code = String::from_utf8_lossy(m.code);
                if m.cid.is_empty() {
                    let msg = format!("error reply without cid: {code}");
                    st.first_error.get_or_insert(msg);
                    *st.counters
                        .send_errors_by_code
                        .entry(format!("{code} (no cid)"))
                        .or_default() += 1;
                } else {
                    let unavailable = m.code == b"unavailable";
                    st.counters.unavailable += u64::from(unavailable);
                    if let (Some(ob), Some((role, k, _))) =
                        (outbox.filter(|_| self.scenario.reconnect), parse_cid(m.cid))
                    {
                        if unavailable {
                            // Retried with the same cid after a backoff: not an answer yet.
                            st.tick.errors += 1;
                            st.refused.insert((role, k));
                            drop(st);
                            retry_later(ob, (role, k));
                            return;
                        }
                        ob.pending.borrow_mut().remove(&(role, k));
                    }
                    self.totals.answered.fetch_add(1, Relaxed);
                    st.counters.send_errors += 1;
                    st.tick.errors += 1;
                    *st.counters
                        .send_errors_by_code
                        .entry(code.into_owned())
                        .or_default() += 1;
                }
            }
            Kind::Resumed => {
                let mut st = self.stats.borrow_mut();
                st.counters.resumes += 1;
                st.counters.resume_incomplete += u64::from(!m.complete);
            }
            Kind::Joined | Kind::Other => {}
        }
    }
}
