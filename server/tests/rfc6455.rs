//! RFC 6455 conformance of `chat-server`, driven over raw TCP.
//!
//! The cases follow the Autobahn|Testsuite case groups 1-7, 9 and 10 (the Autobahn case numbers
//! are given in the comments), adapted to a chat server: where Autobahn expects the server to
//! echo a message, these tests send a protocol request instead and expect its reply. A `join`
//! request carries an extra `pad` field (unknown fields are ignored, PROTOCOL.md) so that its
//! payload can be made exactly as long as a case needs; it is answered with
//! `{"type":"joined","room":R,"seq":S}`.
//!
//! Every test starts its own server (two threads, default limits: 64 KiB frames and messages).
//! Every socket has read and write timeouts, so a server that does not answer fails a test
//! instead of hanging it. Where the server closes the connection, a test checks the status code
//! of its close frame and that the server then closes the TCP connection.
//!
//! `scripts/autobahn.sh` runs the real Autobahn fuzzing client for people with Docker; as the
//! server does not echo, many of those cases fail by design, so this file is the authoritative
//! conformance suite.

mod support;

use bytes::BytesMut;
use chat_wire::frame::{apply_mask, parse_frame, FrameError, Message, MessageAssembler, Role};
use chat_wire::handshake::{accept_key, client_request};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use support::Server;

/// Read and write timeout of every socket.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The server's default frame and message limit (payload bytes).
const LIMIT: usize = 64 * 1024;

// First header byte: FIN, the reserved bits, the opcode.
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

// ---------------------------------------------------------------------------------------------
// Frames and requests
// ---------------------------------------------------------------------------------------------

/// A fresh, never all-zero masking key.
fn next_mask() -> [u8; 4] {
    static STATE: AtomicU32 = AtomicU32::new(0x9e37_79b9);
    let n = STATE.fetch_add(0x6d2b_79f5, Ordering::Relaxed);
    let m = (n ^ (n >> 15)).wrapping_mul(0x2c1b_3c6d) | 0x0101_0101;
    m.to_be_bytes()
}

/// Encodes a frame the way a client does (masked). `b0` is the whole first header byte, so a
/// test can set any reserved bit or opcode.
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    encode(b0, payload, Some(next_mask()))
}

/// Encodes a frame without a mask, which a client must never send.
fn unmasked_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    encode(b0, payload, None)
}

fn encode(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
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
fn text(payload: &[u8]) -> Vec<u8> {
    frame(FIN | TEXT, payload)
}

/// A close frame with a status code and a reason (raw bytes, so it can be invalid UTF-8).
fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(FIN | CLOSE, &payload)
}

/// Splits a text message into fragments cut at `cuts` (byte offsets into `payload`): the first
/// frame is TEXT, the others CONTINUATION, FIN on the last.
fn fragments_at(payload: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
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
fn fragments_of(payload: &[u8], size: usize) -> Vec<Vec<u8>> {
    let cuts: Vec<usize> = (size..payload.len()).step_by(size).collect();
    fragments_at(payload, &cuts)
}

/// `{"type":"join","room":ROOM}`
fn join(room: &str) -> Vec<u8> {
    format!(r#"{{"type":"join","room":"{room}"}}"#).into_bytes()
}

/// `{"type":"join","room":ROOM,"pad":"PAD"}` with raw `pad` bytes (possibly invalid UTF-8).
fn join_pad(room: &str, pad: &[u8]) -> Vec<u8> {
    let mut out = format!(r#"{{"type":"join","room":"{room}","pad":""#).into_bytes();
    out.extend_from_slice(pad);
    out.extend_from_slice(b"\"}");
    out
}

/// A `join` request of exactly `len` bytes.
fn join_len(room: &str, len: usize) -> Vec<u8> {
    let base = join_pad(room, b"").len();
    assert!(
        len >= base,
        "a join for {room:?} needs at least {base} bytes"
    );
    let out = join_pad(room, &vec![b'x'; len - base]);
    assert_eq!(out.len(), len);
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A fresh `Sec-WebSocket-Key`: 16 bytes, base64.
fn ws_key() -> String {
    let mut raw = Vec::with_capacity(16);
    for _ in 0..4 {
        raw.extend_from_slice(&next_mask());
    }
    base64(&raw)
}

fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(48).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 48 {
        format!(" ... ({} bytes)", bytes.len())
    } else {
        String::new()
    };
    format!("[{}]{more}", shown.join(" "))
}

fn describe(m: &Message) -> String {
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

// ---------------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------------

fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to the server");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

#[derive(Debug)]
enum ReadError {
    Eof,
    Timeout,
    Io(std::io::Error),
    /// The server sent bytes that are not a valid server frame.
    Frame(FrameError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Eof => write!(f, "the server closed the TCP connection (EOF)"),
            ReadError::Timeout => write!(f, "nothing arrived within {TIMEOUT:?}"),
            ReadError::Io(e) => write!(f, "read error: {e}"),
            ReadError::Frame(e) => write!(f, "the server sent an invalid frame: {e}"),
        }
    }
}

/// Reads whatever is available into `buf`.
fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(), ReadError> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        return match stream.read(&mut chunk) {
            Ok(0) => Err(ReadError::Eof),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ReadError::Timeout)
            }
            Err(e) => Err(ReadError::Io(e)),
        };
    }
}

/// An HTTP response head (and body, when read with [`http`]).
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        for (n, v) in &self.headers {
            write!(f, " | {n}: {v}")?;
        }
        write!(f, " | body {:?}", String::from_utf8_lossy(&self.body))
    }
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Reads a response head; bytes after it stay in `buf`.
fn read_head(stream: &mut TcpStream, buf: &mut BytesMut, what: &str) -> HttpResponse {
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(pos + 4);
            let head = String::from_utf8_lossy(&head[..pos]).into_owned();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or("");
            let mut parts = status_line.split_whitespace();
            assert_eq!(
                parts.next(),
                Some("HTTP/1.1"),
                "{what}: bad status line {status_line:?}"
            );
            let status = parts
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{what}: bad status line {status_line:?}"));
            let headers = lines
                .map(|l| {
                    let (n, v) = l
                        .split_once(':')
                        .unwrap_or_else(|| panic!("{what}: bad header line {l:?}"));
                    (n.trim().to_owned(), v.trim().to_owned())
                })
                .collect();
            return HttpResponse {
                status,
                headers,
                body: Vec::new(),
            };
        }
        if let Err(e) = fill(stream, buf) {
            panic!(
                "{what}: no complete HTTP response ({e}); received {:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }
}

/// Sends a raw HTTP request on a new connection and reads the whole response. A response with
/// `Connection: close` must be followed by the server closing the connection.
fn http(addr: SocketAddr, request: &str) -> HttpResponse {
    let mut stream = tcp(addr);
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    let mut buf = BytesMut::new();
    let what = format!("response to {:?}", request.lines().next().unwrap_or(""));
    let mut resp = read_head(&mut stream, &mut buf, &what);
    if resp.status == 101 {
        return resp;
    }
    let closes = resp.header_has_token("connection", "close");
    let length: Option<usize> = resp
        .header("content-length")
        .map(|v| v.parse().expect("Content-Length"));
    loop {
        if !closes && length.is_some_and(|l| buf.len() >= l) {
            break;
        }
        match fill(&mut stream, &mut buf) {
            Ok(()) => {}
            Err(ReadError::Eof) => break,
            Err(ReadError::Io(e)) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => {
                panic!("{what}: {e} before the end of the response (Connection: close = {closes})")
            }
        }
    }
    if let Some(l) = length {
        assert_eq!(buf.len(), l, "{what}: body length vs Content-Length");
    }
    resp.body = buf.to_vec();
    resp
}

/// A request line and headers, then the blank line.
fn http_request(target: &str, headers: &[&str]) -> String {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// One WebSocket client connection.
struct Ws {
    stream: TcpStream,
    buf: BytesMut,
    asm: MessageAssembler,
    /// The case being run, for failure messages.
    case: String,
}

impl Ws {
    /// Connects as user `alice`.
    fn connect(server: &Server, case: &str) -> Ws {
        Ws::connect_with(server.addr, "alice", case, &[])
    }

    /// Connects as `user`; `early` bytes go out in the same write as the upgrade request.
    fn connect_with(addr: SocketAddr, user: &str, case: &str, early: &[u8]) -> Ws {
        let mut stream = tcp(addr);
        let key = ws_key();
        let mut request =
            client_request(&addr.to_string(), &format!("/ws?user={user}"), &key).into_bytes();
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
        Ws {
            stream,
            buf,
            asm: MessageAssembler::new(1 << 24),
            case: case.to_owned(),
        }
    }

    /// Names the case that follows, for failure messages.
    fn step(&mut self, case: impl Into<String>) {
        self.case = case.into();
    }

    fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("{}: sending {} failed: {e}", self.case, hex(bytes));
        }
    }

    /// Sends each frame with its own write, pausing in between.
    fn send_each(&mut self, frames: &[Vec<u8>], pause: Duration) {
        for f in frames {
            self.send(f);
            std::thread::sleep(pause);
        }
    }

    /// Sends `bytes` in writes of `chop` bytes (TCP_NODELAY is set), pausing every `every` writes
    /// so that the pieces arrive as separate reads.
    fn send_chopped(&mut self, bytes: &[u8], chop: usize, every: usize) {
        for (i, piece) in bytes.chunks(chop).enumerate() {
            self.send(piece);
            if every > 0 && i % every == every - 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn try_next(&mut self) -> Result<Message, ReadError> {
        loop {
            match parse_frame(&mut self.buf, Role::Client, 1 << 24) {
                Ok(Some(frame)) => {
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
    fn next(&mut self, waiting_for: &str) -> Message {
        loop {
            match self.try_next() {
                Ok(Message::Ping(_)) => continue,
                Ok(m) => return m,
                Err(e) => panic!("{}: {e} while waiting for {waiting_for}", self.case),
            }
        }
    }

    fn expect_json(&mut self, waiting_for: &str) -> Value {
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

    fn expect_reply(&mut self, ty: &str) -> Value {
        let v = self.expect_json(&format!("a `{ty}` reply"));
        assert_eq!(v["type"], ty, "{}: unexpected reply {v}", self.case);
        v
    }

    fn expect_joined(&mut self, room: &str) -> Value {
        let v = self.expect_reply("joined");
        assert_eq!(v["room"], room, "{}: {v}", self.case);
        assert!(v["seq"].is_u64(), "{}: `seq` of {v}", self.case);
        v
    }

    fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect_reply("error");
        assert_eq!(v["code"], code, "{}: {v}", self.case);
        assert!(v["message"].is_string(), "{}: `message` of {v}", self.case);
        v
    }

    fn expect_pong(&mut self, payload: &[u8]) {
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
    fn read_close(&mut self, allow: &[(&str, &str)]) -> Option<(u16, String)> {
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
    fn expect_fail(&mut self, code: u16) {
        self.expect_fail_after(code, &[]);
    }

    fn expect_fail_after(&mut self, code: u16, allow: &[(&str, &str)]) {
        self.expect_fail_one_of(&[code], allow);
    }

    fn expect_fail_one_of(&mut self, codes: &[u16], allow: &[(&str, &str)]) {
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
    fn close_with(&mut self, payload: &[u8]) -> Option<(u16, String)> {
        self.send(&frame(FIN | CLOSE, payload));
        let got = self.read_close(&[]);
        self.expect_eof();
        got
    }

    /// The normal end of a connection: close 1000 is answered with close 1000.
    fn close_normally(&mut self) {
        self.step(format!("{} (closing with 1000)", self.case));
        let got = self.close_with(&1000u16.to_be_bytes());
        assert_eq!(got.map(|c| c.0), Some(1000), "{}", self.case);
    }

    /// After a close frame the server sends nothing more and closes the TCP connection.
    fn expect_eof(&mut self) {
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

// ---------------------------------------------------------------------------------------------
// Opening handshake and plain HTTP
// ---------------------------------------------------------------------------------------------

const VALID_KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

#[test]
fn handshake_101_with_rfc_sample_accept() {
    let server = Server::start(&[]);
    // RFC 6455 section 1.3: this key must be answered with this accept value.
    let req = http_request(
        "/ws?user=alice",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            VALID_KEY,
            "Sec-WebSocket-Version: 13",
        ],
    );
    let resp = http(server.addr, &req);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{resp:?}"
    );
    assert!(resp.header_has_token("upgrade", "websocket"), "{resp:?}");
    assert!(resp.header_has_token("connection", "upgrade"), "{resp:?}");
    // No extension or subprotocol was offered, so none may be selected.
    assert_eq!(resp.header("sec-websocket-extensions"), None, "{resp:?}");
    assert_eq!(resp.header("sec-websocket-protocol"), None, "{resp:?}");
}

#[test]
fn handshake_random_keys_and_browser_style_headers() {
    let server = Server::start(&[]);
    for i in 0..5 {
        // `Ws::connect_with` checks the status and Sec-WebSocket-Accept.
        let mut ws = Ws::connect_with(server.addr, "alice", &format!("handshake key {i}"), &[]);
        ws.close_normally();
    }
    // Firefox sends `Connection: keep-alive, Upgrade`; header names and tokens are
    // case-insensitive.
    let key = ws_key();
    let req = http_request(
        "/ws?user=Al.ice_-9",
        &[
            "upgrade: WebSocket",
            "connection: keep-alive, Upgrade",
            &format!("sec-websocket-key: {key}"),
            "sec-websocket-version: 13",
            "Origin: http://localhost",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        ],
    );
    let resp = http(server.addr, &req);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(accept_key(&key).as_str()),
        "{resp:?}"
    );
    // permessage-deflate was offered but is not supported: it must not be accepted.
    assert_eq!(resp.header("sec-websocket-extensions"), None, "{resp:?}");
}

#[test]
fn handshake_missing_or_bad_key_is_400() {
    let server = Server::start(&[]);
    let missing = http_request(
        "/ws?user=alice",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
        ],
    );
    let resp = http(server.addr, &missing);
    assert_eq!(resp.status, 400, "missing Sec-WebSocket-Key: {resp:?}");

    // Base64 of 15 bytes: the key must decode to 16.
    let short = http_request(
        "/ws?user=alice",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: YWFhYWFhYWFhYWFhYWFh",
            "Sec-WebSocket-Version: 13",
        ],
    );
    let resp = http(server.addr, &short);
    assert_eq!(resp.status, 400, "15-byte Sec-WebSocket-Key: {resp:?}");

    let not_base64 = http_request(
        "/ws?user=alice",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: !!!!",
            "Sec-WebSocket-Version: 13",
        ],
    );
    let resp = http(server.addr, &not_base64);
    assert_eq!(resp.status, 400, "Sec-WebSocket-Key not base64: {resp:?}");
}

#[test]
fn handshake_wrong_version_is_refused_with_supported_version() {
    let server = Server::start(&[]);
    // RFC 6455 section 4.2.2: an unsupported version gets an error status (such as 426) and a
    // Sec-WebSocket-Version header listing the versions the server understands.
    let v12 = http_request(
        "/ws?user=alice",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            VALID_KEY,
            "Sec-WebSocket-Version: 12",
        ],
    );
    let resp = http(server.addr, &v12);
    assert!(matches!(resp.status, 400 | 426), "version 12: {resp:?}");
    assert!(
        resp.header_has_token("sec-websocket-version", "13"),
        "version 12: {resp:?}"
    );

    let missing = http_request(
        "/ws?user=alice",
        &["Upgrade: websocket", "Connection: Upgrade", VALID_KEY],
    );
    let resp = http(server.addr, &missing);
    assert!(
        matches!(resp.status, 400 | 426),
        "no Sec-WebSocket-Version: {resp:?}"
    );
}

#[test]
fn handshake_without_upgrade_or_with_post_is_refused() {
    let server = Server::start(&[]);
    let plain = http_request("/ws?user=alice", &[]);
    let resp = http(server.addr, &plain);
    assert!(
        matches!(resp.status, 400 | 426),
        "GET /ws without Upgrade: {resp:?}"
    );

    let post = format!(
        "POST /ws?user=alice HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{VALID_KEY}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
    );
    let resp = http(server.addr, &post);
    assert!(matches!(resp.status, 400 | 405), "POST upgrade: {resp:?}");
}

#[test]
fn handshake_bad_user_is_400() {
    let server = Server::start(&[]);
    let long = "u".repeat(65);
    let targets = [
        "/ws".to_owned(),
        "/ws?user=".to_owned(),
        "/ws?user=a%20b".to_owned(),
        "/ws?user=a/b".to_owned(),
        "/ws?user=%C3%A9".to_owned(),
        format!("/ws?user={long}"),
    ];
    for target in &targets {
        let req = http_request(
            target,
            &[
                "Upgrade: websocket",
                "Connection: Upgrade",
                VALID_KEY,
                "Sec-WebSocket-Version: 13",
            ],
        );
        let resp = http(server.addr, &req);
        assert_eq!(resp.status, 400, "{target}: {resp:?}");
    }
    // A raw space ends the request target: the request line is malformed.
    let raw = format!(
        "GET /ws?user=a b HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{VALID_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let resp = http(server.addr, &raw);
    assert_eq!(resp.status, 400, "`?user=a b`: {resp:?}");

    // The longest valid id is accepted.
    let max = "u".repeat(64);
    let mut ws = Ws::connect_with(server.addr, &max, "64-char user id", &[]);
    ws.close_normally();
}

#[test]
fn http_index_healthz_and_404() {
    let server = Server::start(&[]);
    let resp = http(server.addr, &http_request("/", &[]));
    assert_eq!(resp.status, 200, "GET /: {resp:?}");
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/html"), "GET / Content-Type {ct:?}");
    assert!(!resp.body.is_empty(), "GET / has an empty body");

    let resp = http(server.addr, &http_request("/healthz", &[]));
    assert_eq!(resp.status, 200, "GET /healthz: {resp:?}");

    let resp = http(server.addr, &http_request("/no-such-page", &[]));
    assert_eq!(resp.status, 404, "GET /no-such-page: {resp:?}");
}

// ---------------------------------------------------------------------------------------------
// Group 1: framing
// ---------------------------------------------------------------------------------------------

/// 1.1.1-1.1.6: text messages with every length encoding boundary, up to the 64 KiB limit.
#[test]
fn g1_text_payload_lengths() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "1.1.1 empty text");
    // An empty text message is valid WebSocket but not a JSON request.
    ws.send(&text(b""));
    ws.expect_error("bad_request");
    for len in [125, 126, 127, 128, 65535, LIMIT] {
        ws.step(format!("1.1.x text of {len} bytes"));
        let room = format!("len{len}");
        ws.send(&text(&join_len(&room, len)));
        ws.expect_joined(&room);
    }
    ws.close_normally();
}

/// 1.1.7-1.1.8: 65535- and 65536-byte text messages written in 997-byte pieces.
#[test]
fn g1_text_written_in_chops() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "1.1.7");
    for len in [65535, LIMIT] {
        ws.step(format!("1.1.7/8 text of {len} bytes in 997-byte writes"));
        let room = format!("chop{len}");
        ws.send_chopped(&text(&join_len(&room, len)), 997, 16);
        ws.expect_joined(&room);
    }
    ws.close_normally();
}

/// 1.2.x: binary messages are not part of chat v1: close 1003 (PROTOCOL.md), whatever the size.
#[test]
fn g1_binary_messages_close_1003() {
    let server = Server::start(&[]);
    for len in [0usize, 125, 126, 127, 128, 65535, LIMIT] {
        let mut ws = Ws::connect(&server, &format!("1.2.x binary of {len} bytes"));
        let payload: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
        ws.send(&frame(FIN | BINARY, &payload));
        ws.expect_fail(1003);
    }
    // A valid request first: it is answered, then the binary message closes the connection.
    let mut ws = Ws::connect(&server, "1.2.x binary after a request");
    ws.send(&[text(&join("b1")), frame(FIN | BINARY, b"\xfe\xff")].concat());
    ws.expect_fail_after(1003, &[("joined", "b1")]);
    // A fragmented binary message.
    let mut ws = Ws::connect(&server, "1.2.x fragmented binary");
    ws.send(&[frame(BINARY, b"\x00\x01"), frame(FIN | CONT, b"\x02\x03")].concat());
    ws.expect_fail(1003);
}

// ---------------------------------------------------------------------------------------------
// Group 2: ping and pong
// ---------------------------------------------------------------------------------------------

/// 2.1-2.4: a ping is answered with a pong carrying the same payload (empty, text, binary, 125
/// bytes).
#[test]
fn g2_ping_gets_identical_pong() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "2.1 empty ping");
    let payloads: [(&str, Vec<u8>); 4] = [
        ("2.1 empty ping", Vec::new()),
        ("2.2 ping with text payload", b"Hello, world!".to_vec()),
        (
            "2.3 ping with binary payload",
            vec![0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff],
        ),
        ("2.4 ping with 125-byte payload", vec![0xfe; 125]),
    ];
    for (case, payload) in &payloads {
        ws.step(*case);
        ws.send(&frame(FIN | PING, payload));
        ws.expect_pong(payload);
    }
    // The connection still serves requests.
    ws.step("2.x request after pings");
    ws.send(&text(&join("after-pings")));
    ws.expect_joined("after-pings");
    ws.close_normally();
}

/// 2.5: a ping over 125 bytes is a protocol error (control frames are at most 125 bytes).
#[test]
fn g2_ping_of_126_bytes_closes_1002() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "2.5 ping of 126 bytes");
    ws.send(&frame(FIN | PING, &[0xfe; 126]));
    ws.expect_fail(1002);
}

/// 2.6: a 125-byte ping written one byte at a time.
#[test]
fn g2_ping_written_in_chops() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "2.6 125-byte ping in 1-byte writes");
    let payload: Vec<u8> = (0..125u8).collect();
    ws.send_chopped(&frame(FIN | PING, &payload), 1, 1);
    ws.expect_pong(&payload);
    ws.close_normally();
}

/// 2.7-2.9: an unsolicited pong is ignored: no reply, no close; a ping after it is answered.
#[test]
fn g2_unsolicited_pong_is_ignored() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "2.7 unsolicited empty pong");
    ws.send(&frame(FIN | PONG, b""));
    ws.send(&text(&join("p1")));
    ws.expect_joined("p1");

    ws.step("2.8 unsolicited pong with payload");
    ws.send(&frame(FIN | PONG, b"unsolicited pong payload"));
    ws.send(&text(&join("p2")));
    ws.expect_joined("p2");

    ws.step("2.9 unsolicited pong, then ping");
    ws.send(
        &[
            frame(FIN | PONG, b"unsolicited pong payload"),
            frame(FIN | PING, b"ping payload"),
        ]
        .concat(),
    );
    ws.expect_pong(b"ping payload");
    ws.close_normally();
}

/// 2.10-2.11: ten pings in one write, and ten pings in separate small writes, get ten pongs in
/// order.
#[test]
fn g2_ten_pings_get_ten_pongs() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "2.10 ten pings in one write");
    let payloads: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("payload-{i}").into_bytes())
        .collect();
    let batch: Vec<u8> = payloads.iter().flat_map(|p| frame(FIN | PING, p)).collect();
    ws.send(&batch);
    for p in &payloads {
        ws.expect_pong(p);
    }
    ws.step("2.11 ten pings in 1-byte writes");
    for p in &payloads {
        ws.send_chopped(&frame(FIN | PING, p), 1, 4);
    }
    for p in &payloads {
        ws.expect_pong(p);
    }
    ws.close_normally();
}

// ---------------------------------------------------------------------------------------------
// Group 3: reserved bits
// ---------------------------------------------------------------------------------------------

/// 3.1-3.7: a reserved bit without a negotiated extension is a protocol error, on any frame type.
/// Where a valid request comes first its reply may arrive before the close; the ping sent after
/// the bad frame must not be answered.
#[test]
fn g3_reserved_bits_close_1002() {
    let server = Server::start(&[]);
    let ping = || frame(FIN | PING, b"");

    let mut ws = Ws::connect(&server, "3.1 RSV1 on a text frame");
    ws.send(&frame(FIN | RSV1 | TEXT, &join("r31")));
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "3.2 text, RSV2 text, ping");
    ws.send(
        &[
            text(&join("ok32")),
            frame(FIN | RSV2 | TEXT, &join("r32")),
            ping(),
        ]
        .concat(),
    );
    ws.expect_fail_after(1002, &[("joined", "ok32")]);

    let mut ws = Ws::connect(&server, "3.3 text, RSV1+RSV2 text, ping, frame by frame");
    let frames = [
        text(&join("ok33")),
        frame(FIN | RSV1 | RSV2 | TEXT, &join("r33")),
        ping(),
    ];
    ws.send_each(&frames, Duration::from_millis(20));
    ws.expect_fail_after(1002, &[("joined", "ok33")]);

    let mut ws = Ws::connect(&server, "3.4 text, RSV1+RSV2 text, ping, in 1-byte writes");
    ws.send_chopped(&frames.concat(), 1, 8);
    ws.expect_fail_after(1002, &[("joined", "ok33")]);

    let mut ws = Ws::connect(&server, "3.5 RSV3 on a binary frame");
    ws.send(&frame(FIN | RSV3 | BINARY, b"\x00\xff\xfe\xfd"));
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "3.6 RSV1+RSV3 on a ping");
    ws.send(&frame(FIN | RSV1 | RSV3 | PING, b"ping"));
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "3.7 RSV2+RSV3 on a close");
    ws.send(&frame(FIN | RSV2 | RSV3 | CLOSE, &1000u16.to_be_bytes()));
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "3.x all RSV bits on a continuation");
    let msg = join("r3x");
    ws.send(
        &[
            frame(TEXT, &msg[..10]),
            frame(FIN | RSV1 | RSV2 | RSV3 | CONT, &msg[10..]),
        ]
        .concat(),
    );
    ws.expect_fail(1002);
}

// ---------------------------------------------------------------------------------------------
// Group 4: opcodes
// ---------------------------------------------------------------------------------------------

/// 4.1.1-4.2.5: reserved data opcodes 3-7 and control opcodes 11-15 are protocol errors, alone,
/// with a payload, after a valid request and before a ping, and written in small pieces.
#[test]
fn g4_reserved_opcodes_close_1002() {
    let server = Server::start(&[]);
    for op in [3u8, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
        let mut ws = Ws::connect(&server, &format!("4.x opcode {op} alone"));
        ws.send(&frame(FIN | op, b""));
        ws.expect_fail(1002);

        let room = format!("op{op}");
        let bytes = [
            text(&join(&room)),
            frame(FIN | op, b"reserved opcode payload"),
            frame(FIN | PING, b""),
        ]
        .concat();
        let mut ws = Ws::connect(
            &server,
            &format!("4.x request, opcode {op} with payload, ping"),
        );
        ws.send(&bytes);
        ws.expect_fail_after(1002, &[("joined", &room)]);

        let mut ws = Ws::connect(
            &server,
            &format!("4.x request, opcode {op}, ping, in 1-byte writes"),
        );
        ws.send_chopped(&bytes, 1, 8);
        ws.expect_fail_after(1002, &[("joined", &room)]);
    }
}

// ---------------------------------------------------------------------------------------------
// Group 5: fragmentation
// ---------------------------------------------------------------------------------------------

/// 5.1-5.2: control frames must not be fragmented.
#[test]
fn g5_fragmented_control_frames_close_1002() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.1 ping in two fragments");
    ws.send(&[frame(PING, b"fragment1"), frame(FIN | CONT, b"fragment2")].concat());
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "5.2 pong in two fragments");
    ws.send(&[frame(PONG, b"fragment1"), frame(FIN | CONT, b"fragment2")].concat());
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "5.x close without FIN");
    ws.send(&frame(CLOSE, &1000u16.to_be_bytes()));
    ws.expect_fail(1002);
}

/// 5.3-5.5: a text message in two fragments, in one write, frame by frame, and in 1-byte writes.
#[test]
fn g5_text_in_two_fragments() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.3 two fragments in one write");
    let msg = join("f53");
    let frames = fragments_at(&msg, &[msg.len() / 2]);
    ws.send(&frames.concat());
    ws.expect_joined("f53");

    ws.step("5.4 two fragments, frame by frame");
    let msg = join("f54");
    ws.send_each(
        &fragments_at(&msg, &[msg.len() / 2]),
        Duration::from_millis(50),
    );
    ws.expect_joined("f54");

    ws.step("5.5 two fragments in 1-byte writes");
    let msg = join("f55");
    ws.send_chopped(&fragments_at(&msg, &[msg.len() / 2]).concat(), 1, 4);
    ws.expect_joined("f55");
    ws.close_normally();
}

/// 5.6-5.8: a ping between two fragments is answered at once; the message completes after it.
#[test]
fn g5_ping_between_fragments() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.6 fragment, ping, fragment in one write");
    let build = |room: &str| {
        let msg = join(room);
        let f = fragments_at(&msg, &[msg.len() / 2]);
        vec![f[0].clone(), frame(FIN | PING, b"pongme!"), f[1].clone()]
    };
    ws.send(&build("f56").concat());
    ws.expect_pong(b"pongme!");
    ws.expect_joined("f56");

    ws.step("5.7 fragment, ping, fragment, frame by frame");
    ws.send_each(&build("f57"), Duration::from_millis(50));
    ws.expect_pong(b"pongme!");
    ws.expect_joined("f57");

    ws.step("5.8 fragment, ping, fragment in 1-byte writes");
    ws.send_chopped(&build("f58").concat(), 1, 4);
    ws.expect_pong(b"pongme!");
    ws.expect_joined("f58");
    ws.close_normally();
}

/// 5.9-5.14: a continuation frame with nothing to continue is a protocol error; the text
/// message after it is not processed.
#[test]
fn g5_continuation_without_start_closes_1002() {
    let server = Server::start(&[]);
    for (fin, name) in [(FIN, "5.9-5.11 FIN=1"), (0, "5.12-5.14 FIN=0")] {
        let frames = [
            frame(fin | CONT, b"non-continuation payload"),
            text(&join("never")),
        ];
        let mut ws = Ws::connect(&server, &format!("{name} continuation first, one write"));
        ws.send(&frames.concat());
        ws.expect_fail(1002);

        let mut ws = Ws::connect(
            &server,
            &format!("{name} continuation first, frame by frame"),
        );
        ws.send_each(&frames, Duration::from_millis(20));
        ws.expect_fail(1002);

        let mut ws = Ws::connect(
            &server,
            &format!("{name} continuation first, 1-byte writes"),
        );
        ws.send_chopped(&frames.concat(), 1, 8);
        ws.expect_fail(1002);
    }

    // A continuation after a message that is already complete.
    let mut ws = Ws::connect(&server, "5.x continuation after a complete message");
    ws.send(&[text(&join("done")), frame(FIN | CONT, b"more")].concat());
    ws.expect_fail_after(1002, &[("joined", "done")]);
}

/// 5.15-5.17: broken fragment sequences.
#[test]
fn g5_broken_fragment_sequences_close_1002() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(
        &server,
        "5.15 complete fragmented message, then continuation, then text",
    );
    let msg = join("f515");
    let mut frames = fragments_at(&msg, &[msg.len() / 2]);
    frames.push(frame(CONT, b"fragment3"));
    frames.push(text(&join("never")));
    ws.send(&frames.concat());
    ws.expect_fail_after(1002, &[("joined", "f515")]);

    for (fin, name) in [
        (0, "5.16 continuation FIN=0 first"),
        (FIN, "5.17 continuation FIN=1 first"),
    ] {
        let mut ws = Ws::connect(&server, name);
        let round = [
            frame(fin | CONT, b"fragment1"),
            frame(TEXT, b"fragment2"),
            frame(FIN | CONT, b"fragment3"),
        ];
        ws.send(&[round.concat(), round.concat()].concat());
        ws.expect_fail(1002);
    }
}

/// 5.18: a new text frame in the middle of a fragmented message is a protocol error.
#[test]
fn g5_text_frame_inside_fragmented_message_closes_1002() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.18 text FIN=0, then text FIN=1");
    let msg = join("f518");
    ws.send(&[frame(TEXT, &msg[..10]), text(&join("never"))].concat());
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "5.x binary frame inside a fragmented text message");
    ws.send(&[frame(TEXT, &msg[..10]), frame(FIN | BINARY, b"\x00")].concat());
    ws.expect_fail(1002);
}

/// 5.19-5.20: a message in five fragments with two pings in between, with pauses, and in 1-byte
/// writes.
#[test]
fn g5_five_fragments_with_two_pings() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.19 five fragments, two pings, with pauses");
    let build = |room: &str| {
        let msg = join(room);
        let n = msg.len();
        let f = fragments_at(&msg, &[n / 5, 2 * n / 5, 3 * n / 5, 4 * n / 5]);
        vec![
            f[0].clone(),
            f[1].clone(),
            frame(FIN | PING, b"pongme 1!"),
            f[2].clone(),
            f[3].clone(),
            frame(FIN | PING, b"pongme 2!"),
            f[4].clone(),
        ]
    };
    ws.send_each(&build("f519"), Duration::from_millis(100));
    ws.expect_pong(b"pongme 1!");
    ws.expect_pong(b"pongme 2!");
    ws.expect_joined("f519");

    ws.step("5.20 five fragments, two pings, 1-byte writes");
    ws.send_chopped(&build("f520").concat(), 1, 4);
    ws.expect_pong(b"pongme 1!");
    ws.expect_pong(b"pongme 2!");
    ws.expect_joined("f520");
    ws.close_normally();
}

/// A message in 1-byte fragments, with and without pings in between, and a 64 KiB message in
/// 1024 fragments.
#[test]
fn g5_many_small_fragments() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.x 1-byte fragments");
    ws.send(&fragments_of(&join("tiny"), 1).concat());
    ws.expect_joined("tiny");

    ws.step("5.x 1-byte fragments with a ping after every 10th");
    let frames = fragments_of(&join("tiny-pings"), 1);
    let mut bytes = Vec::new();
    let mut pings = 0;
    for (i, f) in frames.iter().enumerate() {
        bytes.extend_from_slice(f);
        if i % 10 == 9 {
            bytes.extend_from_slice(&frame(FIN | PING, format!("p{i}").as_bytes()));
            pings += 1;
        }
    }
    ws.send(&bytes);
    for i in 0..pings {
        ws.expect_pong(format!("p{}", i * 10 + 9).as_bytes());
    }
    ws.expect_joined("tiny-pings");

    ws.step("5.x 64 KiB message in 1024 fragments of 64 bytes");
    ws.send(&fragments_of(&join_len("frag64k", LIMIT), 64).concat());
    ws.expect_joined("frag64k");

    ws.step("6.1.2 three empty fragments: an empty text message");
    ws.send(&[frame(TEXT, b""), frame(CONT, b""), frame(FIN | CONT, b"")].concat());
    ws.expect_error("bad_request");

    ws.step("6.1.3 empty fragment, request, empty fragment");
    ws.send(
        &[
            frame(TEXT, b""),
            frame(CONT, &join("empties")),
            frame(FIN | CONT, b""),
        ]
        .concat(),
    );
    ws.expect_joined("empties");
    ws.close_normally();
}

// ---------------------------------------------------------------------------------------------
// Group 6: UTF-8
// ---------------------------------------------------------------------------------------------

const HELLO_UTF8: &str = "Hello-\u{b5}@\u{df}\u{f6}\u{e4}\u{fc}\u{e0}\u{e1}-UTF-8!!";
const KOSME: &str = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}";

/// 6.2, 6.5-6.x valid: multi-byte text (2-, 3- and 4-byte sequences, boundary code points) in a
/// JSON string, whole and split into fragments at every byte.
#[test]
fn g6_valid_utf8_is_accepted() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "6.2.1 valid UTF-8 in one frame");
    ws.send(&text(&join_pad("u1", HELLO_UTF8.as_bytes())));
    ws.expect_joined("u1");

    ws.step("6.2.2 valid UTF-8 in fragments at code point boundaries");
    let msg = join_pad("u2", HELLO_UTF8.as_bytes());
    let cuts: Vec<usize> = String::from_utf8(msg.clone())
        .unwrap()
        .char_indices()
        .map(|(i, _)| i)
        .skip(1)
        .collect();
    ws.send(&fragments_at(&msg, &cuts).concat());
    ws.expect_joined("u2");

    ws.step("6.2.3 valid UTF-8 in 1-byte fragments");
    ws.send(&fragments_of(&join_pad("u3", HELLO_UTF8.as_bytes()), 1).concat());
    ws.expect_joined("u3");

    ws.step("6.2.4 kosme in 1-byte fragments");
    ws.send(&fragments_of(&join_pad("u4", KOSME.as_bytes()), 1).concat());
    ws.expect_joined("u4");

    // Boundary code points: first and last of each sequence length, around the surrogates, the
    // noncharacters U+FFFE/U+FFFF, and 4-byte characters.
    let boundaries = "\u{80}\u{7ff}\u{800}\u{d7ff}\u{e000}\u{fffd}\u{fffe}\u{ffff}\u{10000}\u{10ffff}\u{feff}\u{1d11e}\u{1f600}\u{1f004}";
    ws.step("6.x boundary code points and 4-byte characters");
    ws.send(&text(&join_pad("u5", boundaries.as_bytes())));
    ws.expect_joined("u5");
    ws.step("6.x boundary code points in 1-byte fragments");
    ws.send(&fragments_of(&join_pad("u6", boundaries.as_bytes()), 1).concat());
    ws.expect_joined("u6");

    // The server decodes and re-encodes non-ASCII strings faithfully.
    let room = "\u{1d11e}-\u{1f600}-\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}";
    ws.step("6.x room name with 4-byte characters");
    ws.send(&text(&join(room)));
    ws.expect_joined(room);
    ws.close_normally();
}

/// A code point split across fragments, and across TCP writes inside one frame, is fine.
#[test]
fn g6_code_point_split_across_fragments() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(
        &server,
        "6.x 4-byte character split 1+2+1 over three fragments",
    );
    let prefix = join_pad("split", b"").len() - 2; // up to the opening quote's contents
    let msg = join_pad("split", "\u{1f600}".as_bytes());
    ws.send(&fragments_at(&msg, &[prefix + 1, prefix + 3]).concat());
    ws.expect_joined("split");

    ws.step("6.x 3-byte character split over two fragments, frame by frame");
    let msg = join_pad("split2", "\u{20ac}".as_bytes());
    let prefix = join_pad("split2", b"").len() - 2;
    ws.send_each(
        &fragments_at(&msg, &[prefix + 2]),
        Duration::from_millis(50),
    );
    ws.expect_joined("split2");

    ws.step("6.x 4-byte characters split across 1-byte TCP writes of one frame");
    ws.send_chopped(
        &text(&join_pad("split3", "\u{1f600}\u{10ffff}".as_bytes())),
        1,
        1,
    );
    ws.expect_joined("split3");
    ws.close_normally();
}

/// Invalid UTF-8 sequences (Autobahn 6.3-6.21 selection), each in a JSON string of a request.
fn invalid_utf8_cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "6.3.1 kosme with a surrogate",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"
                .to_vec(),
        ),
        ("6.x 0xff", vec![0xff]),
        ("6.x 0xfe", vec![0xfe]),
        ("6.x 0xfe 0xfe 0xff 0xff", vec![0xfe, 0xfe, 0xff, 0xff]),
        ("6.x lone continuation byte 0x80", vec![0x80]),
        ("6.x lone continuation byte 0xbf", vec![0xbf]),
        ("6.x continuation bytes 80 bf 80", vec![0x80, 0xbf, 0x80]),
        ("6.x lone start byte then ASCII", vec![0xc2, b'x']),
        (
            "6.x truncated 3-byte sequence then ASCII",
            vec![0xe2, 0x82, b'x'],
        ),
        (
            "6.x truncated 4-byte sequence then ASCII",
            vec![0xf0, 0x9f, 0x98, b'x'],
        ),
        ("6.x overlong / (2 bytes)", vec![0xc0, 0xaf]),
        ("6.x overlong / (3 bytes)", vec![0xe0, 0x80, 0xaf]),
        ("6.x overlong / (4 bytes)", vec![0xf0, 0x80, 0x80, 0xaf]),
        ("6.x overlong NUL", vec![0xc0, 0x80]),
        ("6.x largest overlong 2 bytes", vec![0xc1, 0xbf]),
        ("6.x largest overlong 3 bytes", vec![0xe0, 0x9f, 0xbf]),
        ("6.x largest overlong 4 bytes", vec![0xf0, 0x8f, 0xbf, 0xbf]),
        ("6.x 5-byte sequence", vec![0xf8, 0x88, 0x80, 0x80, 0x80]),
        (
            "6.x 6-byte sequence",
            vec![0xfc, 0x84, 0x80, 0x80, 0x80, 0x80],
        ),
        ("6.x above U+10FFFF", vec![0xf4, 0x90, 0x80, 0x80]),
        ("6.x lead byte 0xf5", vec![0xf5, 0x80, 0x80, 0x80]),
        ("6.x surrogate U+D800", vec![0xed, 0xa0, 0x80]),
        ("6.x surrogate U+DFFF", vec![0xed, 0xbf, 0xbf]),
        (
            "6.x surrogate pair",
            vec![0xed, 0xa0, 0x80, 0xed, 0xb0, 0x80],
        ),
    ]
}

/// Invalid UTF-8 in a text message: close 1007 (never a JSON `error`).
#[test]
fn g6_invalid_utf8_closes_1007() {
    let server = Server::start(&[]);
    for (case, bad) in invalid_utf8_cases() {
        let mut ws = Ws::connect(&server, &format!("{case}, one frame"));
        ws.send(&text(&join_pad("bad", &bad)));
        ws.expect_fail(1007);
    }
    // An incomplete sequence at the very end of the message.
    let mut msg = join("bad");
    msg.extend_from_slice(&[0xf0, 0x9f, 0x98]);
    let mut ws = Ws::connect(&server, "6.x message ends in a truncated sequence");
    ws.send(&text(&msg));
    ws.expect_fail(1007);
    let mut ws = Ws::connect(
        &server,
        "6.x fragmented message ends in a truncated sequence",
    );
    ws.send(&fragments_at(&msg, &[msg.len() - 2]).concat());
    ws.expect_fail(1007);
}

/// Invalid UTF-8 in fragmented messages: in 1-byte fragments, and split across fragments.
#[test]
fn g6_invalid_utf8_in_fragments_closes_1007() {
    let server = Server::start(&[]);
    for (case, bad) in invalid_utf8_cases().into_iter().step_by(3) {
        let mut ws = Ws::connect(&server, &format!("{case}, 1-byte fragments"));
        ws.send(&fragments_of(&join_pad("bad", &bad), 1).concat());
        ws.expect_fail(1007);
    }
    // A surrogate whose bytes are split over two fragments.
    let msg = join_pad("bad", &[0xed, 0xa0, 0x80]);
    let prefix = join_pad("bad", b"").len() - 2;
    let mut ws = Ws::connect(&server, "6.x surrogate split over two fragments");
    ws.send(&fragments_at(&msg, &[prefix + 1]).concat());
    ws.expect_fail(1007);
}

/// 6.4.1-6.4.2: fail fast: invalid UTF-8 in a fragment is refused before the message ends. The
/// final fragment is never sent, so only an early check closes the connection.
#[test]
fn g6_invalid_utf8_fails_fast_in_later_fragment() {
    let server = Server::start(&[]);
    let mut first = join_pad("ff", b"");
    first.truncate(first.len() - 2);
    first.extend_from_slice(KOSME.as_bytes());

    let mut ws = Ws::connect(&server, "6.4.1 invalid code point in the second fragment");
    ws.send(&frame(TEXT, &first));
    std::thread::sleep(Duration::from_millis(100));
    ws.send(&frame(CONT, &[0xf4, 0x90, 0x80, 0x80]));
    ws.expect_fail(1007);

    let mut ws = Ws::connect(
        &server,
        "6.4.2 invalid sequence spread over the second and third fragments",
    );
    ws.send(&frame(TEXT, &first));
    ws.send(&frame(CONT, &[0xf4]));
    std::thread::sleep(Duration::from_millis(100));
    ws.send(&frame(CONT, &[0x90, 0x80, 0x80]));
    ws.expect_fail(1007);

    let mut ws = Ws::connect(
        &server,
        "6.4.x invalid byte in the middle of a later fragment",
    );
    ws.send(&frame(TEXT, &first));
    ws.send(&frame(CONT, b"valid so far"));
    ws.send(&frame(CONT, b"then \xff and more"));
    ws.expect_fail(1007);
}

// ---------------------------------------------------------------------------------------------
// Group 7: closing handshake
// ---------------------------------------------------------------------------------------------

/// 7.1.1: a request, then close 1000: the reply, the echoed close, then the server closes TCP.
#[test]
fn g7_close_after_request() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "7.1.1 request then close 1000");
    ws.send(&text(&join("c1")));
    ws.expect_joined("c1");
    ws.close_normally();

    // RFC 6455 5.5.1 lets the server answer the close before replies still in flight, so the
    // reply to a request in the same write as the close may be dropped (Autobahn 7.1.6 likewise).
    let mut ws = Ws::connect(&server, "7.1.1 request and close 1000 in one write");
    ws.send(&[text(&join("c2")), close_frame(1000, b"")].concat());
    let got = ws.read_close(&[("joined", "c2")]);
    assert_eq!(got.map(|c| c.0), Some(1000), "{}", ws.case);
    ws.expect_eof();

    let mut ws = Ws::connect(&server, "history request, then close");
    ws.send(
        &[
            text(&join("hist")),
            text(br#"{"type":"history","room":"hist"}"#),
        ]
        .concat(),
    );
    ws.expect_joined("hist");
    let v = ws.expect_reply("history");
    assert_eq!(v["room"], "hist", "{v}");
    assert_eq!(v["messages"], serde_json::json!([]), "{v}");
    ws.close_normally();
}

/// 7.1.2-7.1.6: frames after a close are ignored: no pong, no reply, no second close.
#[test]
fn g7_frames_after_close_are_ignored() {
    let server = Server::start(&[]);
    let cases: [(&str, Vec<Vec<u8>>); 5] = [
        (
            "7.1.2 close twice",
            vec![close_frame(1000, b""), close_frame(1000, b"")],
        ),
        (
            "7.1.3 close then ping",
            vec![
                close_frame(1000, b""),
                frame(FIN | PING, b"ping after close"),
            ],
        ),
        (
            "7.1.4 close then text",
            vec![close_frame(1000, b""), text(&join("after-close"))],
        ),
        (
            "7.1.5 fragment, close, final fragment",
            vec![
                frame(TEXT, &join("frag")[..10]),
                close_frame(1000, b""),
                frame(FIN | CONT, &join("frag")[10..]),
            ],
        ),
        (
            "7.1.6 64 KiB request, close, ping",
            vec![
                text(&join_len("big", LIMIT)),
                close_frame(1000, b""),
                frame(FIN | PING, b"ping after close"),
            ],
        ),
    ];
    for (case, frames) in &cases {
        let mut ws = Ws::connect(&server, case);
        ws.send(&frames.concat());
        let got = ws.read_close(&[("joined", "big")]);
        assert_eq!(got.map(|c| c.0), Some(1000), "{case}");
        ws.expect_eof();
    }
}

/// Failing the connection (RFC 6455 7.1.7) closes TCP even if the client never answers the
/// server's close frame.
#[test]
fn g7_server_close_without_client_reply_still_closes_tcp() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "server close 1002, client silent");
    ws.send(&frame(FIN | 3, b""));
    let got = ws.read_close(&[]);
    assert_eq!(got.map(|c| c.0), Some(1002), "{}", ws.case);
    ws.expect_eof();

    let mut ws = Ws::connect(&server, "server close 1007, client silent");
    ws.send(&text(b"\xff"));
    let got = ws.read_close(&[]);
    assert_eq!(got.map(|c| c.0), Some(1007), "{}", ws.case);
    ws.expect_eof();
}

/// 7.3.1-7.3.6, 7.5.1: close payloads: empty, one byte, code only, code and reason, a reason
/// that makes the frame too long, a reason that is not UTF-8.
#[test]
fn g7_close_payloads() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "7.3.1 close with an empty payload");
    let got = ws.close_with(b"");
    assert!(
        matches!(got, None | Some((1000, _))),
        "7.3.1: server answered with close {got:?}"
    );

    let mut ws = Ws::connect(&server, "7.3.2 close with a 1-byte payload");
    let got = ws.close_with(&[0x03]);
    assert_eq!(got.map(|c| c.0), Some(1002), "7.3.2");

    let mut ws = Ws::connect(&server, "7.3.3 close 1000 without reason");
    let got = ws.close_with(&1000u16.to_be_bytes());
    assert_eq!(got.map(|c| c.0), Some(1000), "7.3.3");

    let mut ws = Ws::connect(&server, "7.3.4 close 1000 with a reason");
    ws.send(&close_frame(1000, b"Hello World!"));
    let got = ws.read_close(&[]);
    ws.expect_eof();
    assert_eq!(got.map(|c| c.0), Some(1000), "7.3.4");

    let mut ws = Ws::connect(
        &server,
        "7.3.5 close 1000 with a 123-byte reason (125-byte payload)",
    );
    ws.send(&close_frame(1000, &[b'*'; 123]));
    let got = ws.read_close(&[]);
    ws.expect_eof();
    assert_eq!(got.map(|c| c.0), Some(1000), "7.3.5");

    let mut ws = Ws::connect(
        &server,
        "7.3.6 close 1000 with a 124-byte reason (126-byte payload)",
    );
    ws.send(&close_frame(1000, &[b'*'; 124]));
    let got = ws.read_close(&[]);
    ws.expect_eof();
    assert_eq!(got.map(|c| c.0), Some(1002), "7.3.6");

    let mut ws = Ws::connect(&server, "7.5.1 close 1000 with a reason that is not UTF-8");
    ws.send(&close_frame(
        1000,
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
    ));
    let got = ws.read_close(&[]);
    ws.expect_eof();
    assert_eq!(got.map(|c| c.0), Some(1007), "7.5.1");
}

/// 7.7.x: valid close codes are answered with a close (echoing the code, or 1000 as Autobahn
/// also accepts).
#[test]
fn g7_valid_close_codes_are_echoed() {
    let server = Server::start(&[]);
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut ws = Ws::connect(&server, &format!("7.7.x close {code}"));
        let got = ws.close_with(&code.to_be_bytes());
        let got = got.map(|c| c.0);
        assert!(
            got == Some(code) || got == Some(1000),
            "7.7.x close {code}: server answered {got:?}"
        );
    }
}

/// 7.9.x, 7.13.x: close codes that must not appear on the wire are a protocol error.
#[test]
fn g7_invalid_close_codes_close_1002() {
    let server = Server::start(&[]);
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut ws = Ws::connect(&server, &format!("7.9.x close {code}"));
        let got = ws.close_with(&code.to_be_bytes());
        assert_eq!(got.map(|c| c.0), Some(1002), "7.9.x close {code}");
    }
}

// ---------------------------------------------------------------------------------------------
// Group 9: limits and throughput
// ---------------------------------------------------------------------------------------------

/// 9.1/9.3: a message of exactly the limit, in one frame and in fragments of 64 B to 64 KiB.
#[test]
fn g9_message_at_the_limit_is_accepted() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.1 64 KiB in one frame");
    ws.send(&text(&join_len("max", LIMIT)));
    ws.expect_joined("max");
    // 1300 bytes: Autobahn 10.1.1's auto-fragmentation size.
    for size in [64, 256, 1024, 1300, 4096, 16384, LIMIT] {
        ws.step(format!(
            "9.3/10.1.1 64 KiB message in fragments of {size} bytes"
        ));
        let room = format!("frag{size}");
        ws.send(&fragments_of(&join_len(&room, LIMIT), size).concat());
        ws.expect_joined(&room);
    }
    ws.close_normally();
}

/// A single frame over the limit closes with 1009; the same for a frame header announcing 1 GiB
/// with no payload behind it (the frame is refused from its header, not buffered).
#[test]
fn g9_frame_over_the_limit_closes_1009() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.x text frame of 65537 bytes");
    let big = text(&join_len("too-big", LIMIT + 1));
    // The server may close before reading it all: write from another thread, ignoring errors.
    let mut writer = ws.stream.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let _ = writer.write_all(&big);
    });
    ws.expect_fail(1009);
    t.join().unwrap();

    let mut ws = Ws::connect(&server, "9.x header of a 1 GiB text frame, no payload");
    let mut header = vec![FIN | TEXT, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&next_mask());
    ws.send(&header);
    ws.expect_fail(1009);

    let mut ws = Ws::connect(&server, "9.x fragment over the limit");
    ws.send(&frame(TEXT, b"{\"type\":"));
    let mut writer = ws.stream.try_clone().unwrap();
    let big = frame(FIN | CONT, &vec![b' '; LIMIT + 1]);
    let t = std::thread::spawn(move || {
        let _ = writer.write_all(&big);
    });
    ws.expect_fail(1009);
    t.join().unwrap();

    // A 64-bit length with the most significant bit set is invalid (RFC 6455 5.2), and huge.
    let mut ws = Ws::connect(&server, "9.x 64-bit length with the top bit set");
    let mut header = vec![FIN | TEXT, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(&next_mask());
    ws.send(&header);
    ws.expect_fail_one_of(&[1002, 1009], &[]);
}

/// A fragmented message over the limit whose frames are each under it is answered with a
/// `too_large` error; the connection stays usable.
#[test]
fn g9_fragmented_message_over_the_limit_is_too_large() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.x fragmented message of 65537 bytes");
    let msg = join_len("over", LIMIT + 1);
    ws.send(&fragments_at(&msg, &[LIMIT / 2, LIMIT]).concat());
    ws.expect_error("too_large");

    ws.step("9.x request after a too_large message");
    ws.send(&text(&join("after-too-large")));
    ws.expect_joined("after-too-large");

    ws.step("9.x fragmented message of 200 KiB with a ping in between");
    let msg = join_len("way-over", 200 * 1024);
    let mut frames = fragments_of(&msg, 50_000);
    frames.insert(2, frame(FIN | PING, b"still alive"));
    ws.send(&frames.concat());
    ws.expect_pong(b"still alive");
    ws.expect_error("too_large");

    ws.step("9.x fragmented message at the limit after too_large messages");
    ws.send(&fragments_at(&join_len("at-limit", LIMIT), &[1000]).concat());
    ws.expect_joined("at-limit");
    ws.close_normally();
}

/// Accepts a reply to one of the bulk requests: `joined`, or `rate_limited` if the server limits
/// this connection's request rate. Returns the room of a `joined`.
fn bulk_reply(ws: &mut Ws) -> Option<String> {
    let v = ws.expect_json("a reply");
    match v["type"].as_str() {
        Some("joined") => Some(v["room"].as_str().expect("room").to_owned()),
        Some("error") if v["code"] == "rate_limited" => None,
        _ => panic!("{}: unexpected reply {v}", ws.case),
    }
}

/// 1000 requests pipelined in one write all get a reply.
#[test]
fn g9_pipelined_requests_all_answered() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.x 1000 requests in one write");
    let n = 1000;
    let batch: Vec<u8> = (0..n)
        .flat_map(|i| text(&join(&format!("pipe{i}"))))
        .collect();
    ws.send(&batch);
    let mut joined = std::collections::HashSet::new();
    let mut limited = 0;
    for _ in 0..n {
        match bulk_reply(&mut ws) {
            Some(room) => assert!(
                joined.insert(room.clone()),
                "{}: two replies for {room}",
                ws.case
            ),
            None => limited += 1,
        }
    }
    assert!(joined.iter().all(|r| r.starts_with("pipe")), "{}", ws.case);
    assert_eq!(joined.len() + limited, n, "{}", ws.case);
    ws.close_normally();
}

/// 9.7-like: 1000 round trips of requests of varying size on one connection.
#[test]
fn g9_thousand_round_trips() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.7 1000 round trips");
    for i in 0..1000usize {
        let room = format!("rt{i}");
        let len = 40 + (i * 61) % 4000;
        ws.send(&text(&join_len(&room, len)));
        if let Some(got) = bulk_reply(&mut ws) {
            assert_eq!(got, room, "{}: round trip {i}", ws.case);
        }
    }
    ws.close_normally();
}

/// 9.5-like: one message written in many small TCP writes.
#[test]
fn g9_message_in_many_small_writes() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.5 small request in 1-byte writes");
    ws.send_chopped(&text(&join_len("bytes", 300)), 1, 1);
    ws.expect_joined("bytes");
    for chop in [64, 128, 256, 1024] {
        ws.step(format!("9.5 64 KiB message in {chop}-byte writes"));
        let room = format!("chop{chop}");
        ws.send_chopped(&text(&join_len(&room, LIMIT)), chop, 32);
        ws.expect_joined(&room);
    }
    ws.close_normally();
}

// ---------------------------------------------------------------------------------------------
// Group 10 and miscellany
// ---------------------------------------------------------------------------------------------

/// A client frame without a mask is a protocol error (RFC 6455 5.1).
#[test]
fn g10_unmasked_client_frames_close_1002() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "10.x unmasked text frame");
    ws.send(&unmasked_frame(FIN | TEXT, &join("unmasked")));
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "10.x unmasked ping after a request");
    ws.send(&[text(&join("masked")), unmasked_frame(FIN | PING, b"x")].concat());
    ws.expect_fail_after(1002, &[("joined", "masked")]);

    let mut ws = Ws::connect(&server, "10.x unmasked close");
    ws.send(&unmasked_frame(FIN | CLOSE, &1000u16.to_be_bytes()));
    ws.expect_fail(1002);
}

/// Frames in the same TCP write as the upgrade request are processed, as are frames split
/// between that write and the next.
#[test]
fn g10_request_in_the_upgrade_write() {
    let server = Server::start(&[]);
    let early = [text(&join("early1")), frame(FIN | PING, b"early ping")].concat();
    let mut ws = Ws::connect_with(
        server.addr,
        "alice",
        "10.x request in the upgrade write",
        &early,
    );
    // The pong may overtake the reply (control frames are not ordered against replies).
    let mut pong = false;
    let mut joined = false;
    for _ in 0..2 {
        match ws.next("a pong and a `joined` reply") {
            Message::Pong(p) if !pong && &p[..] == b"early ping" => pong = true,
            Message::Text(t) if !joined => {
                let v: Value = serde_json::from_slice(&t).expect("JSON reply");
                assert!(
                    v["type"] == "joined" && v["room"] == "early1",
                    "{}: {v}",
                    ws.case
                );
                joined = true;
            }
            other => panic!("{}: unexpected {}", ws.case, describe(&other)),
        }
    }
    ws.close_normally();

    let request = text(&join("early2"));
    let (head, rest) = request.split_at(5);
    let mut ws = Ws::connect_with(
        server.addr,
        "alice",
        "10.x request split over the upgrade write",
        head,
    );
    std::thread::sleep(Duration::from_millis(50));
    ws.send(rest);
    ws.expect_joined("early2");
    ws.close_normally();
}

/// Malformed JSON in a valid text frame is answered with an `error`, not a dropped connection
/// (PROTOCOL.md).
#[test]
fn g10_bad_request_keeps_the_connection() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "bad JSON");
    for bad in [
        &b"not json"[..],
        b"{",
        b"[]",
        b"42",
        b"{\"type\":42}",
        b"{\"type\":\"nope\"}",
        b"{\"room\":\"r\"}",
    ] {
        ws.step(format!("bad request {:?}", String::from_utf8_lossy(bad)));
        ws.send(&text(bad));
        ws.expect_error("bad_request");
    }
    ws.step("request after bad requests");
    ws.send(&text(&join("fine")));
    ws.expect_joined("fine");
    ws.close_normally();
}
