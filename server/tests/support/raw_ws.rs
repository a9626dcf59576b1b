//! Raw-TCP WebSocket client for the RFC 6455 conformance tests (`rfc6455_*.rs`) and for any
//! test that must put exact bytes on the wire: frames encoded by hand (any reserved bit or
//! opcode, masked or not), the protocol requests they carry, and [`Ws`], one blocking client
//! connection that reads the server's frames with `chat_wire`'s parser.
//!
//! Every socket has read and write timeouts ([`TIMEOUT`]), so a server that does not answer
//! fails a test instead of hanging it. A `join` request can carry an extra `pad` field
//! (unknown fields are ignored, PROTOCOL.md) so that its payload is exactly as long as a case
//! needs ([`join_len`]). The plain-HTTP side (sockets, response heads) is in `raw_ws/sockets.rs`.

mod sockets;

pub use sockets::*;

use super::Server;
use base64::Engine as _;
use bytes::BytesMut;
use chat_wire::frame::{apply_mask, parse_frame_ext, Message, MessageAssembler, Role};
use chat_wire::handshake::{accept_key, client_request};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Read and write timeout of every socket.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The server's default frame and message limit (payload bytes).
pub const LIMIT: usize = 64 * 1024;

// First header byte: FIN, the reserved bits, the opcode.
pub const FIN: u8 = 0x80;
pub const RSV1: u8 = 0x40;
pub const RSV2: u8 = 0x20;
pub const RSV3: u8 = 0x10;
pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

// ---------------------------------------------------------------------------------------------
// Frames and requests
// ---------------------------------------------------------------------------------------------

/// A fresh, never all-zero masking key.
pub fn next_mask() -> [u8; 4] {
    static STATE: AtomicU32 = AtomicU32::new(0x9e37_79b9);
    let n = STATE.fetch_add(0x6d2b_79f5, Ordering::Relaxed);
    let m = (n ^ (n >> 15)).wrapping_mul(0x2c1b_3c6d) | 0x0101_0101;
    m.to_be_bytes()
}

/// Encodes a frame the way a client does (masked). `b0` is the whole first header byte, so a
/// test can set any reserved bit or opcode.
pub fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    encode(b0, payload, Some(next_mask()))
}

/// Encodes a frame without a mask, which a client must never send.
pub fn unmasked_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    encode(b0, payload, None)
}

/// Encodes a frame with the masking key a test chooses (`None`: unmasked).
pub fn encode(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(b0);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], mask);
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A single-frame text message.
pub fn text(payload: &[u8]) -> Vec<u8> {
    frame(FIN | TEXT, payload)
}

/// A close frame with a status code and a reason (raw bytes, so it can be invalid UTF-8).
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(FIN | CLOSE, &payload)
}

/// Splits a text message into fragments cut at `cuts` (byte offsets into `payload`): the first
/// frame is TEXT, the others CONTINUATION, FIN on the last.
pub fn fragments_at(payload: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(payload.len());
    let n = bounds.len() - 1;
    (0..n)
        .map(|i| {
            let op = if i == 0 { TEXT } else { CONT };
            let fin = if i + 1 == n { FIN } else { 0 };
            frame(fin | op, &payload[bounds[i]..bounds[i + 1]])
        })
        .collect()
}

/// Splits a text message into fragments of `size` bytes (the last one may be shorter).
pub fn fragments_of(payload: &[u8], size: usize) -> Vec<Vec<u8>> {
    let cuts: Vec<usize> = (size..payload.len()).step_by(size).collect();
    fragments_at(payload, &cuts)
}

/// `{"type":"join","room":ROOM}`
pub fn join(room: &str) -> Vec<u8> {
    format!(r#"{{"type":"join","room":"{room}"}}"#).into_bytes()
}

/// `{"type":"join","room":ROOM,"pad":"PAD"}` with raw `pad` bytes (possibly invalid UTF-8).
pub fn join_pad(room: &str, pad: &[u8]) -> Vec<u8> {
    let mut out = format!(r#"{{"type":"join","room":"{room}","pad":""#).into_bytes();
    out.extend_from_slice(pad);
    out.extend_from_slice(b"\"}");
    out
}

/// A `join` request of exactly `len` bytes.
pub fn join_len(room: &str, len: usize) -> Vec<u8> {
    let base = join_pad(room, b"").len();
    assert!(
        len >= base,
        "a join for {room:?} needs at least {base} bytes"
    );
    let out = join_pad(room, &vec![b'x'; len - base]);
    assert_eq!(out.len(), len);
    out
}

/// A fresh `Sec-WebSocket-Key`: 16 bytes, base64.
pub fn ws_key() -> String {
    let mut raw = Vec::with_capacity(16);
    for _ in 0..4 {
        raw.extend_from_slice(&next_mask());
    }
    base64::engine::general_purpose::STANDARD.encode(raw)
}

pub fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(48).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 48 {
        format!(" ... ({} bytes)", bytes.len())
    } else {
        String::new()
    };
    format!("[{}]{more}", shown.join(" "))
}

pub fn describe(m: &Message) -> String {
    match m {
        Message::Text(t) => {
            let s = String::from_utf8_lossy(t);
            if s.len() > 300 {
                format!(
                    "text message {}... ({} bytes)",
                    s.chars().take(300).collect::<String>(),
                    t.len()
                )
            } else {
                format!("text message {s}")
            }
        }
        Message::Binary(b) => format!("binary message {}", hex(b)),
        Message::Ping(p) => format!("ping {}", hex(p)),
        Message::Pong(p) => format!("pong {}", hex(p)),
        Message::Close(c) => format!("close frame {c:?}"),
        Message::TooLarge => "an oversized message".into(),
    }
}

/// One WebSocket client connection.
pub struct Ws {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub asm: MessageAssembler,
    /// The case being run, for failure messages.
    pub case: String,
    /// The `Sec-WebSocket-Extensions` the server answered: permessage-deflate is on when set
    /// (RSV1 frames are then read and inflated).
    pub extensions: Option<String>,
    /// Server frames that came with RSV1 set (compressed), and their bytes.
    pub compressed_frames: usize,
    pub compressed_bytes: usize,
}

impl Ws {
    /// Connects as user `alice`.
    pub fn connect(server: &Server, case: &str) -> Ws {
        Ws::connect_with(server.addr, "alice", case, &[])
    }

    /// Connects as `user`; `early` bytes go out in the same write as the upgrade request.
    pub fn connect_with(addr: SocketAddr, user: &str, case: &str, early: &[u8]) -> Ws {
        Ws::connect_offering(addr, user, case, early, None)
    }

    /// Connects as `user`, offering these extensions (`Sec-WebSocket-Extensions`).
    pub fn connect_offering(
        addr: SocketAddr,
        user: &str,
        case: &str,
        early: &[u8],
        extensions: Option<&str>,
    ) -> Ws {
        let mut stream = tcp(addr);
        let key = ws_key();
        let mut request = client_request(&addr.to_string(), &format!("/ws?user={user}"), &key);
        if let Some(ext) = extensions {
            request.truncate(request.len() - 2);
            request.push_str(&format!("Sec-WebSocket-Extensions: {ext}\r\n\r\n"));
        }
        let mut request = request.into_bytes();
        request.extend_from_slice(early);
        stream
            .write_all(&request)
            .expect("send the upgrade request");
        let mut buf = BytesMut::new();
        let resp = read_head(&mut stream, &mut buf, &format!("{case}: upgrade"));
        assert_eq!(resp.status, 101, "{case}: upgrade refused: {resp:?}");
        let expected = accept_key(&key);
        assert_eq!(
            resp.header("sec-websocket-accept"),
            Some(expected.as_str()),
            "{case}: {resp:?}"
        );
        let extensions = resp.header("sec-websocket-extensions").map(str::to_owned);
        let asm = match &extensions {
            Some(_) => MessageAssembler::with_inflater(1 << 24),
            None => MessageAssembler::new(1 << 24),
        };
        Ws {
            stream,
            buf,
            asm,
            case: case.to_owned(),
            extensions,
            compressed_frames: 0,
            compressed_bytes: 0,
        }
    }

    /// Names the case that follows, for failure messages.
    pub fn step(&mut self, case: impl Into<String>) {
        self.case = case.into();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("{}: sending {} failed: {e}", self.case, hex(bytes));
        }
    }

    /// Sends each frame with its own write, pausing in between.
    pub fn send_each(&mut self, frames: &[Vec<u8>], pause: Duration) {
        for f in frames {
            self.send(f);
            std::thread::sleep(pause);
        }
    }

    /// Sends `bytes` in writes of `chop` bytes (TCP_NODELAY is set), pausing every `every` writes
    /// so that the pieces arrive as separate reads.
    pub fn send_chopped(&mut self, bytes: &[u8], chop: usize, every: usize) {
        for (i, piece) in bytes.chunks(chop).enumerate() {
            self.send(piece);
            if every > 0 && i % every == every - 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    pub fn try_next(&mut self) -> Result<Message, ReadError> {
        loop {
            let deflate = self.extensions.is_some();
            match parse_frame_ext(&mut self.buf, Role::Client, 1 << 24, deflate) {
                Ok(Some(frame)) => {
                    if frame.rsv1 {
                        self.compressed_frames += 1;
                        self.compressed_bytes += frame.payload.len();
                    }
                    if let Some(m) = self.asm.push(frame).map_err(ReadError::Frame)? {
                        return Ok(m);
                    }
                }
                Ok(None) => fill(&mut self.stream, &mut self.buf)?,
                Err(e) => return Err(ReadError::Frame(e)),
            }
        }
    }

    /// The next message, skipping pings from the server (idle keep-alive).
    pub fn next(&mut self, waiting_for: &str) -> Message {
        loop {
            match self.try_next() {
                Ok(Message::Ping(_)) => continue,
                Ok(m) => return m,
                Err(e) => panic!("{}: {e} while waiting for {waiting_for}", self.case),
            }
        }
    }

    pub fn expect_json(&mut self, waiting_for: &str) -> Value {
        match self.next(waiting_for) {
            Message::Text(t) => serde_json::from_slice(&t).unwrap_or_else(|e| {
                panic!(
                    "{}: reply is not JSON ({e}): {:?}",
                    self.case,
                    String::from_utf8_lossy(&t)
                )
            }),
            other => panic!(
                "{}: expected {waiting_for}, got {}",
                self.case,
                describe(&other)
            ),
        }
    }

    pub fn expect_reply(&mut self, ty: &str) -> Value {
        let v = self.expect_json(&format!("a `{ty}` reply"));
        assert_eq!(v["type"], ty, "{}: unexpected reply {v}", self.case);
        v
    }

    pub fn expect_joined(&mut self, room: &str) -> Value {
        let v = self.expect_reply("joined");
        assert_eq!(v["room"], room, "{}: {v}", self.case);
        assert!(v["seq"].is_u64(), "{}: `seq` of {v}", self.case);
        v
    }

    pub fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect_reply("error");
        assert_eq!(v["code"], code, "{}: {v}", self.case);
        assert!(v["message"].is_string(), "{}: `message` of {v}", self.case);
        v
    }

    pub fn expect_pong(&mut self, payload: &[u8]) {
        match self.next("a pong") {
            Message::Pong(p) => {
                assert_eq!(
                    &p[..],
                    payload,
                    "{}: pong payload {} vs ping {}",
                    self.case,
                    hex(&p),
                    hex(payload)
                )
            }
            other => panic!(
                "{}: expected a pong {}, got {}",
                self.case,
                hex(payload),
                describe(&other)
            ),
        }
    }

    /// Reads up to the server's close frame and returns its status and reason. Replies listed in
    /// `allow` as (`type`, `room`) may arrive first (answers to requests sent before the offending
    /// frame); anything else before the close frame fails the test.
    pub fn read_close(&mut self, allow: &[(&str, &str)]) -> Option<(u16, String)> {
        loop {
            match self.next("a close frame") {
                Message::Close(c) => return c,
                Message::Text(t) => {
                    let v: Option<Value> = serde_json::from_slice(&t).ok();
                    let allowed = v.as_ref().is_some_and(|v| {
                        allow
                            .iter()
                            .any(|(ty, room)| v["type"] == *ty && v["room"] == *room)
                    });
                    if !allowed {
                        panic!(
                            "{}: expected a close frame, got text message {:?}",
                            self.case,
                            String::from_utf8_lossy(&t)
                        );
                    }
                }
                other => panic!(
                    "{}: expected a close frame, got {}",
                    self.case,
                    describe(&other)
                ),
            }
        }
    }

    /// The server fails the connection: its close frame carries `code`; the client answers with a
    /// close frame as a client does, and the server closes the TCP connection.
    pub fn expect_fail(&mut self, code: u16) {
        self.expect_fail_after(code, &[]);
    }

    pub fn expect_fail_after(&mut self, code: u16, allow: &[(&str, &str)]) {
        self.expect_fail_one_of(&[code], allow);
    }

    pub fn expect_fail_one_of(&mut self, codes: &[u16], allow: &[(&str, &str)]) {
        let got = self.read_close(allow);
        let code = got.as_ref().map(|c| c.0);
        assert!(
            code.is_some_and(|c| codes.contains(&c)),
            "{}: server closed with {got:?}, expected status {codes:?}",
            self.case
        );
        // The server may already have closed the socket: a failed write is fine here.
        let _ = self.stream.write_all(&close_frame(code.unwrap(), b""));
        self.expect_eof();
    }

    /// Sends a close frame with `payload` and returns the server's close (the TCP connection
    /// must then be closed by the server).
    pub fn close_with(&mut self, payload: &[u8]) -> Option<(u16, String)> {
        self.send(&frame(FIN | CLOSE, payload));
        let got = self.read_close(&[]);
        self.expect_eof();
        got
    }

    /// The normal end of a connection: close 1000 is answered with close 1000.
    pub fn close_normally(&mut self) {
        self.step(format!("{} (closing with 1000)", self.case));
        let got = self.close_with(&1000u16.to_be_bytes());
        assert_eq!(got.map(|c| c.0), Some(1000), "{}", self.case);
    }

    /// After a close frame the server sends nothing more and closes the TCP connection.
    pub fn expect_eof(&mut self) {
        assert!(
            self.buf.is_empty(),
            "{}: data after the close frame: {}",
            self.case,
            hex(&self.buf)
        );
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => panic!("{}: data after the close frame: {}", self.case, hex(&chunk[..n])),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                    "{}: the server did not close the TCP connection within {TIMEOUT:?} after the close frame",
                    self.case
                ),
                Err(e) => panic!("{}: read error while waiting for EOF: {e}", self.case),
            }
        }
    }
}
