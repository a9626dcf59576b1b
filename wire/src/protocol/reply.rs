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

/// `{"type":"joined","room":R,"seq":S}`
pub fn joined(room: &str, seq: u64) -> Bytes {
    encode_text_with(48 + room.len(), |out| {
        out.put_slice(b"{\"type\":\"joined\",\"room\":");
        put_json_str(out, room);
        out.put_slice(b",\"seq\":");
        put_u64(out, seq);
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

/// `{"type":"resumed","room":R,"seq":S,"complete":B}`
pub fn resumed(room: &str, seq: u64, complete: bool) -> Bytes {
    encode_text_with(64 + room.len(), |out| {
        out.put_slice(b"{\"type\":\"resumed\",\"room\":");
        put_json_str(out, room);
        out.put_slice(b",\"seq\":");
        put_u64(out, seq);
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
