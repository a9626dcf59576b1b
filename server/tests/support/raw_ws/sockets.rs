//! The plain-HTTP half of the raw-TCP test client ([`super`]): sockets with timeouts, reading
//! what is available, response heads, and whole requests on a fresh connection (the opening
//! handshake tests and the upgrade of [`super::Ws`]).

use super::TIMEOUT;
use bytes::BytesMut;
use chat_wire::frame::FrameError;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// A connection to `addr` with read and write timeouts ([`TIMEOUT`]) and `TCP_NODELAY`.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to the server");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

#[derive(Debug)]
pub enum ReadError {
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
pub fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(), ReadError> {
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
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
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
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Reads a response head; bytes after it stay in `buf`.
pub fn read_head(stream: &mut TcpStream, buf: &mut BytesMut, what: &str) -> HttpResponse {
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
pub fn http(addr: SocketAddr, request: &str) -> HttpResponse {
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
pub fn http_request(target: &str, headers: &[&str]) -> String {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// The RFC 6455 section 1.3 sample key, as a request header.
pub const VALID_KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
/// The only version the server speaks, as a request header.
pub const VERSION_13: &str = "Sec-WebSocket-Version: 13";

/// An opening-handshake request for `target`: `Upgrade: websocket` and `Connection: Upgrade`,
/// then `headers` (the key and version a case sends, or leaves out).
pub fn upgrade_request(target: &str, headers: &[&str]) -> String {
    let mut all = vec!["Upgrade: websocket", "Connection: Upgrade"];
    all.extend_from_slice(headers);
    http_request(target, &all)
}
