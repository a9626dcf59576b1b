//! The JSON messages of `shared/PROTOCOL.md`.
//!
//! Client requests are decoded with `simd-json` into a reused tape, so a request costs no
//! allocation beyond the strings the server keeps; every field is checked here (types, lengths,
//! names) so the server only ever sees well-formed requests. Server messages are written by hand
//! straight into frame buffers (see [`crate::frame::encode_text_with`]): a `msg` is encoded once,
//! and the same bytes go to every recipient, into history and into Kafka.

use bytes::{BufMut, Bytes, BytesMut};
use simd_json::prelude::*;
use simd_json::{Buffers, Tape};
use std::fmt;

/// Default limit of a message `body`, in bytes.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 128;
/// Longest user id, in characters.
pub const MAX_USER_CHARS: usize = 64;
/// Longest client message id (`cid`), in bytes. PROTOCOL.md leaves it open; 128 is generous for
/// UUIDs and counters and keeps the dedupe table small.
pub const MAX_CID_BYTES: usize = 128;
/// `history` page size when `limit` is absent, and its upper bound.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
pub const MAX_HISTORY_LIMIT: u32 = 100;
/// Prefix of direct-message rooms.
pub const DM_PREFIX: &str = "dm:";

/// The error codes of PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    NotJoined,
    Forbidden,
    TooLarge,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// One client request, borrowing its strings from the frame payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp<'a> {
    Join {
        room: &'a str,
    },
    Leave {
        room: &'a str,
    },
    Send {
        room: &'a str,
        cid: &'a str,
        body: &'a str,
    },
    Dm {
        to: &'a str,
        cid: &'a str,
        body: &'a str,
    },
    History {
        room: &'a str,
        before: Option<u64>,
        limit: u32,
    },
    Resume {
        room: &'a str,
        after: u64,
    },
}

/// A request that cannot be served: the `error` to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
    /// The request's `cid`, when it had a string one.
    pub cid: Option<String>,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
            cid: None,
        }
    }

    pub fn with_cid(mut self, cid: Option<&str>) -> Self {
        self.cid = cid.map(str::to_owned);
        self
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for RequestError {}

/// Decodes client requests, reusing `simd-json`'s buffers and tape between calls.
pub struct Decoder {
    buffers: Buffers,
    tape: Option<Tape<'static>>,
    max_body: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(MAX_BODY)
    }
}

impl Decoder {
    /// `max_body`: longest accepted `body`, in bytes (`too_large` beyond).
    pub fn new(max_body: usize) -> Self {
        Decoder {
            buffers: Buffers::new(1024),
            tape: Some(Tape::null().reset()),
            max_body,
        }
    }

    /// Decodes one text message. `input` is modified (simd-json unescapes strings in place) and
    /// the returned request borrows from it.
    pub fn decode<'a>(&mut self, input: &'a mut [u8]) -> Result<ClientOp<'a>, RequestError> {
        let mut tape: Tape<'a> = self.tape.take().unwrap_or_else(Tape::null).reset();
        let result = match simd_json::fill_tape(input, &mut self.buffers, &mut tape) {
            Ok(()) => decode_value(tape.as_value(), self.max_body),
            Err(e) => Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("invalid JSON: {e}"),
            )),
        };
        self.tape = Some(tape.reset());
        result
    }
}

type TapeValue<'t, 'a> = simd_json::tape::Value<'t, 'a>;

fn decode_value<'a>(v: TapeValue<'_, 'a>, max_body: usize) -> Result<ClientOp<'a>, RequestError> {
    if v.as_object().is_none() {
        return Err(RequestError::new(
            ErrorCode::BadRequest,
            "a message must be a JSON object",
        ));
    }
    let cid = v.get("cid").and_then(|c| c.into_string());
    let fields = Fields { v, cid };
    let ty = fields.str("type")?;
    let op = match ty {
        "join" => ClientOp::Join {
            room: fields.room("room")?,
        },
        "leave" => ClientOp::Leave {
            room: fields.room("room")?,
        },
        "send" => {
            let room = fields.room("room")?;
            let cid = fields.cid()?;
            ClientOp::Send {
                room,
                cid,
                body: fields.body(max_body)?,
            }
        }
        "dm" => {
            let to = fields.str("to")?;
            validate_user(to)
                .map_err(|m| fields.err(ErrorCode::BadRequest, format!("`to`: {m}")))?;
            let cid = fields.cid()?;
            ClientOp::Dm {
                to,
                cid,
                body: fields.body(max_body)?,
            }
        }
        "history" => {
            let room = fields.room("room")?;
            let before = fields.opt_u64("before")?;
            let limit = match fields.opt_u64("limit")? {
                None => DEFAULT_HISTORY_LIMIT,
                Some(l) if (1..=MAX_HISTORY_LIMIT as u64).contains(&l) => l as u32,
                Some(_) => {
                    return Err(fields.err(
                        ErrorCode::BadRequest,
                        format!("`limit` must be between 1 and {MAX_HISTORY_LIMIT}"),
                    ))
                }
            };
            ClientOp::History {
                room,
                before,
                limit,
            }
        }
        "resume" => {
            let room = fields.room("room")?;
            let after = fields
                .opt_u64("after")?
                .ok_or_else(|| fields.err(ErrorCode::BadRequest, "missing field `after`"))?;
            ClientOp::Resume { room, after }
        }
        other => {
            return Err(fields.err(ErrorCode::BadRequest, format!("unknown type {other:?}")));
        }
    };
    Ok(op)
}

struct Fields<'t, 'a> {
    v: TapeValue<'t, 'a>,
    cid: Option<&'a str>,
}

impl<'a> Fields<'_, 'a> {
    fn err(&self, code: ErrorCode, message: impl Into<String>) -> RequestError {
        RequestError::new(code, message).with_cid(self.cid)
    }

    fn str(&self, name: &str) -> Result<&'a str, RequestError> {
        match self.v.get(name) {
            None => Err(self.err(ErrorCode::BadRequest, format!("missing field `{name}`"))),
            Some(f) => f.into_string().ok_or_else(|| {
                self.err(ErrorCode::BadRequest, format!("`{name}` must be a string"))
            }),
        }
    }

    fn room(&self, name: &str) -> Result<&'a str, RequestError> {
        let room = self.str(name)?;
        validate_room(room)
            .map_err(|m| self.err(ErrorCode::BadRequest, format!("`{name}`: {m}")))?;
        Ok(room)
    }

    fn cid(&self) -> Result<&'a str, RequestError> {
        let cid = self.str("cid")?;
        if cid.is_empty() || cid.len() > MAX_CID_BYTES {
            return Err(self.err(
                ErrorCode::BadRequest,
                format!("`cid` must be 1-{MAX_CID_BYTES} bytes"),
            ));
        }
        storable("cid", cid).map_err(|m| self.err(ErrorCode::BadRequest, m))?;
        Ok(cid)
    }

    fn body(&self, max: usize) -> Result<&'a str, RequestError> {
        let body = self.str("body")?;
        if body.len() > max {
            return Err(self.err(ErrorCode::TooLarge, format!("`body` is over {max} bytes")));
        }
        storable("body", body).map_err(|m| self.err(ErrorCode::BadRequest, m))?;
        Ok(body)
    }

    fn opt_u64(&self, name: &str) -> Result<Option<u64>, RequestError> {
        match self.v.get(name) {
            None => Ok(None),
            Some(f) if f.is_null() => Ok(None),
            Some(f) => f.as_u64().map(Some).ok_or_else(|| {
                self.err(
                    ErrorCode::BadRequest,
                    format!("`{name}` must be a non-negative integer"),
                )
            }),
        }
    }
}

/// Refuses text that PostgreSQL's `text` type cannot hold as given: U+0000. Everything the
/// server acks must reach `messages` unchanged (PROTOCOL.md guarantee 1), so a `body` or `cid`
/// with a NUL is `bad_request` here instead of a dead letter in the persister. (Room names and
/// user ids refuse every control character already; lone surrogates in `\u` escapes are
/// refused by the JSON parser, so every `&str` that gets here is valid UTF-8.)
fn storable(field: &str, s: &str) -> Result<(), String> {
    // `contains` on bytes is a memchr scan.
    if s.as_bytes().contains(&0) {
        return Err(format!(
            "`{field}` contains U+0000, which PostgreSQL text cannot store"
        ));
    }
    Ok(())
}

/// Invisible format characters (Unicode category Cf): zero-width spaces and joiners,
/// bidirectional overrides (U+202E turns `room-a` into what looks like another name), the
/// byte order mark, tags. A room name with them looks like another one.
fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{AD}' | '\u{600}'..='\u{605}' | '\u{61C}' | '\u{6DD}' | '\u{70F}' | '\u{8E2}'
        | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}')
}

/// Room names: 1-128 characters; no whitespace, control or invisible format characters; no
/// `{` or `}` (a room's Redis keys carry it as their hash tag, `chat:{ROOM}:...`: a brace in
/// the name could change the slot or make one room's key equal another's).
pub fn validate_room(room: &str) -> Result<(), &'static str> {
    if room.is_empty() {
        return Err("room name is empty");
    }
    if room.chars().count() > MAX_ROOM_CHARS {
        return Err("room name is over 128 characters");
    }
    if room.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("room name contains whitespace or control characters");
    }
    if room.chars().any(is_format_char) {
        return Err("room name contains invisible format characters (U+200B, U+202E, ...)");
    }
    if room.contains(['{', '}']) {
        return Err("room name contains { or } (reserved: Redis hash tags)");
    }
    Ok(())
}

/// User ids: 1-64 characters of `[A-Za-z0-9_.-]`.
pub fn validate_user(user: &str) -> Result<(), &'static str> {
    if user.is_empty() || user.len() > MAX_USER_CHARS {
        return Err("user id must be 1-64 characters");
    }
    if !user
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("user id may only contain A-Z a-z 0-9 _ . -");
    }
    Ok(())
}

/// The room of a direct conversation: `dm:<a>:<b>` with `a < b`. `None` for a user with
/// themselves.
pub fn dm_room(x: &str, y: &str) -> Option<String> {
    let (a, b) = match x.cmp(y) {
        std::cmp::Ordering::Less => (x, y),
        std::cmp::Ordering::Greater => (y, x),
        std::cmp::Ordering::Equal => return None,
    };
    Some(format!("{DM_PREFIX}{a}:{b}"))
}

/// The two users of a direct-message room, if `room` is a well-formed one.
pub fn dm_members(room: &str) -> Option<(&str, &str)> {
    let rest = room.strip_prefix(DM_PREFIX)?;
    let (a, b) = rest.split_once(':')?;
    (validate_user(a).is_ok() && validate_user(b).is_ok() && a < b).then_some((a, b))
}

/// How [`put_json_str`] writes each byte: 0 = as it is, `u` = `\u00XX`, any other value `c` =
/// a backslash and `c` (`\"`, `\\`, `\n`, `\r`, `\t`).
static JSON_ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Writes `s` as a JSON string literal.
///
/// Runs without anything to escape (nearly all of a chat message) are found eight bytes at a
/// time and copied with one `extend_from_slice` each; [`JSON_ESCAPE`] says how to write the
/// byte that ends a run.
pub fn put_json_str(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.put_u8(b'"');
    let mut start = 0;
    loop {
        let i = next_json_escape(bytes, start);
        out.extend_from_slice(&bytes[start..i]);
        let Some(&b) = bytes.get(i) else { break };
        match JSON_ESCAPE[b as usize] {
            b'u' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]);
            }
            c => out.extend_from_slice(&[b'\\', c]),
        }
        start = i + 1;
    }
    out.put_u8(b'"');
}

/// The index of the first byte at or after `from` that JSON must escape (`"`, `\\`, below
/// 0x20), or `bytes.len()`.
///
/// Eight bytes at a time (SWAR): per byte lane, `(x - 1) & !x & 0x80` is set when `x` is 0 and
/// `(w - 0x20) & !w & 0x80` when `w < 0x20`. A lane can only be set wrongly above a lane that is
/// rightly set (a borrow runs upwards), so the lowest set lane is always the first match.
#[inline]
fn next_json_escape(bytes: &[u8], from: usize) -> usize {
    const LANES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap());
        let quote = w ^ (LANES * b'"' as u64);
        let backslash = w ^ (LANES * b'\\' as u64);
        let hits = ((w.wrapping_sub(LANES * 0x20) & !w)
            | (quote.wrapping_sub(LANES) & !quote)
            | (backslash.wrapping_sub(LANES) & !backslash))
            & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < bytes.len() && JSON_ESCAPE[bytes[i] as usize] == 0 {
        i += 1;
    }
    i
}

fn put_u64(out: &mut BytesMut, v: u64) {
    out.put_slice(itoa::Buffer::new().format(v).as_bytes());
}

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

/// Server replies other than `msg`, each encoded as one text frame.
pub mod reply {
    use super::*;
    use crate::frame::encode_text_with;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::payload_of;

    fn decode(s: &str) -> Result<ClientOp<'static>, RequestError> {
        let mut d = Decoder::default();
        let buf: &'static mut [u8] = Box::leak(s.as_bytes().to_vec().into_boxed_slice());
        d.decode(buf)
    }

    fn json(frame: &Bytes) -> serde_json::Value {
        serde_json::from_slice(&payload_of(frame)).unwrap()
    }

    #[test]
    fn decodes_every_request_type() {
        assert_eq!(
            decode(r#"{"type":"join","room":"a","extra":[1,2]}"#),
            Ok(ClientOp::Join { room: "a" })
        );
        assert_eq!(
            decode(r#"{"type":"leave","room":"a"}"#),
            Ok(ClientOp::Leave { room: "a" })
        );
        assert_eq!(
            decode(r#"{"type":"send","room":"a","cid":"c1","body":"h\u00e9\"llo\n"}"#),
            Ok(ClientOp::Send {
                room: "a",
                cid: "c1",
                body: "hé\"llo\n"
            })
        );
        assert_eq!(
            decode(r#"{"type":"dm","to":"bob","cid":"c2","body":""}"#),
            Ok(ClientOp::Dm {
                to: "bob",
                cid: "c2",
                body: ""
            })
        );
        assert_eq!(
            decode(r#"{"type":"history","room":"a"}"#),
            Ok(ClientOp::History {
                room: "a",
                before: None,
                limit: 50
            })
        );
        assert_eq!(
            decode(r#"{"type":"history","room":"a","before":10,"limit":100}"#),
            Ok(ClientOp::History {
                room: "a",
                before: Some(10),
                limit: 100
            })
        );
        assert_eq!(
            decode(r#"{"type":"resume","room":"a","after":0}"#),
            Ok(ClientOp::Resume {
                room: "a",
                after: 0
            })
        );
    }

    #[test]
    fn bad_requests_say_why_and_keep_the_cid() {
        let cases = [
            ("not json", ErrorCode::BadRequest, None),
            ("[1]", ErrorCode::BadRequest, None),
            (r#"{"room":"a"}"#, ErrorCode::BadRequest, None),
            (r#"{"type":5}"#, ErrorCode::BadRequest, None),
            (r#"{"type":"shout"}"#, ErrorCode::BadRequest, None),
            (r#"{"type":"join"}"#, ErrorCode::BadRequest, None),
            (
                r#"{"type":"join","room":"a b"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (r#"{"type":"join","room":""}"#, ErrorCode::BadRequest, None),
            // Names that would change a Redis key's slot, or look like another name.
            (
                r#"{"type":"join","room":"}a"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"join","room":"a{b}"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"join","room":"lob\u200bby"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"join","room":"a\u202eb"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"join","room":"\ufeffa"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"send","room":"a","cid":"x","body":7}"#,
                ErrorCode::BadRequest,
                Some("x"),
            ),
            (
                r#"{"type":"send","room":"a","body":"b"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"dm","to":"b:c","cid":"x","body":"b"}"#,
                ErrorCode::BadRequest,
                Some("x"),
            ),
            (
                r#"{"type":"history","room":"a","limit":0}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"history","room":"a","limit":101}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"history","room":"a","before":-1}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"resume","room":"a"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            // What PostgreSQL `text` cannot hold is refused, never acked then dead-lettered.
            (
                r#"{"type":"send","room":"a","cid":"x","body":"a\u0000b"}"#,
                ErrorCode::BadRequest,
                Some("x"),
            ),
            (
                r#"{"type":"dm","to":"bob","cid":"x","body":"\u0000"}"#,
                ErrorCode::BadRequest,
                Some("x"),
            ),
            (
                r#"{"type":"send","room":"a","cid":"x\u0000","body":"b"}"#,
                ErrorCode::BadRequest,
                Some("x\u{0}"),
            ),
            (
                r#"{"type":"join","room":"a\u0000"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            // Lone surrogates are not text at all.
            (
                r#"{"type":"send","room":"a","cid":"x","body":"\ud800"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"send","room":"a","cid":"x","body":"\udc00x"}"#,
                ErrorCode::BadRequest,
                None,
            ),
            (
                r#"{"type":"send","room":"a\ud800","cid":"x","body":"b"}"#,
                ErrorCode::BadRequest,
                None,
            ),
        ];
        for (input, code, cid) in cases {
            let e = decode(input).unwrap_err();
            assert_eq!(e.code, code, "{input}: {e}");
            assert_eq!(e.cid.as_deref(), cid, "{input}");
            assert!(!e.message.is_empty());
        }
        let long_room = format!(r#"{{"type":"join","room":"{}"}}"#, "é".repeat(129));
        assert_eq!(decode(&long_room).unwrap_err().code, ErrorCode::BadRequest);
        let ok_room = format!(r#"{{"type":"join","room":"{}"}}"#, "é".repeat(128));
        assert!(decode(&ok_room).is_ok(), "128 characters, 256 bytes");
        let big = format!(
            r#"{{"type":"send","room":"a","cid":"c","body":"{}"}}"#,
            "x".repeat(MAX_BODY + 1)
        );
        let e = decode(&big).unwrap_err();
        assert_eq!((e.code, e.cid.as_deref()), (ErrorCode::TooLarge, Some("c")));
    }

    #[test]
    fn decoder_is_reusable_after_errors() {
        let mut d = Decoder::default();
        for i in 0..100 {
            let mut bad = b"{\"type\":".to_vec();
            assert!(d.decode(&mut bad).is_err());
            let mut good = format!(r#"{{"type":"join","room":"r{i}"}}"#).into_bytes();
            let room = match d.decode(&mut good).unwrap() {
                ClientOp::Join { room } => room.to_owned(),
                other => panic!("{other:?}"),
            };
            assert_eq!(room, format!("r{i}"));
        }
    }

    #[test]
    fn msg_encoding_is_valid_json_with_escapes() {
        let body = "quote \" backslash \\ nl \n tab \t bell \u{7} é 😀";
        let m = Msg {
            room: "r/1",
            seq: 42,
            id: "id-1",
            from: "alice",
            ts: 1_700_000_000_000,
            body,
            cid: "c\"1",
        };
        let v = json(&m.frame());
        assert_eq!(v["type"], "msg");
        assert_eq!(v["room"], "r/1");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["id"], "id-1");
        assert_eq!(v["from"], "alice");
        assert_eq!(v["ts"], 1_700_000_000_000u64);
        assert_eq!(v["body"], body);
        assert_eq!(v["cid"], "c\"1");
    }

    /// The escaping rule, one byte at a time: what `put_json_str` must write.
    fn json_str_reference(s: &str) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &b in s.as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                _ => out.push(b),
            }
        }
        out.push(b'"');
        out
    }

    fn json_str(s: &str) -> BytesMut {
        let mut out = BytesMut::new();
        put_json_str(&mut out, s);
        out
    }

    #[test]
    fn json_str_escapes_every_byte_at_every_position() {
        // Every ASCII byte at every place of strings up to three 8-byte words long (first,
        // middle and last lane, the tail), among plain, multi-byte and other escaped bytes.
        for len in 1..=25 {
            for pos in 0..len {
                for b in 0u8..0x80 {
                    for filler in ["a", "é", "\\"] {
                        let mut s = filler.repeat(len);
                        let at = s.char_indices().nth(pos).unwrap().0;
                        s.replace_range(
                            at..at + filler.len(),
                            (b as char).encode_utf8(&mut [0; 4]),
                        );
                        let out = json_str(&s);
                        assert_eq!(&out[..], &json_str_reference(&s)[..], "{s:?}");
                        let back: String = serde_json::from_slice(&out).unwrap();
                        assert_eq!(back, s);
                    }
                }
            }
        }
        assert_eq!(&json_str("")[..], b"\"\"");
    }

    proptest::proptest! {
        #[test]
        fn json_str_matches_the_reference(s in "(?s).{0,80}", ctrl in "[\\x00-\\x1f\"\\\\a-z]{0,40}") {
            for s in [&s, &ctrl, &format!("{ctrl}{s}{ctrl}")] {
                let out = json_str(s);
                proptest::prop_assert_eq!(&out[..], &json_str_reference(s)[..]);
                let back: String = serde_json::from_slice(&out).unwrap();
                proptest::prop_assert_eq!(&back, s);
            }
        }
    }

    #[test]
    fn head_seq_tail_is_the_whole_msg() {
        let m = Msg {
            room: "r\"x",
            seq: 77,
            id: "i",
            from: "u",
            ts: 5,
            body: "b",
            cid: "c",
        };
        let (mut head, mut tail, mut whole) = (BytesMut::new(), BytesMut::new(), BytesMut::new());
        m.encode_head(&mut head);
        m.encode_tail(&mut tail);
        m.encode(&mut whole);
        assert_eq!([&head[..], b"77", &tail[..]].concat(), &whole[..]);
    }

    #[test]
    fn replies_are_valid_json() {
        assert_eq!(
            json(&reply::ack("c", "r", 3, "i")),
            serde_json::json!({"type":"ack","cid":"c","room":"r","seq":3,"id":"i"})
        );
        assert_eq!(
            json(&reply::joined("r", 0)),
            serde_json::json!({"type":"joined","room":"r","seq":0})
        );
        assert_eq!(
            json(&reply::left("r")),
            serde_json::json!({"type":"left","room":"r"})
        );
        assert_eq!(
            json(&reply::resumed("r", 9, false)),
            serde_json::json!({"type":"resumed","room":"r","seq":9,"complete":false})
        );
        let m1 = Msg {
            room: "r",
            seq: 1,
            id: "a",
            from: "u",
            ts: 1,
            body: "x",
            cid: "c",
        }
        .frame();
        let m2 = Msg {
            room: "r",
            seq: 2,
            id: "b",
            from: "u",
            ts: 2,
            body: "y",
            cid: "d",
        }
        .frame();
        let (p1, p2) = (payload_of(&m1), payload_of(&m2));
        let h = json(&reply::history("r", [&p1[..], &p2[..]]));
        assert_eq!(h["messages"][1]["seq"], 2);
        assert_eq!(
            json(&reply::history("r", std::iter::empty::<&[u8]>()))["messages"],
            serde_json::json!([])
        );
        let e = RequestError::new(ErrorCode::NotJoined, "join first").with_cid(Some("c9"));
        assert_eq!(
            json(&reply::error(&e)),
            serde_json::json!({"type":"error","code":"not_joined","message":"join first","cid":"c9"})
        );
    }

    #[test]
    fn dm_rooms() {
        assert_eq!(dm_room("bob", "alice").as_deref(), Some("dm:alice:bob"));
        assert_eq!(dm_room("alice", "alice"), None);
        assert_eq!(dm_members("dm:alice:bob"), Some(("alice", "bob")));
        assert_eq!(dm_members("dm:bob:alice"), None, "not in order");
        assert_eq!(dm_members("dm:alice"), None);
        assert_eq!(dm_members("general"), None);
    }
}
