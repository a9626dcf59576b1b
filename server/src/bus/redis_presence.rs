//! The v1.1 keys and Lua steps in Redis: presence, typing and read pointers (the cluster side;
//! [`super::cluster`]'s `social.rs` runs them). Standalone keeps the same state in memory
//! (`memory/presence.rs`).
//!
//! | key | what |
//! | --- | --- |
//! | `chat:{R}:pr` | hash `<user>\|<node>` -> 1: the nodes where a user has a member connection in room R (a node reports only its own first and last, so a connect costs Redis nothing when the user is already in the room on that node) |
//! | `chat:{R}:pu` | hash `<user>` -> the number of nodes above: R's present users (`HKEYS` is the `presence` answer) |
//! | `chat:{R}:ty:<U>` | U typed in R within the last second (`SET NX PX 1000`: the dedupe of `typing`) |
//! | `chat:{R}:read` | hash `<user>` -> read pointer, a cache of PostgreSQL's `read_pointers` when the node has a store |
//! | `chat:nodes` | hash node id (hex) -> heartbeat, ms since the epoch, written every `--presence-ttl`/3 |
//! | `chat:node:{N}:rooms` | the rooms where node N has presence entries (for reaping them when N dies) |
//! | `chat:node:{N}:users` | the users connected to node N (the `presence` of direct-message rooms) |
//! | `chat:node:{N}:reap` | lock: one live node reaps a dead N |
//!
//! Events travel on the existing channels with a header, so the receiving node can tell them
//! from `msg` JSON (which starts with `{`): `!<except>\n<event JSON>`. On a room channel
//! `<except>` is a user whose connections skip the event (the typist), on a user channel it is
//! `<node>:<core>:<conn>`, the connection that asked (a `read` answered to it already); empty
//! for nobody.

/// A node's first member connection of a user in a room came (`+`) or its last went (`-`).
/// Idempotent, so a retry after a lost answer changes nothing.
///
/// KEYS: pr, pu. ARGV: user, node, `+`/`-`, publish mode (`s` sharded, `p` plain), room
/// channel, the event payload (`!\n{"type":"online"...}` or offline), the coalescing threshold.
/// Publishes the event when the user's first node came or last went and the room has at most
/// the threshold of present users. Returns `{changed (0/1), present users, published (0/1)}`.
pub const PRESENCE_LUA: &str = r#"
local field = ARGV[1] .. '|' .. ARGV[2]
local changed = 0
local edge = false
if ARGV[3] == '+' then
  if redis.call('HSETNX', KEYS[1], field, 1) == 1 then
    changed = 1
    edge = redis.call('HINCRBY', KEYS[2], ARGV[1], 1) == 1
  end
else
  if redis.call('HDEL', KEYS[1], field) == 1 then
    changed = 1
    if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
      redis.call('HDEL', KEYS[2], ARGV[1])
      edge = true
    end
  end
end
local n = redis.call('HLEN', KEYS[2])
local published = 0
if edge and n <= tonumber(ARGV[7]) then
  if ARGV[4] == 's' then redis.call('SPUBLISH', ARGV[5], ARGV[6]) else redis.call('PUBLISH', ARGV[5], ARGV[6]) end
  published = 1
end
return {changed, n, published}
"#;

/// Removes a dead node's presence from one room. KEYS: pr, pu. ARGV: node, publish mode, room
/// channel, the room as a JSON string, the coalescing threshold. Publishes `offline` for each
/// user who was present only there (unless the room is over the threshold). Returns
/// `{users removed, present users left}`.
pub const REAP_LUA: &str = r#"
local suffix = '|' .. ARGV[1]
local removed = 0
local gone = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if #f > #suffix and string.sub(f, -#suffix) == suffix then
    redis.call('HDEL', KEYS[1], f)
    local user = string.sub(f, 1, #f - #suffix)
    removed = removed + 1
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      gone[#gone + 1] = user
    end
  end
end
local n = redis.call('HLEN', KEYS[2])
if n <= tonumber(ARGV[5]) then
  for _, user in ipairs(gone) do
    local ev = '!\n{"type":"offline","room":' .. ARGV[4] .. ',"user":"' .. user .. '"}'
    if ARGV[2] == 's' then redis.call('SPUBLISH', ARGV[3], ev) else redis.call('PUBLISH', ARGV[3], ev) end
  end
end
return {removed, n}
"#;

/// `typing`, deduplicated across the cluster: KEYS: the typing mark. ARGV: publish mode,
/// channel (the room's, or the other user's for a direct message), payload. Returns 1 if
/// published, 0 if the user typed in the room within the last second.
pub const TYPING_LUA: &str = r#"
if redis.call('SET', KEYS[1], '1', 'PX', 1000, 'NX') then
  if ARGV[1] == 's' then redis.call('SPUBLISH', ARGV[2], ARGV[3]) else redis.call('PUBLISH', ARGV[2], ARGV[3]) end
  return 1
end
return 0
"#;

/// A read pointer moved: KEYS: read hash, seq. ARGV: user, new pointer (already the maximum
/// PostgreSQL holds, when there is a store), the room's seq floor (used when the seq key is
/// missing), the user's channel, the event payload header (`!<node>:<core>:<conn>\n`), the
/// room as a JSON string. Refuses a pointer past the room's latest seq (`{-1, latest}`);
/// otherwise keeps the maximum, tells the user's other connections when it moved, and returns
/// `{pointer, moved (0/1)}`.
pub const READ_LUA: &str = r#"
local latest = tonumber(redis.call('GET', KEYS[2]) or ARGV[3])
local want = tonumber(ARGV[2])
if want > latest then return {-1, latest} end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if want <= old then return {old, 0} end
redis.call('HSET', KEYS[1], ARGV[1], want)
redis.call('PUBLISH', ARGV[4], ARGV[5] .. '{"type":"read","room":' .. ARGV[6] .. ',"seq":' .. want .. '}')
return {want, 1}
"#;

pub fn present_nodes_key(room: &str) -> String {
    format!("chat:{{{room}}}:pr")
}
pub fn present_users_key(room: &str) -> String {
    format!("chat:{{{room}}}:pu")
}
pub fn typing_key(room: &str, user: &str) -> String {
    format!("chat:{{{room}}}:ty:{user}")
}
pub fn read_key(room: &str) -> String {
    format!("chat:{{{room}}}:read")
}
pub const NODES_KEY: &str = "chat:nodes";
pub fn node_rooms_key(node: &str) -> String {
    format!("chat:node:{{{node}}}:rooms")
}
pub fn node_users_key(node: &str) -> String {
    format!("chat:node:{{{node}}}:users")
}
pub fn reap_lock_key(node: &str) -> String {
    format!("chat:node:{{{node}}}:reap")
}

/// An event payload: `!<except>\n<json>`.
pub fn event_payload(except: &str, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + except.len() + json.len());
    out.push(b'!');
    out.extend_from_slice(except.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(json);
    out
}

/// Splits an event payload into `(except, json)`; `None` for anything else (a `msg`).
pub fn split_event(payload: &[u8]) -> Option<(&str, &[u8])> {
    let rest = payload.strip_prefix(b"!")?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let except = std::str::from_utf8(&rest[..nl]).ok()?;
    Some((except, &rest[nl + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::redis::{key_slot, room_channel, seq_key};

    #[test]
    fn a_rooms_v1_1_keys_share_its_slot() {
        let slot = key_slot(&seq_key("lobby"));
        for k in [
            present_nodes_key("lobby"),
            present_users_key("lobby"),
            typing_key("lobby", "ann"),
            read_key("lobby"),
            room_channel("lobby"),
        ] {
            assert_eq!(key_slot(&k), slot, "{k}");
        }
    }

    #[test]
    fn event_payloads_round_trip_and_msgs_are_not_events() {
        let p = event_payload("ann", br#"{"type":"typing"}"#);
        assert_eq!(split_event(&p), Some(("ann", &br#"{"type":"typing"}"#[..])));
        assert_eq!(
            split_event(&event_payload("", b"{}")),
            Some(("", &b"{}"[..]))
        );
        assert_eq!(split_event(br#"{"type":"msg"}"#), None);
    }
}
