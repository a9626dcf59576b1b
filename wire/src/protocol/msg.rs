//! The chat message as delivered (`msg`), stored and sent to Kafka: encoded once, whole or as
//! the head and tail around a seq that a store assigns. Reading one back is
//! [`super::MsgView`]'s (`msg_view.rs`).

use super::json::{put_json_str, put_u64};
use bytes::{BufMut, Bytes, BytesMut};

/// A chat message as delivered (`msg`), stored and sent to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg<'a> {
    pub room: &'a str,
    pub seq: u64,
    pub id: &'a str,
    pub from: &'a str,
    pub ts: u64,
    pub body: &'a str,
    pub cid: &'a str,
}

impl Msg<'_> {
    /// `{"type":"msg","room":R,"seq":S,"id":ID,"from":U,"ts":MS,"body":B,"cid":C}`
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(96 + self.room.len() + self.id.len() + self.body.len() + self.cid.len());
        self.encode_head(out);
        put_u64(out, self.seq);
        self.encode_tail(out);
    }

    /// The JSON before the seq: `{"type":"msg","room":R,"seq":`.
    pub fn encode_head(&self, out: &mut BytesMut) {
        out.put_slice(b"{\"type\":\"msg\",\"room\":");
        put_json_str(out, self.room);
        out.put_slice(b",\"seq\":");
    }

    /// The JSON after the seq: `,"id":ID,...}`. A store that assigns the seq itself (the Redis
    /// Lua step) joins head, seq and tail without parsing anything.
    pub fn encode_tail(&self, out: &mut BytesMut) {
        out.put_slice(b",\"id\":");
        put_json_str(out, self.id);
        out.put_slice(b",\"from\":");
        put_json_str(out, self.from);
        out.put_slice(b",\"ts\":");
        put_u64(out, self.ts);
        out.put_slice(b",\"body\":");
        put_json_str(out, self.body);
        out.put_slice(b",\"cid\":");
        put_json_str(out, self.cid);
        out.put_u8(b'}');
    }

    /// The `msg` as a ready-to-send text frame.
    pub fn frame(&self) -> Bytes {
        crate::frame::encode_text_with(128 + self.body.len(), |out| self.encode(out))
    }
}
