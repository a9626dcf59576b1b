//! Reading client requests: `simd-json` fills a tape that is reused between requests, and
//! every field is checked (type, length, name, storability) before the server sees it, each
//! failure an `error` reply that keeps the request's `cid`.

use super::names::{validate_room, validate_user};
use super::{
    ErrorCode, RequestError, DEFAULT_HISTORY_LIMIT, MAX_BODY, MAX_CID_BYTES, MAX_HISTORY_LIMIT,
};
use simd_json::prelude::*;
use simd_json::{Buffers, Tape};

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
    /// v1.1: who is in the room.
    Presence {
        room: &'a str,
    },
    /// v1.1: "I am typing", for the other members.
    Typing {
        room: &'a str,
    },
    /// v1.1: the user's read pointer for the room moves up to `seq`.
    Read {
        room: &'a str,
        seq: u64,
    },
}

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
        "presence" => ClientOp::Presence {
            room: fields.room("room")?,
        },
        "typing" => ClientOp::Typing {
            room: fields.room("room")?,
        },
        "read" => {
            let room = fields.room("room")?;
            let seq = fields
                .opt_u64("seq")?
                .ok_or_else(|| fields.err(ErrorCode::BadRequest, "missing field `seq`"))?;
            ClientOp::Read { room, seq }
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
