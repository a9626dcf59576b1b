//! Cluster mode: one thread per node that speaks to Redis and Kafka for all of its cores.
//!
//! The cores never touch a tokio-based client: in cluster mode the bus thread is simply one more
//! mailbox (index `threads`), and every request a core would send a room's owner core goes
//! there instead. Answers come back through the cores' mailboxes exactly as in standalone mode.
//!
//! **Publishing.** Each core has a publisher task here. It takes everything that core sent
//! since its last round trip (one batch per event-loop turn of the core, several if they piled
//! up), runs one `EVALSHA` of [`PUBLISH_LUA`](super::redis::PUBLISH_LUA) per message as one
//! pipeline (seq + recent cache + dedupe + publish, atomically per message), produces every
//! result to Kafka, and moves on to the next batch at once. A separate task waits for the
//! deliveries and sends the acks, in order. A core's batches go out one after the other, so a
//! connection's messages get increasing seqs in the order it sent them, even across retries.
//!
//! **Receiving.** The node subscribes to a room's channel while any of its cores has members,
//! and to a user's channel while the user is connected. Messages are framed once and handed to
//! the cores with members. Per room the bus remembers the last seq it passed on; a message that
//! skips ahead (a lost link, a missed publish) is held while the missing ones are read from the
//! room's recent cache, so cores see every room as a dense, ordered stream. When the link drops
//! the bus notes it, and once Redis answers again compares each room's latest seq with the last
//! one delivered and fills the difference.

use super::memory::CoreSet;
use super::redis::{self as keys, RedisConn, PUBLISH_LUA, READ_AFTER_LUA};
use super::replication;
use crate::log::kafka::{Delivery, KafkaConfig, KafkaLog};
use crate::messages::{Channel, CoreId, CoreMsg, Name, ReplayGauge, Reply, ReplyTo};
use crate::messages::{FetchKind, PublishRequest};
use crate::metrics::{add, inc};
use crate::node::Node;
use crate::store::postgres::PgStore;
use ahash::AHashMap;
use bytes::{Bytes, BytesMut};
use chat_wire::frame::{encode_frame, OpCode};
use chat_wire::protocol::{reply, ErrorCode, Msg, RequestError};
use from_store::{StoreReplay, BUSY};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use redis::{PushInfo, PushKind, RedisResult, Value};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

mod catch_up;
mod dm_index;
mod from_store;
mod topology;

/// How long the bus waits at shutdown for records still on their way to Kafka.
pub const KAFKA_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one request keeps retrying while Redis is unreachable before its sender hears
/// `unavailable` (and retries with the same `cid`). Long enough to outlast a Redis Cluster
/// failover (node timeout, election, and redis-rs's slot refresh, during which its cluster
/// client holds every request, those of healthy shards too): a message whose step ran on a
/// healthy shard must be answered with its seq, not `unavailable`, or its retry's ack would
/// come after later messages' acks.
const REDIS_RETRY_BUDGET: Duration = Duration::from_secs(10);

fn retryable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.is_connection_refusal()
}

/// Settings of cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// One Redis URL, or several seeds of a Redis Cluster.
    pub redis: Vec<String>,
    pub kafka: Option<KafkaConfig>,
    /// Recent messages kept per room in Redis.
    pub history_len: usize,
    pub dedupe_ttl_secs: u64,
    /// PostgreSQL (written by the persister): history and resume past the cache, and the seq
    /// floor of rooms Redis no longer knows.
    pub postgres: Option<String>,
    /// Most replays reading PostgreSQL at once (`--pg-replays`), and how long one waits for
    /// its turn before `unavailable`.
    pub pg_replays: usize,
    pub pg_replay_wait: Duration,
    /// Replicas each write must reach before anything of it is shown (`--redis-replicas`).
    pub replicas: u32,
    /// Longest `WAIT` for them, ms.
    pub wait_ms: u64,
}

/// Connects to Redis (and Kafka), then runs the bus on a thread of its own. Fails when Redis
/// cannot be reached within `connect_timeout`.
pub fn start(
    node: Arc<Node>,
    cfg: ClusterConfig,
    connect_timeout: Duration,
) -> Result<std::thread::JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let handle = std::thread::Builder::new()
        .name("cluster-bus".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let bus = match Bus::connect(node, cfg, connect_timeout).await {
                    Ok(bus) => {
                        let _ = ready_tx.send(Ok(()));
                        bus
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                bus.run().await;
            });
        })
        .map_err(|e| e.to_string())?;
    ready_rx
        .recv()
        .map_err(|_| "cluster bus thread died".to_string())??;
    Ok(handle)
}

struct Bus {
    node: Arc<Node>,
    cfg: ClusterConfig,
    /// Replaced when redis-rs's cluster client is stuck ([`topology`]).
    redis: RefCell<RedisConn>,
    pushes: RefCell<Option<mpsc::UnboundedReceiver<PushInfo>>>,
    publish_sha: RefCell<String>,
    read_sha: RefCell<String>,
    kafka: Option<KafkaLog>,
    pg: Option<PgStore>,
    /// Places for replays reading PostgreSQL (`--pg-replays`, [`from_store`]).
    pg_replays: tokio::sync::Semaphore,
    state: RefCell<State>,
    id_prefix: String,
}

#[derive(Default)]
struct State {
    rooms: AHashMap<Name, RoomTrack>,
    users: AHashMap<Name, CoreSet>,
    /// The highest seq this node has seen per room (assigned to its senders or delivered to
    /// its members): the floor the publish step starts from if Redis lost the room's seq.
    high_seq: AHashMap<Name, u64>,
    next_id: u64,
    /// Set when the link dropped: rooms must be compared with Redis once it answers again.
    resync_pending: bool,
    /// Whether rooms are being compared after a failover (catch_up.rs).
    settling: bool,
    /// The last seq of each direct-message room passed on to each connected user here.
    dm_last: AHashMap<(Name, Name), u64>,
    /// When each connected user's channel was first subscribed here (ms since the epoch).
    user_since: AHashMap<Name, u64>,
    /// Live direct messages held per (room, user) while the seqs before them are filled.
    dm_held: AHashMap<(Name, Name), Vec<(u64, Bytes)>>,
}

impl RoomTrack {
    /// Queues one message for every core with members of the room.
    fn hand_out(&self, room: &Name, seq: u64, frame: &Bytes, out: &mut [Vec<CoreMsg>]) {
        for core in self.cores.iter() {
            let channel = Channel::Room(room.clone());
            out[core].push(CoreMsg::Deliver {
                channel,
                room: room.clone(),
                seq,
                frame: frame.clone(),
            });
        }
    }
}

impl State {
    /// Queues one direct message for every core where `user` is connected, unless it was
    /// passed on already (a gap fill after a failover may overtake the live copy). Whether it
    /// was queued.
    fn hand_out_dm(
        &mut self,
        user: &str,
        room: &Name,
        seq: u64,
        frame: &Bytes,
        out: &mut [Vec<CoreMsg>],
    ) -> bool {
        let Some(set) = self.users.get(user) else {
            return false;
        };
        let last = self.dm_last.entry((room.clone(), user.into())).or_insert(0);
        if seq <= *last {
            return false;
        }
        *last = seq;
        let user: Name = user.into();
        for core in set.iter() {
            out[core].push(CoreMsg::Deliver {
                channel: Channel::User(user.clone()),
                room: room.clone(),
                seq,
                frame: frame.clone(),
            });
        }
        true
    }

    fn saw(&mut self, room: &Name, seq: u64) {
        let high = self.high_seq.entry(room.clone()).or_insert(0);
        *high = (*high).max(seq);
    }

    /// A core's first member of `room` was answered with `seq` (its `joined`/`resumed` seq),
    /// read from Redis after the node subscribed: the member needs every message after it.
    ///
    /// `last` may only go down here, never up. Raising it to `seq` would drop messages the
    /// node has not received through pub/sub yet (seqs up to `seq` published just before the
    /// read) as already passed on, and the members on the node's other cores would never get
    /// them. Lowering it is safe: members drop seqs they already have, and a message that then
    /// skips ahead is filled from the cache. It matters for a stream that is new on this node,
    /// where a second core's first member may have read an older seq than the first one's.
    fn seed_last(&mut self, room: &Name, seq: u64) {
        if let Some(t) = self.rooms.get_mut(room) {
            t.last = Some(t.last.map_or(seq, |last| last.min(seq)));
        }
    }
}

/// What the node knows of one subscribed room.
#[derive(Default)]
struct RoomTrack {
    cores: CoreSet,
    /// The last seq handed to the cores (`None` until known).
    last: Option<u64>,
    /// Missing messages are being read from the cache; live ones wait in `held`.
    filling: bool,
    held: Vec<(u64, Bytes)>,
}

impl Bus {
    async fn connect(
        node: Arc<Node>,
        cfg: ClusterConfig,
        timeout: Duration,
    ) -> Result<Rc<Bus>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (redis, pushes) = loop {
            match RedisConn::connect(&cfg.redis).await {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "Redis not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot connect to Redis at {}: {e}",
                        cfg.redis.join(",")
                    ))
                }
            }
        };
        let publish_sha = redis
            .load_script(PUBLISH_LUA)
            .await
            .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
        let read_sha = redis
            .load_script(READ_AFTER_LUA)
            .await
            .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
        let kafka = match &cfg.kafka {
            None => None,
            Some(k) => {
                let log = KafkaLog::new(k)?;
                match log.check(Duration::from_secs(10)) {
                    Ok(partitions) => {
                        tracing::info!(brokers = %k.brokers, topic = %k.topic, partitions, "Kafka ready")
                    }
                    Err(e) => tracing::warn!(error = %e, "Kafka not ready yet; sends wait for it"),
                }
                Some(log)
            }
        };
        tracing::info!(cluster = redis.is_cluster(), redis = %cfg.redis.join(","), "Redis ready");
        node.metrics.bus.redis_up.store(1, Relaxed);
        let pg = cfg
            .postgres
            .as_deref()
            .map(|url| PgStore::new(url, node.clone()));
        Ok(Rc::new(Bus {
            id_prefix: format!("{:016x}-", node.node_id),
            pg_replays: tokio::sync::Semaphore::new(cfg.pg_replays),
            node,
            cfg,
            redis: RefCell::new(redis),
            pushes: RefCell::new(Some(pushes)),
            publish_sha: RefCell::new(publish_sha),
            read_sha: RefCell::new(read_sha),
            kafka,
            pg,
            state: RefCell::new(State::default()),
        }))
    }
}

trait BusExt {
    async fn run(self);
}

impl BusExt for Rc<Bus> {
    async fn run(self) {
        let bus_index = self.node.threads;
        let publishers: Vec<mpsc::UnboundedSender<Vec<PublishRequest>>> = (0..self.node.threads)
            .map(|core| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::task::spawn_local(self.clone().publisher(core, rx));
                tx
            })
            .collect();
        let pushes = self.pushes.borrow_mut().take().expect("push receiver");
        tokio::task::spawn_local(self.clone().receive(pushes));
        if self.redis().is_cluster() {
            tokio::task::spawn_local(self.clone().watch_topology());
        }
        loop {
            let batch = self.node.mailboxes[bus_index].recv().await;
            let mut per_core: Vec<Vec<PublishRequest>> =
                (0..self.node.threads).map(|_| Vec::new()).collect();
            for msg in batch {
                match msg {
                    CoreMsg::Publish(req) => per_core[req.reply.core].push(req),
                    CoreMsg::Join {
                        room,
                        subscribe,
                        reply,
                    } => {
                        tokio::task::spawn_local(self.clone().join(room, subscribe, reply));
                    }
                    CoreMsg::Fetch {
                        room,
                        kind,
                        subscribe,
                        reply,
                        gauge,
                    } => {
                        let fetch = self.clone().fetch(room, kind, subscribe, reply, gauge);
                        tokio::task::spawn_local(fetch);
                    }
                    CoreMsg::Subscribe {
                        channel: Channel::User(user),
                        core,
                    } => self.subscribe_user(user, core),
                    CoreMsg::Unsubscribe { channel, core } => self.unsubscribe(channel, core),
                    CoreMsg::Shutdown => {
                        // The drain is over and the cores are closing their connections: let
                        // every record still on its way reach Kafka (bounded), then end the
                        // bus thread; `main` waits for that before the process exits.
                        if let Some(k) = &self.kafka {
                            let started = std::time::Instant::now();
                            k.flush(KAFKA_FLUSH_TIMEOUT);
                            tracing::info!(elapsed = ?started.elapsed(), "Kafka flushed");
                        }
                        return;
                    }
                    other => tracing::error!(?other, "unexpected message on the cluster bus"),
                }
            }
            for (core, reqs) in per_core.into_iter().enumerate() {
                if !reqs.is_empty() {
                    let _ = publishers[core].send(reqs);
                }
            }
        }
    }
}

impl Bus {
    /// The current Redis connection (a cheap clone).
    fn redis(&self) -> RedisConn {
        self.redis.borrow().clone()
    }

    fn send(&self, core: CoreId, msgs: Vec<CoreMsg>) {
        if !msgs.is_empty() {
            self.node.mailboxes[core].send(msgs);
        }
    }

    fn reply(&self, to: ReplyTo, reply: Reply) {
        self.send(to.core, vec![CoreMsg::Reply { to, reply }]);
    }

    fn reply_error(&self, to: ReplyTo, code: ErrorCode, message: &str, cid: Option<&str>) {
        let e = RequestError::new(code, message).with_cid(cid);
        self.reply(to, Reply::Frames(vec![reply::error(&e)]));
    }

    /// A join or resume that failed: the member the core created for it is dropped.
    fn reply_failed(&self, to: ReplyTo, room: Name, message: &str) {
        let error = reply::error(&RequestError::new(ErrorCode::Unavailable, message));
        self.reply(to, Reply::Failed { room, error });
    }

    /// `(replicas, WAIT timeout)` with `--redis-replicas` ([`super::replication`]).
    fn confirm(&self) -> Option<(u32, u64)> {
        (self.cfg.replicas > 0).then_some((self.cfg.replicas, self.cfg.wait_ms))
    }

    /// Runs commands, retrying while Redis is unreachable (up to ~5 s); with `--redis-replicas`
    /// also while the replicas do not confirm them. Only what failed runs again (a shard whose
    /// master died, or that the replicas did not confirm): what succeeded stands, so a message
    /// on a healthy shard keeps its answer. After the budget the commands still failing answer
    /// their error; `Err` only when nothing ever answered.
    async fn run_retrying(
        &self,
        cmds: &[(u16, redis::Cmd)],
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let deadline = tokio::time::Instant::now() + REDIS_RETRY_BUDGET;
        let mut wait = Duration::from_millis(20);
        let mut answers: Vec<Option<RedisResult<Value>>> = (0..cmds.len()).map(|_| None).collect();
        loop {
            let todo: Vec<usize> = (0..cmds.len())
                .filter(|&i| answers[i].as_ref().is_none_or(again))
                .collect();
            if todo.is_empty() {
                return Ok(answers.into_iter().map(Option::unwrap).collect());
            }
            let sub: Vec<(u16, redis::Cmd)> = todo.iter().map(|&i| cmds[i].clone()).collect();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let redis = self.redis();
            let run = redis.run_within(&sub, self.confirm(), left);
            let err = match tokio::time::timeout(left, run).await {
                Ok(Ok(r)) => {
                    let failed = r.iter().filter(|a| again(a)).count();
                    if r.iter().any(unreplicated) {
                        inc(&self.node.metrics.bus.redis_unreplicated);
                    }
                    for (&i, a) in todo.iter().zip(r) {
                        answers[i] = Some(a);
                    }
                    if failed == 0 {
                        continue;
                    }
                    redis::RedisError::from((redis::ErrorKind::Io, "some commands failed"))
                }
                Ok(Err(e)) if !retryable(&e) => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => {
                    redis::RedisError::from((redis::ErrorKind::Io, "Redis did not answer in time"))
                }
            };
            if tokio::time::Instant::now() + wait >= deadline {
                if answers.iter().all(Option::is_none) {
                    return Err(err);
                }
                return Ok(answers
                    .into_iter()
                    .map(|a| a.unwrap_or_else(|| Err(keys::shard_failed(&err))))
                    .collect());
            }
            inc(&self.node.metrics.bus.redis_retries);
            tracing::warn!(error = %err, commands = todo.len(), "Redis request failed or not replicated; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }

    /// `EVALSHA` of a script, loading it again if Redis forgot it (a restart).
    async fn eval(&self, read: bool, keys: &[String], args: &[Vec<u8>]) -> RedisResult<Value> {
        for _ in 0..2 {
            let sha = if read {
                self.read_sha.borrow().clone()
            } else {
                self.publish_sha.borrow().clone()
            };
            let cmd = evalsha(&sha, keys, args);
            let mut r = self
                .run_retrying(&[(keys::key_slot(&keys[0]), cmd)])
                .await?;
            match r.pop().expect("one answer") {
                Err(e) if e.code() == Some("NOSCRIPT") => self.reload_scripts().await?,
                other => return other,
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "script missing after reload",
        )))
    }

    async fn reload_scripts(&self) -> RedisResult<()> {
        *self.publish_sha.borrow_mut() = self.redis().load_script(PUBLISH_LUA).await?;
        *self.read_sha.borrow_mut() = self.redis().load_script(READ_AFTER_LUA).await?;
        Ok(())
    }

    fn next_id(&self) -> String {
        let mut st = self.state.borrow_mut();
        st.next_id += 1;
        format!("{}{:x}", self.id_prefix, st.next_id)
    }
}

/// One accepted message between its Lua step and its ack.
struct Accepted {
    reply: ReplyTo,
    cid: Box<str>,
    room: Name,
    seq: u64,
    id: String,
}

impl Bus {
    async fn publisher(
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

    async fn publish_batch(self: &Rc<Self>, core: CoreId, batch: Vec<PublishRequest>) {
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
    async fn ack_when_durable(
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
    fn publish_cmds(&self, req: &PublishRequest, msg: &[u8]) -> Vec<(u16, redis::Cmd)> {
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
fn unavailable(to: ReplyTo, cid: &str, message: impl Into<String>) -> CoreMsg {
    let e = RequestError::new(ErrorCode::Unavailable, message).with_cid(Some(cid));
    CoreMsg::Reply {
        to,
        reply: Reply::Frames(vec![reply::error(&e)]),
    }
}

fn ack_msg(a: &Accepted) -> CoreMsg {
    CoreMsg::Reply {
        to: a.reply,
        reply: Reply::Frames(vec![reply::ack(&a.cid, &a.room, a.seq, &a.id)]),
    }
}

fn evalsha(sha: &str, keys: &[String], args: &[Vec<u8>]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(keys.len());
    for k in keys {
        cmd.arg(k);
    }
    for a in args {
        cmd.arg(&a[..]);
    }
    cmd
}

fn unreplicated(answer: &RedisResult<Value>) -> bool {
    matches!(answer, Err(e) if replication::is_not_replicated(e))
}

/// An answer worth running its command again for: its shard failed, or the replicas did not
/// confirm it.
fn again(answer: &RedisResult<Value>) -> bool {
    matches!(answer, Err(e) if replication::is_not_replicated(e) || keys::is_shard_failed(e))
}

fn is_missing_seq(answer: &RedisResult<Value>) -> bool {
    matches!(answer, Ok(Value::Array(items)) if matches!(items.first(), Some(Value::Int(-1))))
}

fn publish_cmd(
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
fn parse_publish(answer: RedisResult<Value>) -> Result<(u64, Vec<u8>), String> {
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

/// The fields of a stored `msg` the bus needs to route it.
#[derive(serde::Deserialize)]
struct MsgHead<'a> {
    #[serde(borrow)]
    room: std::borrow::Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    /// Milliseconds since the epoch (absent in nothing the server writes; 0 if so).
    #[serde(default)]
    ts: u64,
}

fn msg_head(json: &[u8]) -> Option<MsgHead<'_>> {
    serde_json::from_slice(json).ok()
}

fn msg_seq_and_id(json: &[u8]) -> Option<(u64, String)> {
    msg_head(json).map(|h| (h.seq, h.id.into_owned()))
}

// ---- joins, history, resume ----

impl Bus {
    /// Makes the node subscribed to `room` for `core`; returns once Redis confirmed.
    async fn subscribe_room(&self, room: &Name, core: CoreId) -> RedisResult<()> {
        let first = {
            let mut st = self.state.borrow_mut();
            let track = st.rooms.entry(room.clone()).or_default();
            let first = track.cores.is_empty();
            track.cores.insert(core);
            first
        };
        if first {
            let channel = keys::room_channel(room);
            let redis = self.redis();
            let subscribe = redis.subscribe_room(&channel);
            match tokio::time::timeout(REDIS_RETRY_BUDGET, subscribe).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "SUBSCRIBE timed out",
                    )))
                }
            }
        }
        Ok(())
    }

    async fn join(self: Rc<Self>, room: Name, subscribe: bool, to: ReplyTo) {
        if subscribe {
            if let Err(e) = self.subscribe_room(&room, to.core).await {
                tracing::warn!(%room, error = %e, "SUBSCRIBE failed");
            }
        }
        let mut get = redis::cmd("GET");
        get.arg(keys::seq_key(&room));
        let slot = keys::key_slot(&keys::seq_key(&room));
        match self.run_retrying(&[(slot, get)]).await.map(|mut v| v.pop()) {
            Ok(Some(Ok(v))) => {
                let seq = value_u64(&v);
                if subscribe {
                    self.state.borrow_mut().seed_last(&room, seq);
                }
                self.reply(to, Reply::Joined { room, seq });
            }
            other => {
                tracing::warn!(%room, ?other, "join failed");
                self.reply_failed(to, room, "Redis is unavailable; retry");
            }
        }
    }

    async fn fetch(
        self: Rc<Self>,
        room: Name,
        kind: FetchKind,
        subscribe: bool,
        to: ReplyTo,
        gauge: Arc<ReplayGauge>,
    ) {
        if subscribe {
            if let Err(e) = self.subscribe_room(&room, to.core).await {
                tracing::warn!(%room, error = %e, "SUBSCRIBE failed");
            }
        }
        match kind {
            FetchKind::History { before, limit } => {
                let end = match before {
                    Some(0) | Some(1) => {
                        self.reply(
                            to,
                            Reply::Frames(vec![reply::history(&room, std::iter::empty::<&[u8]>())]),
                        );
                        return;
                    }
                    Some(b) => format!("{}-0", b - 1),
                    None => "+".into(),
                };
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(keys::log_key(&room))
                    .arg(end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit);
                let slot = keys::key_slot(&keys::log_key(&room));
                match self.run_retrying(&[(slot, cmd)]).await.map(|mut v| v.pop()) {
                    Ok(Some(Ok(v))) => {
                        let mut msgs = stream_messages(v);
                        msgs.reverse();
                        // Older than the cache holds: the rest of the page from PostgreSQL.
                        if msgs.len() < limit as usize {
                            let oldest = msgs.first().and_then(|m| msg_head(m)).map(|h| h.seq);
                            let older_than = oldest.or(before).unwrap_or(u64::MAX);
                            let wanted = limit - msgs.len() as u32;
                            match self.history_from_store(&room, older_than, wanted).await {
                                Ok(mut older) => {
                                    older.append(&mut msgs);
                                    msgs = older;
                                }
                                Err(message) => {
                                    self.reply_error(to, ErrorCode::Unavailable, message, None);
                                    return;
                                }
                            }
                        }
                        self.reply(
                            to,
                            Reply::Frames(vec![reply::history(&room, msgs.iter().map(|m| &m[..]))]),
                        );
                    }
                    other => {
                        tracing::warn!(%room, ?other, "history failed");
                        self.reply_error(
                            to,
                            ErrorCode::Unavailable,
                            "Redis is unavailable; retry",
                            None,
                        );
                    }
                }
            }
            FetchKind::Resume { after } => {
                let keys = [keys::seq_key(&room), keys::log_key(&room)];
                let first = after.saturating_add(1);
                match self
                    .eval(true, &keys, &[first.to_string().into_bytes()])
                    .await
                {
                    Ok(Value::Array(parts)) if parts.len() == 2 => {
                        let latest = value_u64(&parts[0]);
                        let msgs: Vec<Vec<u8>> = match &parts[1] {
                            Value::Array(items) => items.iter().filter_map(bulk).collect(),
                            _ => Vec::new(),
                        };
                        // What the cache no longer holds comes from PostgreSQL first, page by
                        // page at the client's pace (those frames go out as they are read).
                        let cached_from = msgs
                            .first()
                            .and_then(|m| msg_head(m))
                            .map_or(latest.saturating_add(1), |h| h.seq);
                        let mut expect = first;
                        let mut complete = true;
                        if first < cached_from {
                            match self
                                .resume_from_store(&room, first, cached_from, to, &gauge)
                                .await
                            {
                                StoreReplay::Sent { next, gapless } => {
                                    expect = next;
                                    complete = gapless;
                                }
                                StoreReplay::Busy => {
                                    self.reply_failed(to, room, BUSY);
                                    return;
                                }
                            }
                        }
                        // Complete only when exactly after+1 ..= latest has been sent.
                        for m in &msgs {
                            match msg_head(m) {
                                Some(h) if h.seq == expect => expect += 1,
                                _ => complete = false,
                            }
                        }
                        complete &= expect > latest || latest <= after;
                        if subscribe {
                            self.state.borrow_mut().seed_last(&room, latest);
                        }
                        let frames = msgs.iter().map(|m| encode_frame(OpCode::Text, m)).collect();
                        self.reply(
                            to,
                            Reply::Resumed {
                                room,
                                seq: latest,
                                messages: frames,
                                complete,
                            },
                        );
                    }
                    other => {
                        tracing::warn!(%room, ?other, "resume failed");
                        self.reply_failed(to, room, "Redis is unavailable; retry");
                    }
                }
            }
        }
    }

    fn subscribe_user(self: &Rc<Self>, user: Name, core: CoreId) {
        let first = {
            let mut st = self.state.borrow_mut();
            let set = st.users.entry(user.clone()).or_default();
            let first = set.is_empty();
            set.insert(core);
            if first {
                st.user_since.insert(user.clone(), dm_index::now_ms());
            }
            first
        };
        if first {
            let bus = self.clone();
            tokio::task::spawn_local(async move {
                if let Err(e) = bus.redis().subscribe_user(&keys::user_channel(&user)).await {
                    tracing::warn!(%user, error = %e, "SUBSCRIBE failed");
                }
            });
        }
    }

    fn unsubscribe(self: &Rc<Self>, channel: Channel, core: CoreId) {
        let mut st = self.state.borrow_mut();
        let gone = match &channel {
            Channel::Room(room) => match st.rooms.get_mut(room) {
                Some(t) => {
                    t.cores.remove(core);
                    let empty = t.cores.is_empty();
                    if empty {
                        st.rooms.remove(room);
                    }
                    empty
                }
                None => false,
            },
            Channel::User(user) => match st.users.get_mut(user) {
                Some(set) => {
                    set.remove(core);
                    let empty = set.is_empty();
                    if empty {
                        st.users.remove(user);
                        st.dm_last.retain(|(_, u), _| u != user);
                        st.user_since.remove(user);
                        st.dm_held.retain(|(_, u), _| u != user);
                    }
                    empty
                }
                None => false,
            },
        };
        drop(st);
        if gone {
            let bus = self.clone();
            tokio::task::spawn_local(async move {
                let r = match &channel {
                    Channel::Room(room) => {
                        bus.redis()
                            .unsubscribe_room(&keys::room_channel(room))
                            .await
                    }
                    Channel::User(user) => {
                        bus.redis()
                            .unsubscribe_user(&keys::user_channel(user))
                            .await
                    }
                };
                if let Err(e) = r {
                    tracing::warn!(?channel, error = %e, "UNSUBSCRIBE failed");
                }
            });
        }
    }
}

fn value_u64(v: &Value) -> u64 {
    match v {
        Value::Int(i) => (*i).max(0) as u64,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Value::SimpleString(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn bulk(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        _ => None,
    }
}

/// The `m` fields of `XRANGE`/`XREVRANGE` entries, in the order given.
fn stream_messages(v: Value) -> Vec<Vec<u8>> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| match e {
            Value::Array(mut parts) if parts.len() == 2 => match parts.pop() {
                Some(Value::Array(fields)) => fields.get(1).and_then(bulk),
                Some(Value::Map(fields)) => fields.first().and_then(|(_, v)| bulk(v)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

// ---- receiving ----

impl Bus {
    async fn receive(self: Rc<Self>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
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

    fn on_push(self: &Rc<Self>, push: PushInfo, out: &mut [Vec<CoreMsg>]) {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    return;
                };
                inc(&self.node.metrics.bus.pubsub_messages);
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
    fn on_room_message(
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
    async fn fill(self: Rc<Self>, room: Name, from: u64) {
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
