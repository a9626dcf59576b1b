//! Reading Redis answers and stored `msg` JSON: the few shapes the bus gets back.

use crate::bus::redis as keys;
use crate::bus::replication;
use chat_wire::protocol::{Field, MsgView};
use redis::{RedisResult, Value};
use std::borrow::Cow;

/// The fields of a stored `msg` the bus needs to route it.
pub(super) struct MsgHead<'a> {
    pub(super) room: Cow<'a, str>,
    pub(super) seq: u64,
    pub(super) id: Cow<'a, str>,
    /// Milliseconds since the epoch (absent in nothing the server writes; 0 if so).
    pub(super) ts: u64,
}

/// Reads the head with chat-wire's `msg` decoder, as strict as a `serde_json` derive of these
/// fields: `None` for malformed JSON, or `room`, `seq`, `id` (and `ts` if present) missing,
/// repeated or mistyped.
pub(super) fn msg_head(json: &[u8]) -> Option<MsgHead<'_>> {
    let m = MsgView::parse(json).ok()?;
    Some(MsgHead {
        room: m.text(Field::Room).ok()?,
        seq: m.u64(Field::Seq).ok()?,
        id: m.text(Field::Id).ok()?,
        ts: m.u64_or(Field::Ts, 0).ok()?,
    })
}

pub(super) fn msg_seq_and_id(json: &[u8]) -> Option<(u64, String)> {
    msg_head(json).map(|h| (h.seq, h.id.into_owned()))
}

pub(super) fn value_u64(v: &Value) -> u64 {
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

pub(super) fn bulk(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        _ => None,
    }
}

/// The `m` fields of `XRANGE`/`XREVRANGE` entries, in the order given.
pub(super) fn stream_messages(v: Value) -> Vec<Vec<u8>> {
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

pub(super) fn evalsha(sha: &str, keys: &[String], args: &[Vec<u8>]) -> redis::Cmd {
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

pub(super) fn unreplicated(answer: &RedisResult<Value>) -> bool {
    matches!(answer, Err(e) if replication::is_not_replicated(e))
}

/// An answer worth running its command again for: its shard failed, or the replicas did not
/// confirm it.
pub(super) fn again(answer: &RedisResult<Value>) -> bool {
    matches!(answer, Err(e) if replication::is_not_replicated(e) || keys::is_shard_failed(e))
}
