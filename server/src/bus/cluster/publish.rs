//! Publishing: a core's sends, batched per event-loop turn into one Redis pipeline of Lua steps
//! (seq + recent cache + publish), then each made durable in Kafka before its ack, acks in the
//! order of the requests.

use super::resp::{evalsha, msg_seq_and_id};
use super::{dm_index, Bus, ClusterConfig};
use crate::bus::redis as keys;
use crate::log::kafka::Delivery;
use crate::messages::{CoreId, CoreMsg, Name, PublishRequest, Reply, ReplyTo};
use crate::metrics::{add, inc};
use ahash::AHashMap;
use bytes::BytesMut;
use chat_wire::protocol::{reply, ErrorCode, Msg, RequestError};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use redis::{RedisResult, Value};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::mpsc;

/// One accepted message between its Lua step and its ack.
pub(super) struct Accepted {
    reply: ReplyTo,
    cid: Box<str>,
    room: Name,
    seq: u64,
    id: String,
}

impl Bus {
    pub(super) async fn publisher(
        self: Rc<Self>,
        core: CoreId,
        mut rx: mpsc::UnboundedReceiver<Vec<PublishRequest>>,
    ) {
        while let Some(mut batch) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                batch.extend(more);
            }
            self.publish_batch(core, batch).await;
        }
    }

    pub(super) async fn publish_batch(self: &Rc<Self>, core: CoreId, batch: Vec<PublishRequest>) {
        let metrics = &self.node.metrics.bus;
        if let Some(k) = &self.kafka {
            if let Some(why) = k.renew_if_failed().await {
                inc(&metrics.kafka_producer_renewals);
                tracing::error!(why, "the Kafka producer is stuck or failed for good; replaced by a new one (what it held is answered unavailable)");
            }
        }
        // Past the Kafka backlog: refuse before a seq is assigned.
        let mut requests = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        for req in batch {
            let fits = self
                .kafka
                .as_ref()
                .is_none_or(|k| k.has_room(requests.len() + 1));
            if fits {
                requests.push(req);
            } else {
                inc(&metrics.unavailable);
                refused.push(unavailable(
                    req.reply,
                    &req.cid,
                    "the durable log is not keeping up; retry later",
                ));
            }
        }
        self.send(core, refused);
        if requests.is_empty() {
            return;
        }

        let ids: Vec<String> = requests.iter().map(|_| self.next_id()).collect();
        // Floors found in PostgreSQL for rooms whose seq Redis no longer has.
        let mut known_floors: AHashMap<Name, u64> = AHashMap::new();
        let answers = loop {
            let sha = self.publish_sha.borrow().clone();
            let cmds: Vec<(u16, redis::Cmd)> = {
                let st = self.state.borrow();
                requests
                    .iter()
                    .zip(&ids)
                    .map(|(req, id)| {
                        let seen = st.high_seq.get(&req.room).copied().unwrap_or(0);
                        let floor = match (known_floors.get(&req.room), &self.pg) {
                            (Some(f), _) => (*f).max(seen) as i64,
                            (None, Some(_)) => -1,
                            (None, None) => seen as i64,
                        };
                        publish_cmd(&sha, req, id, floor, &self.cfg, self.redis().is_cluster())
                    })
                    .collect()
            };
            let sent = std::time::Instant::now();
            let result = self.run_retrying(&cmds).await;
            if result.is_ok() {
                metrics.redis_batch.observe(sent.elapsed());
                metrics.redis_up.store(1, Relaxed);
            }
            match result {
                Ok(answers) if answers.iter().any(is_missing_seq) => {
                    // New rooms, or Redis lost its data: continue from what PostgreSQL holds.
                    // Everything else in the batch ran; run again, it answers from the dedupe
                    // keys with the same seqs.
                    let pg = self.pg.as_ref().expect("-1 floors only with PostgreSQL");
                    for (req, _) in requests
                        .iter()
                        .zip(&answers)
                        .filter(|(_, a)| is_missing_seq(a))
                    {
                        if known_floors.contains_key(&req.room) {
                            continue;
                        }
                        match pg.max_seq(&req.room).await {
                            Ok(max) => {
                                known_floors.insert(req.room.clone(), max);
                            }
                            Err(e) => {
                                tracing::warn!(room = %req.room, error = %e, "no seq floor from PostgreSQL; retrying");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                }
                Ok(answers)
                    if answers
                        .iter()
                        .any(|a| matches!(a, Err(e) if e.code() == Some("NOSCRIPT"))) =>
                {
                    // Redis restarted and forgot the script. Nothing ran for these; retries of
                    // ones that did run are answered from the dedupe key.
                    if let Err(e) = self.reload_scripts().await {
                        tracing::warn!(error = %e, "SCRIPT LOAD failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Ok(answers) => break answers,
                Err(e) => {
                    metrics.redis_up.store(0, Relaxed);
                    tracing::error!(error = %e, count = requests.len(), "Redis unavailable; refusing sends");
                    let msgs = requests
                        .iter()
                        .map(|r| {
                            unavailable(
                                r.reply,
                                &r.cid,
                                "Redis is unavailable; retry with the same cid",
                            )
                        })
                        .collect();
                    self.send(core, msgs);
                    return;
                }
            }
        };
        inc(&metrics.redis_round_trips);
        add(&metrics.redis_messages, requests.len() as u64);

        let mut accepted = Vec::with_capacity(requests.len());
        let mut publishes = Vec::new();
        let mut dm_writes = Vec::new();
        let mut deliveries = Vec::new();
        let mut immediate = Vec::new();
        for ((req, id), answer) in requests.into_iter().zip(ids).zip(answers) {
            let (seq, msg) = match parse_publish(answer) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(room = %req.room, error = %e, "publish step failed");
                    immediate.push(unavailable(
                        req.reply,
                        &req.cid,
                        "could not store the message; retry with the same cid",
                    ));
                    continue;
                }
            };
            // A retry: answer with the first message (its seq and id), after making sure Kafka
            // has it (the first attempt may have died before producing).
            let (seq, id) = match seq {
                0 => match msg_seq_and_id(&msg) {
                    Some(v) => v,
                    None => continue,
                },
                s => (s, id),
            };
            self.state.borrow_mut().saw(&req.room, seq);
            if self.cfg.replicas > 0 {
                // Confirmed by the replicas: now it may be shown.
                publishes.extend(self.publish_cmds(&req, &msg));
            }
            if let Some(k) = &self.kafka {
                deliveries.push(k.produce(&req.room, &msg));
            }
            if let Some((a, b)) = &req.dm {
                dm_writes.extend(dm_index::index_writes(&req.room, seq, a, b));
            }
            accepted.push(Accepted {
                reply: req.reply,
                cid: req.cid,
                room: req.room,
                seq,
                id,
            });
        }
        self.send(core, immediate);
        if !dm_writes.is_empty() {
            // Off the ack path: the index only matters after a lost subscription (dm_index.rs).
            let bus = self.clone();
            tokio::task::spawn_local(async move {
                if let Err(e) = bus.redis().run(&dm_writes).await {
                    tracing::warn!(error = %e, "direct-message index not written");
                }
            });
        }
        if !publishes.is_empty() {
            // Live delivery only; a lost publish is filled from the cache by the receivers.
            if let Err(e) = self.redis().run(&publishes).await {
                tracing::warn!(error = %e, "publishing confirmed messages failed; receivers fill the gap");
            }
        }
        if let Some(k) = &self.kafka {
            metrics.kafka_backlog.store(k.in_flight() as u64, Relaxed);
        }
        match &self.kafka {
            None => {
                let acks = accepted.iter().map(ack_msg).collect();
                self.send(core, acks);
            }
            Some(_) => {
                tokio::task::spawn_local(self.clone().ack_when_durable(core, accepted, deliveries));
            }
        }
    }

    /// Sends each ack once Kafka has the message, batching the ones that are ready together.
    pub(super) async fn ack_when_durable(
        self: Rc<Self>,
        core: CoreId,
        accepted: Vec<Accepted>,
        deliveries: Vec<Delivery>,
    ) {
        let metrics = &self.node.metrics.bus;
        let mut pending: FuturesOrdered<_> = accepted
            .into_iter()
            .zip(deliveries)
            .map(|(a, d)| async move { (a, d.wait().await) })
            .collect();
        let answer = |(a, result): (Accepted, Result<Duration, String>)| match result {
            Ok(took) => {
                metrics.kafka_delivery.observe(took);
                inc(&metrics.kafka_delivered);
                ack_msg(&a)
            }
            Err(e) => {
                inc(&metrics.kafka_failed);
                tracing::warn!(room = %a.room, seq = a.seq, error = %e, "not durable; no ack");
                unavailable(
                    a.reply,
                    &a.cid,
                    format!("not durable ({e}); retry with the same cid"),
                )
            }
        };
        while let Some(first) = pending.next().await {
            let mut out = vec![answer(first)];
            while let Some(Some(more)) = pending.next().now_or_never() {
                out.push(answer(more));
            }
            if let Some(k) = &self.kafka {
                metrics.kafka_backlog.store(k.in_flight() as u64, Relaxed);
            }
            self.send(core, out);
        }
    }
}

impl Bus {
    /// The publishes the Lua step leaves to the node with `--redis-replicas`.
    pub(super) fn publish_cmds(&self, req: &PublishRequest, msg: &[u8]) -> Vec<(u16, redis::Cmd)> {
        let channels = match &req.dm {
            None => vec![(keys::room_channel(&req.room), self.redis().is_cluster())],
            Some((a, b)) => vec![
                (keys::user_channel(a), false),
                (keys::user_channel(b), false),
            ],
        };
        channels
            .into_iter()
            .map(|(channel, sharded)| {
                let mut cmd = redis::cmd(if sharded { "SPUBLISH" } else { "PUBLISH" });
                cmd.arg(&channel).arg(msg);
                (keys::key_slot(&channel), cmd)
            })
            .collect()
    }
}

/// An `unavailable` error for one send: the sender retries with the same `cid`.
pub(super) fn unavailable(to: ReplyTo, cid: &str, message: impl Into<String>) -> CoreMsg {
    let e = RequestError::new(ErrorCode::Unavailable, message).with_cid(Some(cid));
    CoreMsg::Reply {
        to,
        reply: Reply::Frames(vec![reply::error(&e)]),
    }
}

pub(super) fn ack_msg(a: &Accepted) -> CoreMsg {
    CoreMsg::Reply {
        to: a.reply,
        reply: Reply::Frames(vec![reply::ack(&a.cid, &a.room, a.seq, &a.id)]),
    }
}

pub(super) fn is_missing_seq(answer: &RedisResult<Value>) -> bool {
    matches!(answer, Ok(Value::Array(items)) if matches!(items.first(), Some(Value::Int(-1))))
}

pub(super) fn publish_cmd(
    sha: &str,
    req: &PublishRequest,
    id: &str,
    floor: i64,
    cfg: &ClusterConfig,
    cluster: bool,
) -> (u16, redis::Cmd) {
    let msg = Msg {
        room: &req.room,
        seq: 0,
        id,
        from: &req.from,
        ts: req.ts,
        body: &req.body,
        cid: &req.cid,
    };
    let (mut head, mut tail) = (BytesMut::new(), BytesMut::new());
    msg.encode_head(&mut head);
    msg.encode_tail(&mut tail);
    let seq_key = keys::seq_key(&req.room);
    let slot = keys::key_slot(&seq_key);
    let keys = [
        seq_key,
        keys::log_key(&req.room),
        keys::dedupe_key(&req.room, &req.from, &req.cid),
    ];
    let mut args: Vec<Vec<u8>> = vec![
        head.to_vec(),
        tail.to_vec(),
        floor.to_string().into_bytes(),
        cfg.history_len.max(1).to_string().into_bytes(),
        cfg.dedupe_ttl_secs.max(1).to_string().into_bytes(),
        match (cfg.replicas > 0, cluster) {
            (true, _) => b"n".to_vec(),
            (false, true) => b"s".to_vec(),
            (false, false) => b"p".to_vec(),
        },
    ];
    match &req.dm {
        None => args.push(keys::room_channel(&req.room).into_bytes()),
        Some((a, b)) => {
            args.push(Vec::new());
            args.push(keys::user_channel(a).into_bytes());
            args.push(keys::user_channel(b).into_bytes());
        }
    }
    (slot, evalsha(sha, &keys, &args))
}

/// `{seq, msg}` from the publish step.
pub(super) fn parse_publish(answer: RedisResult<Value>) -> Result<(u64, Vec<u8>), String> {
    match answer.map_err(|e| e.to_string())? {
        Value::Array(items) if items.len() == 2 => {
            let mut it = items.into_iter();
            let seq = match it.next() {
                Some(Value::Int(s)) if s >= 0 => s as u64,
                other => return Err(format!("unexpected seq {other:?}")),
            };
            match it.next() {
                Some(Value::BulkString(m)) => Ok((seq, m)),
                other => Err(format!("unexpected msg {other:?}")),
            }
        }
        other => Err(format!("unexpected answer {other:?}")),
    }
}
