//! Redis as the cluster's bus: keys, the Lua steps, and one connection type for a single server
//! or a Redis Cluster.
//!
//! Every key and channel of a room carries the room in a hash tag (`chat:{ROOM}:...`), so a room
//! lives in one slot and its Lua step runs on one shard of a cluster:
//!
//! | key | what |
//! | --- | --- |
//! | `chat:{R}:seq` | the room's latest seq |
//! | `chat:{R}:log` | recent messages: a stream capped at `--history-len` (exact trim, so resume knows what it holds), entry id `<seq>-0`, field `m` = the `msg` JSON |
//! | `chat:{R}:c:<from>:<cid>` | the first `msg` JSON sent with this `(from, cid)`, for the dedupe window |
//! | `chat:{R}:ch` | the room's channel (sharded pub/sub on a cluster) |
//! | `chat:u:{U}` | user U's channel: direct messages (plain pub/sub, which a cluster broadcasts) |
//! | `chat:u:{U}:dms` | user U's direct-message rooms: hash room -> latest seq, TTL 1 day, for finding DMs lost with a subscription (`cluster/dm_index.rs`) |
//! | `chat:{R}:pr`, `:pu`, `:ty:<U>`, `:read`, `chat:nodes`, `chat:node:{N}:...` | v1.1 presence, typing and read pointers: see [`super::redis_presence`] |
//! | `chat:{T}:fence` | with `--redis-replicas`: a write that follows a read, so that `WAIT` covers what the read saw (`T`: a tag of the read's slot, [`super::replication`]) |
//!
//! Connections come from `redis-rs` with RESP3: its `ConnectionManager` (single server) and
//! `ClusterConnection` reconnect with backoff and resubscribe by themselves; pushes (messages
//! and a `Disconnection` notice) arrive on one channel.

pub use super::slot::key_slot;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, PushInfo, RedisResult, Value};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Seq assignment, recent cache, dedupe and publish: one atomic step per message.
///
/// KEYS: seq, log, dedupe. ARGV: msg JSON before the seq, msg JSON after it, the seq floor (the
/// highest seq this node has seen in the room, used when the seq key is missing, e.g. after
/// Redis lost its data, so that seqs continue instead of starting again at 1; `-1` asks the
/// script to answer `{-1, ''}` instead, so that the node can find the floor in PostgreSQL),
/// cache length, dedupe TTL (s), how to publish (`s` sharded, `p` plain, `n` not at all: with
/// `--redis-replicas` the node publishes once the replicas have the write, see
/// [`super::replication`]), room channel (empty for a direct message), then user channels.
/// Returns `{seq, msg}`, or `{0, first msg}` for a retry.
pub const PUBLISH_LUA: &str = r#"
local first = redis.call('GET', KEYS[3])
if first then return {0, first} end
local seq
if redis.call('EXISTS', KEYS[1]) == 1 then
  seq = redis.call('INCR', KEYS[1])
else
  if ARGV[3] == '-1' then return {-1, ''} end
  seq = tonumber(ARGV[3]) + 1
  redis.call('SET', KEYS[1], seq)
end
local msg = ARGV[1] .. seq .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], seq .. '-0', 'm', msg)
redis.call('SET', KEYS[3], msg, 'EX', ARGV[5])
if ARGV[6] ~= 'n' then
  if ARGV[7] ~= '' then
    if ARGV[6] == 's' then redis.call('SPUBLISH', ARGV[7], msg) else redis.call('PUBLISH', ARGV[7], msg) end
  end
  for i = 8, #ARGV do redis.call('PUBLISH', ARGV[i], msg) end
end
return {seq, msg}
"#;

/// The latest seq and every cached message after a seq, read atomically (so no message is both
/// after the returned seq and in the returned list). KEYS: seq, log. ARGV: first seq wanted.
/// Returns `{latest, {m1, m2, ...}}`.
pub const READ_AFTER_LUA: &str = r#"
local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
local entries = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+')
local out = {}
for i, e in ipairs(entries) do out[i] = e[2][2] end
return {latest, out}
"#;

pub fn seq_key(room: &str) -> String {
    format!("chat:{{{room}}}:seq")
}
pub fn log_key(room: &str) -> String {
    format!("chat:{{{room}}}:log")
}
pub fn dedupe_key(room: &str, from: &str, cid: &str) -> String {
    format!("chat:{{{room}}}:c:{from}:{cid}")
}
pub fn room_channel(room: &str) -> String {
    format!("chat:{{{room}}}:ch")
}
pub fn user_channel(user: &str) -> String {
    format!("chat:u:{{{user}}}")
}

/// The room of a room channel name.
pub fn room_of_channel(channel: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(channel).ok()?;
    s.strip_prefix("chat:{")?.strip_suffix("}:ch")
}

/// The user of a user channel name.
pub fn user_of_channel(channel: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(channel).ok()?;
    s.strip_prefix("chat:u:{")?.strip_suffix('}')
}

/// A command connection to a single Redis or a cluster.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connects to `urls` (one URL, or several seeds of a cluster). A single URL that turns out
    /// to be a cluster node is used as a cluster seed. Pushes go to the returned receiver.
    pub async fn connect(urls: &[String]) -> RedisResult<(RedisConn, UnboundedReceiver<PushInfo>)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let is_cluster = urls.len() > 1 || {
            let client = redis::Client::open(urls[0].as_str())?;
            let mut probe = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut probe)
                .await?;
            info.contains("cluster_enabled:1")
        };
        let conn = if is_cluster {
            let client = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .connection_timeout(Duration::from_secs(2))
                .response_timeout(Duration::from_secs(5))
                .retries(3)
                .build()?;
            RedisConn::Cluster(client.get_async_connection().await?)
        } else {
            let client =
                redis::Client::open(format!("{}?protocol=resp3", urls[0].trim_end_matches('/')))?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_push_sender(tx)
                .set_automatic_resubscription()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_max_delay(Duration::from_secs(2))
                .set_number_of_retries(usize::MAX);
            RedisConn::Single(client.get_connection_manager_with_config(config).await?)
        };
        Ok((conn, rx))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Runs commands as one pipeline (single server) or one pipeline per slot, sent together
    /// (cluster); results in command order, each its own `Ok`/`Err`.
    pub async fn run(&self, cmds: &[(u16, Cmd)]) -> RedisResult<Vec<RedisResult<Value>>> {
        self.run_with(cmds, None).await
    }

    /// [`RedisConn::run`]; with `confirm` = (replicas, timeout ms) each pipeline ends with a
    /// fence write and `WAIT`, and a command whose pipeline the replicas did not confirm in
    /// time answers an error ([`super::replication::not_replicated`]) instead of its result.
    pub async fn run_with(
        &self,
        cmds: &[(u16, Cmd)],
        confirm: Option<(u32, u64)>,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        self.run_within(cmds, confirm, Duration::from_secs(3600))
            .await
    }

    /// [`RedisConn::run_with`], where on a cluster a shard that does not answer `within`
    /// fails its own commands ([`shard_failed`]) and the others' answers stand.
    pub async fn run_within(
        &self,
        cmds: &[(u16, Cmd)],
        confirm: Option<(u32, u64)>,
        within: Duration,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        match self {
            RedisConn::Single(c) => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for (_, cmd) in cmds {
                    pipe.add_command(cmd.clone());
                }
                let slot = cmds.first().map_or(0, |(s, _)| *s);
                super::replication::add_wait(&mut pipe, slot, confirm);
                let mut c = c.clone();
                let answers = pipe.query_async(&mut c).await?;
                Ok(super::replication::take_wait(answers, cmds.len(), confirm))
            }
            RedisConn::Cluster(c) => {
                // Group by slot, keeping each slot's commands in order.
                let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
                for (i, (slot, _)) in cmds.iter().enumerate() {
                    match groups.iter_mut().find(|g| g.0 == *slot) {
                        Some(g) => g.1.push(i),
                        None => groups.push((*slot, vec![i])),
                    }
                }
                let futures = groups.iter().map(|(_, idx)| {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    for &i in idx {
                        pipe.add_command(cmds[i].1.clone());
                    }
                    super::replication::add_wait(&mut pipe, cmds[idx[0]].0, confirm);
                    let mut c = c.clone();
                    async move {
                        let answers = tokio::time::timeout(
                            within,
                            pipe.query_async::<Vec<RedisResult<Value>>>(&mut c),
                        )
                        .await
                        .map_err(|_| {
                            redis::RedisError::from((
                                redis::ErrorKind::Io,
                                "shard did not answer in time",
                            ))
                        })??;
                        Ok::<_, redis::RedisError>(super::replication::take_wait(
                            answers,
                            idx.len(),
                            confirm,
                        ))
                    }
                });
                let answers = futures_util::future::join_all(futures).await;
                let mut out: Vec<Option<RedisResult<Value>>> =
                    (0..cmds.len()).map(|_| None).collect();
                // A shard that failed (say its master just died) fails only its own commands:
                // the other shards' answers stand.
                for ((_, idx), answer) in groups.iter().zip(answers) {
                    match answer {
                        Ok(answer) => {
                            for (&i, r) in idx.iter().zip(answer) {
                                out[i] = Some(r);
                            }
                        }
                        Err(e) => {
                            for &i in idx {
                                out[i] = Some(Err(shard_failed(&e)));
                            }
                        }
                    }
                }
                Ok(out
                    .into_iter()
                    .map(|r| r.expect("every command answered"))
                    .collect())
            }
        }
    }

    /// Loads a script on every server (a cluster runs `SCRIPT LOAD` on all primaries).
    pub async fn load_script(&self, lua: &str) -> RedisResult<String> {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(lua);
        match self {
            RedisConn::Single(c) => cmd.query_async(&mut c.clone()).await,
            RedisConn::Cluster(c) => {
                let routing = redis::cluster_routing::RoutingInfo::MultiNode((
                    redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                    Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
                ));
                let v = c.clone().route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(first_string(v))?)
            }
        }
    }

    /// A cluster's slot ranges and the master of each: (first slot, last slot, master's
    /// `host:port id`), sorted, from `CLUSTER SLOTS` of any node. Empty for a single server.
    pub async fn slot_masters(&self) -> RedisResult<Vec<(i64, i64, String)>> {
        let RedisConn::Cluster(c) = self else {
            return Ok(Vec::new());
        };
        let routing = redis::cluster_routing::RoutingInfo::SingleNode(
            redis::cluster_routing::SingleNodeRoutingInfo::Random,
        );
        let answer = c
            .clone()
            .route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), routing)
            .await?;
        let Value::Array(ranges) = answer else {
            return Ok(Vec::new());
        };
        let mut out: Vec<(i64, i64, String)> = ranges
            .into_iter()
            .filter_map(|range| {
                let Value::Array(parts) = range else {
                    return None;
                };
                let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                    (parts.first(), parts.get(1), parts.get(2))
                else {
                    return None;
                };
                let text: Vec<String> = master
                    .iter()
                    .take(3)
                    .map(|v| match v {
                        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        Value::Int(i) => i.to_string(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                Some((*first, *last, text.join(" ")))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Subscribes to a room's channel (sharded on a cluster: SSUBSCRIBE) or a user's (plain
    /// pub/sub everywhere).
    pub async fn subscribe(&self, channel: &str, kind: ChannelKind) -> RedisResult<()> {
        match (self, kind) {
            (RedisConn::Single(c), _) => c.clone().subscribe(channel).await,
            (RedisConn::Cluster(c), ChannelKind::Room) => c.clone().ssubscribe(channel).await,
            (RedisConn::Cluster(c), ChannelKind::User) => c.clone().subscribe(channel).await,
        }
    }

    /// Undoes [`RedisConn::subscribe`] of the same channel and kind.
    pub async fn unsubscribe(&self, channel: &str, kind: ChannelKind) -> RedisResult<()> {
        match (self, kind) {
            (RedisConn::Single(c), _) => c.clone().unsubscribe(channel).await,
            (RedisConn::Cluster(c), ChannelKind::Room) => c.clone().sunsubscribe(channel).await,
            (RedisConn::Cluster(c), ChannelKind::User) => c.clone().unsubscribe(channel).await,
        }
    }
}

/// Whose channel a subscription is for: a room's is sharded on a Redis Cluster, a user's is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Room,
    User,
}

/// The error each command of a shard's failed pipeline answers (the shard's error, as text).
pub fn shard_failed(e: &redis::RedisError) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "shard failed", e.to_string()))
}

pub fn is_shard_failed(e: &redis::RedisError) -> bool {
    e.to_string().contains("shard failed")
}

/// `SCRIPT LOAD` on all primaries answers one sha per node (all equal): take one.
fn first_string(v: Value) -> Value {
    match v {
        Value::Array(mut items) if !items.is_empty() => first_string(items.swap_remove(0)),
        Value::Map(mut items) if !items.is_empty() => first_string(items.swap_remove(0).1),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values from the Redis Cluster specification and redis-cli.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(
            key_slot("{user1000}.following"),
            key_slot("{user1000}.followers")
        );
        assert_eq!(key_slot(&seq_key("lobby")), key_slot(&log_key("lobby")));
        assert_eq!(
            key_slot(&seq_key("lobby")),
            key_slot(&room_channel("lobby"))
        );
        assert_eq!(
            key_slot(&seq_key("a}b")),
            key_slot(&dedupe_key("a}b", "u", "c")),
            "a }} in the name"
        );
        assert_eq!(
            key_slot("foo{}{bar}"),
            key_slot("foo{}{bar}"),
            "empty tag hashes the whole key"
        );
    }

    #[test]
    fn channel_names_round_trip() {
        assert_eq!(room_of_channel(room_channel("r:1").as_bytes()), Some("r:1"));
        assert_eq!(user_of_channel(user_channel("bob").as_bytes()), Some("bob"));
        assert_eq!(room_of_channel(b"other"), None);
    }
}
