//! Server replies other than `msg`, each encoded as one text frame.

use super::json::{put_json_str, put_u64};
use super::RequestError;
use crate::frame::encode_text_with;
use bytes::{BufMut, Bytes};

/// `{"type":"ack","cid":C,"room":R,"seq":S,"id":ID}`
pub fn ack(cid: &str, room: &str, seq: u64, id: &str) -> Bytes {
    encode_text_with(64 + cid.len() + room.len() + id.len(), |out| {
        out.put_slice(b"{\"type\":\"ack\",\"cid\":");
        put_json_str(out, cid);
        out.put_slice(b",\"room\":");
        put_json_str(out, room);
        out.put_slice(b",\"seq\":");
        put_u64(out, seq);
        out.put_slice(b",\"id\":");
        put_json_str(out, id);
        out.put_u8(b'}');
    })
}

/// `{"type":"joined","room":R,"seq":S,"read":P}` (`read`: the user's read pointer, v1.1)
pub fn joined(room: &str, seq: u64, read: u64) -> Bytes {
    encode_text_with(64 + room.len(), |out| {
        out.put_slice(b"{\"type\":\"joined\",\"room\":");
        put_json_str(out, room);
        out.put_slice(b",\"seq\":");
        put_u64(out, seq);
        out.put_slice(b",\"read\":");
        put_u64(out, read);
        out.put_u8(b'}');
    })
}

/// `{"type":"left","room":R}`
pub fn left(room: &str) -> Bytes {
    encode_text_with(32 + room.len(), |out| {
        out.put_slice(b"{\"type\":\"left\",\"room\":");
        put_json_str(out, room);
        out.put_u8(b'}');
    })
}

/// `{"type":"resumed","room":R,"seq":S,"read":P,"complete":B}`
pub fn resumed(room: &str, seq: u64, read: u64, complete: bool) -> Bytes {
    encode_text_with(80 + room.len(), |out| {
        out.put_slice(b"{\"type\":\"resumed\",\"room\":");
        put_json_str(out, room);
        out.put_slice(b",\"seq\":");
        put_u64(out, seq);
        out.put_slice(b",\"read\":");
        put_u64(out, read);
        out.put_slice(if complete {
            b",\"complete\":true}"
        } else {
            b",\"complete\":false}"
        });
    })
}

/// `{"type":"history","room":R,"messages":[...]}` from `msg` objects already encoded.
pub fn history<'m>(room: &str, messages: impl IntoIterator<Item = &'m [u8]> + Clone) -> Bytes {
    let size: usize = messages.clone().into_iter().map(|m| m.len() + 1).sum();
    encode_text_with(48 + room.len() + size, |out| {
        out.put_slice(b"{\"type\":\"history\",\"room\":");
        put_json_str(out, room);
        out.put_slice(b",\"messages\":[");
        for (i, m) in messages.into_iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(m);
        }
        out.put_slice(b"]}");
    })
}

/// `{"type":"error","code":CODE,"message":TEXT,"cid":C}` (`cid` only when known).
pub fn error(e: &RequestError) -> Bytes {
    encode_text_with(64 + e.message.len(), |out| {
        out.put_slice(b"{\"type\":\"error\",\"code\":\"");
        out.put_slice(e.code.as_str().as_bytes());
        out.put_slice(b"\",\"message\":");
        put_json_str(out, &e.message);
        if let Some(cid) = &e.cid {
            out.put_slice(b",\"cid\":");
            put_json_str(out, cid);
        }
        out.put_u8(b'}');
    })
}

/// `{"type":T,"room":R,"<field>":V}` with a string value: `online`/`offline` (`user`) and
/// `typing` (`from`).
fn room_and_name(ty: &str, room: &str, field: &str, value: &str) -> Bytes {
    encode_text_with(
        32 + ty.len() + room.len() + field.len() + value.len(),
        |out| {
            out.put_slice(b"{\"type\":\"");
            out.put_slice(ty.as_bytes());
            out.put_slice(b"\",\"room\":");
            put_json_str(out, room);
            out.put_slice(b",\"");
            out.put_slice(field.as_bytes());
            out.put_slice(b"\":");
            put_json_str(out, value);
            out.put_u8(b'}');
        },
    )
}

/// `{"type":"online","room":R,"user":U}` (v1.1)
pub fn online(room: &str, user: &str) -> Bytes {
    room_and_name("online", room, "user", user)
}

/// `{"type":"offline","room":R,"user":U}` (v1.1)
pub fn offline(room: &str, user: &str) -> Bytes {
    room_and_name("offline", room, "user", user)
}

/// `{"type":"typing","room":R,"from":U}` (v1.1)
pub fn typing(room: &str, from: &str) -> Bytes {
    room_and_name("typing", room, "from", from)
}

/// `{"type":"read","room":R,"seq":S}` (v1.1): the user's read pointer.
pub fn read(room: &str, seq: u64) -> Bytes {
    encode_text_with(48 + room.len(), |out| {
        out.put_slice(b"{\"type\":\"read\",\"room\":");
        put_json_str(out, room);
        out.put_slice(b",\"seq\":");
        put_u64(out, seq);
        out.put_u8(b'}');
    })
}

/// Most user ids a `presence` reply lists (`count` is always exact).
pub const MAX_PRESENCE_USERS: usize = 1000;

/// `{"type":"presence","room":R,"count":N,"users":[...]}` (v1.1): `users` sorted, the first
/// [`MAX_PRESENCE_USERS`] of them.
pub fn presence<'u>(room: &str, count: usize, users: impl IntoIterator<Item = &'u str>) -> Bytes {
    let users: Vec<&str> = users.into_iter().take(MAX_PRESENCE_USERS).collect();
    let size: usize = users.iter().map(|u| u.len() + 3).sum();
    encode_text_with(64 + room.len() + size, |out| {
        out.put_slice(b"{\"type\":\"presence\",\"room\":");
        put_json_str(out, room);
        out.put_slice(b",\"count\":");
        put_u64(out, count as u64);
        out.put_slice(b",\"users\":[");
        for (i, u) in users.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            put_json_str(out, u);
        }
        out.put_slice(b"]}");
    })
}

/// `{"type":"presence","room":R,"count":N}` (v1.1, no `users`): the coalesced event of a large
/// room, once a second while its presence changes; a client that wants the list asks
/// `presence`. Small, so that a 100,000-member room's churn does not flood its members.
pub fn presence_count(room: &str, count: usize) -> Bytes {
    encode_text_with(48 + room.len(), |out| {
        out.put_slice(b"{\"type\":\"presence\",\"room\":");
        put_json_str(out, room);
        out.put_slice(b",\"count\":");
        put_u64(out, count as u64);
        out.put_u8(b'}');
    })
}
