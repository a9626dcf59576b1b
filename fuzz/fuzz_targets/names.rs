//! Arbitrary room names, user ids and cids: whatever the validators accept can never change
//! which Redis key or slot a command touches. The server's keys are `chat:{ROOM}:...` with the
//! room as the hash tag (`server/src/bus/redis.rs`) and `chat:{ROOM}:c:<user>:<cid>` for the
//! dedupe window; Redis hashes the part between the first `{` and the first `}` after it.
//! So every accepted room must be exactly the hash tag of its keys, and no accepted
//! (room, user, cid) may make a dedupe key that equals another room's key.
#![no_main]

use chat_wire::protocol::{dm_members, dm_room, validate_room, validate_user, ClientOp, Decoder};
use libfuzzer_sys::fuzz_target;

/// The hash tag Redis Cluster hashes for `key` (the whole key when there is none).
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{1}');
    let (room, user, cid) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );

    if validate_room(room).is_ok() {
        assert!(!room.contains(['{', '}']) && !room.chars().any(char::is_whitespace));
        for suffix in ["seq", "log", "ch"] {
            let key = format!("chat:{{{room}}}:{suffix}");
            assert_eq!(hash_tag(&key), room, "the room is its keys' hash tag");
        }
    }
    if validate_user(user).is_ok() {
        assert!(user.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
        if let Some(dm) = dm_room(user, "zzzz-peer") {
            assert!(validate_room(&dm).is_ok(), "a DM room is a valid room: {dm}");
            assert!(dm_members(&dm).is_some());
        }
    }

    // The decoder's view: a `send` with these fields either fails or carries values whose
    // dedupe key keeps the room's slot and cannot be another room's key.
    let request = format!(
        r#"{{"type":"send","room":{},"cid":{},"body":"b"}}"#,
        json_str(room),
        json_str(cid)
    );
    let mut decoder = Decoder::default();
    let mut bytes = request.into_bytes();
    if let Ok(ClientOp::Send { room, cid, .. }) = decoder.decode(&mut bytes) {
        let from = if validate_user(user).is_ok() { user } else { "u" };
        let dedupe = format!("chat:{{{room}}}:c:{from}:{cid}");
        assert_eq!(hash_tag(&dedupe), room, "a cid cannot move the dedupe key: {dedupe}");
        for suffix in ["seq", "log", "ch"] {
            let other = format!("chat:{{{}}}:{suffix}", hash_tag(&dedupe));
            assert_ne!(dedupe, other, "a dedupe key is never a room's key");
        }
    }
});
