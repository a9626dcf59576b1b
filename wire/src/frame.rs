//! RFC 6455 framing on `bytes`.
//!
//! Reading: [`parse_frame`] takes one complete frame off the front of the connection's read
//! buffer with `BytesMut::split_to`, so the payload is never copied, and unmasks it in place.
//! [`MessageAssembler`] turns frames into messages: it passes unfragmented messages through
//! untouched, joins fragments, answers which control frames arrived in between, and checks UTF-8
//! as fragments arrive so a bad byte fails fast (Autobahn group 6).
//!
//! Writing: [`encode_text_with`] lets the caller write a payload (JSON) straight into the frame
//! buffer and puts the header in front afterwards, so every outgoing message is encoded exactly
//! once; the resulting `Bytes` is cloned (a reference count) to every recipient.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame opcodes of RFC 6455 section 5.2. Any other value is a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Close status codes this crate produces (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why a connection must be closed. `code()` is the status to send in the close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: u16,
    pub reason: &'static str,
}

impl FrameError {
    const fn new(code: u16, reason: &'static str) -> Self {
        FrameError { code, reason }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (close {})", self.reason, self.code)
    }
}

impl std::error::Error for FrameError {}

/// Which end of the connection is parsing: a server requires masked frames, a client refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// One frame, its payload already unmasked.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: BytesMut,
}

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)` when more bytes are
/// needed (nothing is consumed then). A frame whose payload exceeds `max_payload` is refused as
/// soon as its header is read (close 1009), before its payload is buffered.
pub fn parse_frame(
    buf: &mut BytesMut,
    role: Role,
    max_payload: usize,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::new(
            close_code::PROTOCOL,
            "reserved bits set without an extension",
        ));
    }
    let opcode = OpCode::from_u8(b0 & 0x0F)
        .ok_or(FrameError::new(close_code::PROTOCOL, "reserved opcode"))?;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => {
            return Err(FrameError::new(
                close_code::PROTOCOL,
                "client frame is not masked",
            ))
        }
        (Role::Client, true) => {
            return Err(FrameError::new(
                close_code::PROTOCOL,
                "server frame is masked",
            ))
        }
        _ => {}
    }
    let (len, mut header) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if len < 126 {
                return Err(FrameError::new(
                    close_code::PROTOCOL,
                    "length not minimally encoded",
                ));
            }
            (len, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().unwrap());
            if len >> 63 != 0 {
                return Err(FrameError::new(
                    close_code::PROTOCOL,
                    "64-bit length has its top bit set",
                ));
            }
            if len <= u16::MAX as u64 {
                return Err(FrameError::new(
                    close_code::PROTOCOL,
                    "length not minimally encoded",
                ));
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::new(
                close_code::PROTOCOL,
                "fragmented control frame",
            ));
        }
        if len > 125 {
            return Err(FrameError::new(
                close_code::PROTOCOL,
                "control frame over 125 bytes",
            ));
        }
    }
    if len > max_payload as u64 {
        return Err(FrameError::new(
            close_code::TOO_BIG,
            "frame exceeds the size limit",
        ));
    }
    let len = len as usize;
    let mask = if masked {
        if buf.len() < header + 4 {
            return Ok(None);
        }
        let m = [
            buf[header],
            buf[header + 1],
            buf[header + 2],
            buf[header + 3],
        ];
        header += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < header + len {
        // Make room for the rest of the frame in one allocation instead of doubling.
        buf.reserve(header + len - buf.len());
        return Ok(None);
    }
    buf.advance(header);
    let mut payload = buf.split_to(len);
    if let Some(mask) = mask {
        apply_mask(&mut payload, mask);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload,
    }))
}

/// XORs `data` with the 4-byte masking key (RFC 6455 section 5.3), eight bytes at a time.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().unwrap()) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Writes a frame header for a payload of `len` bytes.
pub fn put_header(
    out: &mut BytesMut,
    fin: bool,
    opcode: OpCode,
    len: usize,
    mask: Option<[u8; 4]>,
) {
    out.put_u8(if fin { 0x80 } else { 0 } | opcode as u8);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.put_u8(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(mask_bit | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(mask_bit | 127);
        out.put_u64(len as u64);
    }
    if let Some(m) = mask {
        out.put_slice(&m);
    }
}

/// Longest frame header without the masking key: 2 bytes + a 64-bit length.
const MAX_HEADER: usize = 10;

/// The header of an unmasked final text frame, on the stack: the bytes and how many are used.
/// The same encoding as [`put_header`], which keeps writing straight into its buffer (going
/// through this array made `encode_frame` 10% slower on 32-byte payloads).
fn text_header(len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x80 | OpCode::Text as u8;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Encodes one unmasked (server) frame.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, true, opcode, payload.len(), None);
    out.put_slice(payload);
    out.freeze()
}

/// Encodes one masked (client) frame; `fin = false` starts or continues a fragmented message.
pub fn encode_masked_frame(fin: bool, opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + 4 + payload.len());
    put_header(&mut out, fin, opcode, payload.len(), Some(mask));
    let start = out.len();
    out.put_slice(payload);
    apply_mask(&mut out[start..], mask);
    out.freeze()
}

/// Encodes a close frame with a status code and reason.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode_frame(OpCode::Close, &payload)
}

/// Encodes a text frame whose payload `write` produces directly in the frame buffer: the payload
/// is written once, after room for the largest header, and the header, built on the stack, is
/// then put in front of it. One allocation per frame. `capacity` is a hint for the payload size.
pub fn encode_text_with(capacity: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(MAX_HEADER + capacity);
    out.put_bytes(0, MAX_HEADER);
    write(&mut out);
    let (header, n) = text_header(out.len() - MAX_HEADER);
    let start = MAX_HEADER - n;
    out[start..MAX_HEADER].copy_from_slice(&header[..n]);
    out.advance(start);
    out.freeze()
}

/// The payload of a complete unmasked frame made by this module, without copying.
pub fn payload_of(frame: &Bytes) -> Bytes {
    let header = match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    frame.slice(header..)
}

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
}

/// Reassembles fragmented messages and validates text (RFC 6455 sections 5.4 and 8.1).
pub struct MessageAssembler {
    max_message: usize,
    partial: Option<Partial>,
}

impl MessageAssembler {
    /// `max_message` bounds the total size of a reassembled message.
    pub fn new(max_message: usize) -> Self {
        MessageAssembler {
            max_message,
            partial: None,
        }
    }

    /// Feeds one frame; returns a message once one is complete.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Message>, FrameError> {
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
                    return Ok(Some(finish(frame.opcode, frame.payload)?));
                }
                let mut partial = Partial {
                    opcode: frame.opcode,
                    data: BytesMut::new(),
                    utf8_valid: 0,
                    discarding: false,
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
                Ok(Some(finish(partial.opcode, partial.data)?))
            }
        }
    }
}

impl Partial {
    fn append(&mut self, bytes: &[u8], max: usize) -> Result<(), FrameError> {
        if self.discarding {
            return Ok(());
        }
        if self.data.len() + bytes.len() > max {
            self.discarding = true;
            self.data = BytesMut::new();
            return Ok(());
        }
        self.data.extend_from_slice(bytes);
        if self.opcode == OpCode::Text {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn parse_all(bytes: &[u8], max: usize) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = parse_frame(&mut buf, Role::Server, max)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 section 5.7: a single-frame masked text message "Hello".
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let frames = parse_all(&bytes, 1024).unwrap();
        assert_eq!(frames.len(), 1);
        assert!(frames[0].fin);
        assert_eq!(frames[0].opcode, OpCode::Text);
        assert_eq!(&frames[0].payload[..], b"Hello");
    }

    #[test]
    fn every_length_encoding_round_trips() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = encode_masked_frame(true, OpCode::Binary, &payload, MASK);
            // Feed it one byte at a time: every prefix must be "need more".
            let mut buf = BytesMut::new();
            let mut got = None;
            for (i, b) in frame.iter().enumerate() {
                buf.put_u8(*b);
                let r = parse_frame(&mut buf, Role::Server, 1 << 20).unwrap();
                if i + 1 < frame.len() {
                    assert!(
                        r.is_none(),
                        "len {len}: frame reported complete at byte {i}"
                    );
                } else {
                    got = r;
                }
            }
            assert_eq!(
                &got.expect("complete frame").payload[..],
                &payload[..],
                "len {len}"
            );
        }
    }

    #[test]
    fn refuses_protocol_violations() {
        let cases: [(&[u8], u16); 6] = [
            (&[0xC1, 0x80, 0, 0, 0, 0], 1002), // RSV1
            (&[0x83, 0x80, 0, 0, 0, 0], 1002), // reserved opcode 3
            (&[0x81, 0x00], 1002),             // unmasked client frame
            (&[0x09, 0x80, 0, 0, 0, 0], 1002), // fragmented ping
            (&[0x89, 0xFE, 0x00, 0x7E], 1002), // 126-byte ping
            (&[0x81, 0xFE, 0x00, 0x10], 1002), // 16-bit length used for 16 bytes
        ];
        for (bytes, code) in cases {
            let err = parse_all(bytes, 1 << 20).unwrap_err();
            assert_eq!(err.code, code, "{bytes:x?}");
        }
        let too_big = encode_masked_frame(true, OpCode::Text, &[b'a'; 2000], MASK);
        assert_eq!(
            parse_all(&too_big[..4], 1000).unwrap_err().code,
            1009,
            "refused from the header"
        );
    }

    #[test]
    fn reassembles_fragments_around_a_ping() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&encode_masked_frame(
            false,
            OpCode::Text,
            "hé".as_bytes(),
            MASK,
        ));
        bytes.extend_from_slice(&encode_masked_frame(true, OpCode::Ping, b"p", MASK));
        bytes.extend_from_slice(&encode_masked_frame(
            true,
            OpCode::Continuation,
            b"llo",
            MASK,
        ));
        let mut asm = MessageAssembler::new(1024);
        let mut out = Vec::new();
        for f in parse_all(&bytes, 1024).unwrap() {
            if let Some(m) = asm.push(f).unwrap() {
                out.push(m);
            }
        }
        assert!(matches!(&out[0], Message::Ping(p) if &p[..] == b"p"));
        assert!(matches!(&out[1], Message::Text(t) if &t[..] == "héllo".as_bytes()));
    }

    #[test]
    fn utf8_split_across_fragments_is_accepted_and_bad_utf8_fails_fast() {
        let euro = "€".as_bytes(); // three bytes
        let mut asm = MessageAssembler::new(1024);
        let f = |fin, op, p: &[u8]| Frame {
            fin,
            opcode: op,
            payload: BytesMut::from(p),
        };
        assert!(asm
            .push(f(false, OpCode::Text, &euro[..1]))
            .unwrap()
            .is_none());
        assert!(asm
            .push(f(false, OpCode::Continuation, &euro[1..2]))
            .unwrap()
            .is_none());
        let done = asm.push(f(true, OpCode::Continuation, &euro[2..])).unwrap();
        assert!(matches!(done, Some(Message::Text(t)) if &t[..] == euro));

        let mut asm = MessageAssembler::new(1024);
        let err = asm
            .push(f(false, OpCode::Text, &[0xce, 0xba, 0xff]))
            .unwrap_err();
        assert_eq!(
            err.code, 1007,
            "invalid byte is refused before the message ends"
        );
        let mut asm = MessageAssembler::new(1024);
        let err = asm.push(f(true, OpCode::Text, &euro[..2])).unwrap_err();
        assert_eq!(err.code, 1007, "a truncated sequence at the end is invalid");
    }

    #[test]
    fn oversized_fragmented_message_is_dropped_not_fatal() {
        let mut asm = MessageAssembler::new(10);
        let f = |fin, op, p: &[u8]| Frame {
            fin,
            opcode: op,
            payload: BytesMut::from(p),
        };
        assert!(asm
            .push(f(false, OpCode::Text, b"123456"))
            .unwrap()
            .is_none());
        assert!(asm
            .push(f(false, OpCode::Continuation, b"789012"))
            .unwrap()
            .is_none());
        assert!(matches!(
            asm.push(f(true, OpCode::Continuation, b"x")).unwrap(),
            Some(Message::TooLarge)
        ));
        let next = asm.push(f(true, OpCode::Text, b"ok")).unwrap();
        assert!(matches!(next, Some(Message::Text(t)) if &t[..] == b"ok"));
    }

    #[test]
    fn fragmentation_errors() {
        let f = |fin, op, p: &[u8]| Frame {
            fin,
            opcode: op,
            payload: BytesMut::from(p),
        };
        let mut asm = MessageAssembler::new(100);
        assert_eq!(
            asm.push(f(true, OpCode::Continuation, b"x"))
                .unwrap_err()
                .code,
            1002
        );
        let mut asm = MessageAssembler::new(100);
        asm.push(f(false, OpCode::Text, b"a")).unwrap();
        assert_eq!(
            asm.push(f(true, OpCode::Text, b"b")).unwrap_err().code,
            1002
        );
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close_payload(&[]).unwrap(), None);
        assert_eq!(parse_close_payload(&[3]).unwrap_err().code, 1002);
        assert_eq!(
            parse_close_payload(&1005u16.to_be_bytes())
                .unwrap_err()
                .code,
            1002
        );
        assert_eq!(
            parse_close_payload(&999u16.to_be_bytes()).unwrap_err().code,
            1002
        );
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        assert_eq!(parse_close_payload(&bad_reason).unwrap_err().code, 1007);
        let mut ok = 4000u16.to_be_bytes().to_vec();
        ok.extend_from_slice(b"bye");
        assert_eq!(
            parse_close_payload(&ok).unwrap(),
            Some((4000, "bye".into()))
        );
    }

    #[test]
    fn text_with_header_in_front_and_payload_of() {
        for len in [0usize, 5, 125, 126, 200, 65_535, 65_536, 70_000] {
            let body = vec![b'x'; len];
            let frame = encode_text_with(8, |out| out.put_slice(&body));
            assert_eq!(frame, encode_frame(OpCode::Text, &body));
            assert_eq!(payload_of(&frame), &body[..]);
        }
    }

    #[test]
    fn mask_matches_bytewise_definition() {
        let data: Vec<u8> = (0..37).collect();
        let mut fast = data.clone();
        apply_mask(&mut fast, MASK);
        let slow: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        assert_eq!(fast, slow);
    }
}
