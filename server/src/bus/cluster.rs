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
//!
//! Where each job lives: this file holds the settings, the bus's state, its connection and its
//! main loop (which dispatches core messages) and the Redis round trips everything shares;
//! [`publish`] the publisher tasks and acks, [`rooms`] joins, history and resume
//! ([`from_store`] for what PostgreSQL holds), [`receive`] pub/sub pushes and gap fills,
//! [`dm_index`] direct messages, [`catch_up`] and [`topology`] what follows a lost link or a
//! failover, [`resp`] the shapes of Redis answers.

use super::memory::CoreSet;
use super::owner::RoomOwner;
use super::redis::{self as keys, RedisConn, PUBLISH_LUA, READ_AFTER_LUA};
use crate::log::kafka::{KafkaConfig, KafkaLog};
use crate::messages::PublishRequest;
use crate::messages::{Channel, CoreId, CoreMsg, Name, Reply, ReplyTo};
use crate::metrics::inc;
use crate::node::Node;
use crate::store::postgres::PgStore;
use ahash::AHashMap;
use bytes::Bytes;
use chat_wire::protocol::{reply, ErrorCode, RequestError};
use redis::{PushInfo, RedisResult, Value};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

mod catch_up;
mod dm_index;
mod from_store;
mod owner;
mod publish;
mod read_pointers;
mod receive;
mod resp;
mod rooms;
mod social;
mod topology;

use resp::{again, evalsha, msg_head, unreplicated};

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
    /// How long a dead node's users stay present (`--presence-ttl`).
    pub presence_ttl: Duration,
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
    /// Presence, typing and read pointers (v1.1, [`social`]).
    social: RefCell<social::Social>,
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
            social: RefCell::new(social::Social::default()),
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
        if self.kafka.is_some() {
            let bus = self.clone();
            tokio::task::spawn_local(async move {
                if let Some(k) = &bus.kafka {
                    k.serve_reports().await
                }
            });
        }
        if self.redis().is_cluster() {
            tokio::task::spawn_local(self.clone().watch_topology());
        }
        self.start_social();
        let mut owner = owner::ClusterOwner::new(self.clone());
        loop {
            let batch = self.node.mailboxes[bus_index].recv().await;
            for msg in batch {
                if let CoreMsg::Shutdown = msg {
                    // The drain is over and the cores are closing their connections: let
                    // every record still on its way reach Kafka (bounded), then end the bus
                    // thread; `main` waits for that before the process exits.
                    if let Some(k) = &self.kafka {
                        let started = std::time::Instant::now();
                        k.flush(KAFKA_FLUSH_TIMEOUT);
                        tracing::info!(elapsed = ?started.elapsed(), "Kafka flushed");
                    }
                    return;
                }
                if let Err(unexpected) = owner.handle(msg) {
                    tracing::error!(?unexpected, "unexpected message on the cluster bus");
                }
            }
            // This turn's sends, one batch per core (one pipeline each, see `publish`).
            for (core, reqs) in owner.publishes.iter_mut().enumerate() {
                if !reqs.is_empty() {
                    let _ = publishers[core].send(std::mem::take(reqs));
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
        self.reply(to, Reply::failed(room, error));
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
