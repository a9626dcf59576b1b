//! From frames to messages (RFC 6455 sections 5.4, 5.5.1 and 8.1): fragments joined and their
//! UTF-8 checked as they arrive, oversized messages dropped without closing, close payloads
//! checked. With permessage-deflate (RFC 7692) a message whose first frame has RSV1 is inflated
//! once whole, within the message limit.

use super::{close_code, Frame, FrameError, OpCode};
use crate::deflate::{InflateError, Inflater};
use bytes::BytesMut;

/// A complete message, or a control frame, as the application sees it.
#[derive(Debug)]
pub enum Message {
    /// A text message, valid UTF-8.
    Text(BytesMut),
    /// A binary message (not part of chat v1; the server closes with 1003).
    Binary(BytesMut),
    Ping(BytesMut),
    Pong(BytesMut),
    /// A close frame: the status code, if any, and its UTF-8 reason.
    Close(Option<(u16, String)>),
    /// A fragmented message whose total size went over the message limit. Its fragments were
    /// dropped as they arrived; the connection stays usable.
    TooLarge,
}

struct Partial {
    opcode: OpCode,
    data: BytesMut,
    /// How many bytes of `data` are known to be valid UTF-8 (text messages only).
    utf8_valid: usize,
    /// Past the size limit: keep counting fragments, drop their bytes.
    discarding: bool,
    /// RSV1 was set on the first frame: `data` is DEFLATE, inflated at the end.
    compressed: bool,
}

/// Reassembles fragmented messages and validates text (RFC 6455 sections 5.4 and 8.1).
pub struct MessageAssembler {
    max_message: usize,
    partial: Option<Partial>,
    /// Set when the connection negotiated permessage-deflate.
    inflater: Option<Inflater>,
}

impl MessageAssembler {
    /// `max_message` bounds the total size of a reassembled message.
    pub fn new(max_message: usize) -> Self {
        MessageAssembler {
            max_message,
            partial: None,
            inflater: None,
        }
    }

    /// An assembler for a connection that negotiated permessage-deflate: compressed messages
    /// are inflated, and one that inflates past `max_message` closes with 1009.
    pub fn with_inflater(max_message: usize) -> Self {
        MessageAssembler {
            inflater: Some(Inflater::default()),
            ..MessageAssembler::new(max_message)
        }
    }

    /// Feeds one frame; returns a message once one is complete.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Message>, FrameError> {
        if frame.rsv1 {
            if frame.opcode.is_control() {
                return Err(FrameError::new(
                    close_code::PROTOCOL,
                    "compressed control frame",
                ));
            }
            if frame.opcode == OpCode::Continuation {
                return Err(FrameError::new(
                    close_code::PROTOCOL,
                    "RSV1 set on a continuation frame",
                ));
            }
            if self.inflater.is_none() {
                return Err(FrameError::new(
                    close_code::PROTOCOL,
                    "reserved bits set without an extension",
                ));
            }
        }
        match frame.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(frame.payload))),
            OpCode::Pong => Ok(Some(Message::Pong(frame.payload))),
            OpCode::Close => parse_close_payload(&frame.payload).map(|c| Some(Message::Close(c))),
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(FrameError::new(
                        close_code::PROTOCOL,
                        "new data frame before the fragmented message ended",
                    ));
                }
                if frame.fin {
                    let data = self.inflate_if(frame.rsv1, frame.payload)?;
                    return Ok(Some(finish(frame.opcode, data)?));
                }
                let mut partial = Partial {
                    opcode: frame.opcode,
                    data: BytesMut::new(),
                    utf8_valid: 0,
                    discarding: false,
                    compressed: frame.rsv1,
                };
                partial.append(&frame.payload, self.max_message)?;
                self.partial = Some(partial);
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(FrameError::new(
                        close_code::PROTOCOL,
                        "continuation without a message",
                    ));
                };
                partial.append(&frame.payload, self.max_message)?;
                if !frame.fin {
                    return Ok(None);
                }
                let partial = self.partial.take().unwrap();
                if partial.discarding {
                    return Ok(Some(Message::TooLarge));
                }
                let data = self.inflate_if(partial.compressed, partial.data)?;
                Ok(Some(finish(partial.opcode, data)?))
            }
        }
    }

    /// The message's bytes: inflated when it came compressed.
    fn inflate_if(&mut self, compressed: bool, data: BytesMut) -> Result<BytesMut, FrameError> {
        if !compressed {
            return Ok(data);
        }
        let inflater = self.inflater.as_mut().expect("checked in push");
        inflater
            .inflate(&data, self.max_message)
            .map_err(|e| match e {
                InflateError::TooBig => {
                    FrameError::new(close_code::TOO_BIG, "message inflates past the size limit")
                }
                InflateError::Corrupt => FrameError::new(
                    close_code::INVALID_PAYLOAD,
                    "compressed message is not valid DEFLATE",
                ),
            })
    }
}

impl Partial {
    fn append(&mut self, bytes: &[u8], max: usize) -> Result<(), FrameError> {
        if self.discarding {
            return Ok(());
        }
        if self.data.len() + bytes.len() > max {
            if self.compressed {
                // Compressed bytes alone over the limit: the message can only inflate larger.
                return Err(FrameError::new(
                    close_code::TOO_BIG,
                    "compressed message over the size limit",
                ));
            }
            self.discarding = true;
            self.data = BytesMut::new();
            return Ok(());
        }
        self.data.extend_from_slice(bytes);
        if self.opcode == OpCode::Text && !self.compressed {
            // Validate what arrived so far; an incomplete sequence at the very end may still be
            // completed by the next fragment.
            match simdutf8::compat::from_utf8(&self.data[self.utf8_valid..]) {
                Ok(_) => self.utf8_valid = self.data.len(),
                Err(e) if e.error_len().is_none() => self.utf8_valid += e.valid_up_to(),
                Err(_) => return Err(invalid_utf8()),
            }
        }
        Ok(())
    }
}

fn invalid_utf8() -> FrameError {
    FrameError::new(close_code::INVALID_PAYLOAD, "text is not valid UTF-8")
}

fn finish(opcode: OpCode, data: BytesMut) -> Result<Message, FrameError> {
    match opcode {
        OpCode::Text => {
            simdutf8::basic::from_utf8(&data).map_err(|_| invalid_utf8())?;
            Ok(Message::Text(data))
        }
        _ => Ok(Message::Binary(data)),
    }
}

/// Whether a peer may send `code` in a close frame (RFC 6455 section 7.4, IANA registry).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a close frame payload: empty, or a valid status code and a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(u16, String)>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::new(
            close_code::PROTOCOL,
            "close payload of one byte",
        )),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_close_code(code) {
                return Err(FrameError::new(close_code::PROTOCOL, "invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| invalid_utf8())?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}
