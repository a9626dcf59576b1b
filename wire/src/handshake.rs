//! The HTTP/1.1 request that starts every connection, and the responses to it.
//!
//! A connection begins as HTTP: `GET /ws` with the upgrade headers becomes a WebSocket
//! (RFC 6455 section 4.2), anything else is a plain request (`/`, `/healthz`, `/metrics`).
//! Header parsing is `httparse`; what makes a valid upgrade is checked here.

use base64::Engine;
use sha1::{Digest, Sha1};
use std::borrow::Cow;

/// The largest request head we accept; a longer one is refused with 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A parsed request head. Borrowed from the read buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    headers: Vec<(&'a str, &'a [u8])>,
}

/// Why a request head could not be read. Each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed HTTP (400).
    Malformed(String),
    /// Head larger than [`MAX_REQUEST_HEAD`] (431).
    TooLarge,
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Malformed(_) => 400,
            RequestError::TooLarge => 431,
        }
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete, read more.
/// On success also returns the head's length in bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req
        .parse(buf)
        .map_err(|e| RequestError::Malformed(e.to_string()))?;
    let len = match status {
        httparse::Status::Partial => {
            return if buf.len() > MAX_REQUEST_HEAD {
                Err(RequestError::TooLarge)
            } else {
                Ok(None)
            };
        }
        httparse::Status::Complete(len) => len,
    };
    if len > MAX_REQUEST_HEAD {
        return Err(RequestError::TooLarge);
    }
    if req.version != Some(1) {
        return Err(RequestError::Malformed("HTTP/1.1 required".into()));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let headers = req.headers.iter().map(|h| (h.name, h.value)).collect();
    Ok(Some((
        Request {
            method: req.method.unwrap_or(""),
            path,
            query,
            headers,
        },
        len,
    )))
}

impl<'a> Request<'a> {
    /// The first header with this name (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Every header with this name (case-insensitive), in order, as text.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The permessage-deflate offer this server accepts, if the client made one.
    pub fn deflate_offer(&self) -> Option<crate::deflate::DeflateParams> {
        crate::deflate::negotiate(self.header_values("sec-websocket-extensions"))
    }

    /// Whether the client asks for a WebSocket (`Upgrade: websocket`, `Connection: upgrade`).
    pub fn wants_websocket(&self) -> bool {
        self.header_has_token("upgrade", "websocket")
            && self.header_has_token("connection", "upgrade")
    }

    /// Checks the rest of the opening handshake and returns the `Sec-WebSocket-Accept` value.
    pub fn websocket_accept(&self) -> Result<String, &'static str> {
        if self.method != "GET" {
            return Err("WebSocket upgrade must use GET");
        }
        if self.header("sec-websocket-version") != Some("13") {
            return Err("Sec-WebSocket-Version must be 13");
        }
        let key = self
            .header("sec-websocket-key")
            .ok_or("missing Sec-WebSocket-Key")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| "Sec-WebSocket-Key is not base64")?;
        if decoded.len() != 16 {
            return Err("Sec-WebSocket-Key must encode 16 bytes");
        }
        Ok(accept_key(key))
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<Cow<'a, str>> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
    }
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Decodes `%XX` escapes and `+` (as space). Invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The `101 Switching Protocols` response.
pub fn upgrade_response(accept: &str) -> Vec<u8> {
    upgrade_response_with(accept, None)
}

/// The `101 Switching Protocols` response, naming the extension accepted if there is one.
pub fn upgrade_response_with(
    accept: &str,
    deflate: Option<&crate::deflate::DeflateParams>,
) -> Vec<u8> {
    let extensions = match deflate {
        Some(p) => format!("Sec-WebSocket-Extensions: {}\r\n", p.response_header()),
        None => String::new(),
    };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extensions}\r\n"
    )
    .into_bytes()
}

/// A complete HTTP response that closes the connection afterwards.
pub fn http_response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        body.len()
    )
    .into_bytes();
    if status == 426 {
        out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A client's opening request (for the load generator, tests and benchmarks).
pub fn client_request(host: &str, path_and_query: &str, key: &str) -> String {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_sample_accept_key() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_an_upgrade_with_query() {
        let raw = client_request(
            "localhost",
            "/ws?user=al%2Dice&x=1",
            "dGhlIHNhbXBsZSBub25jZQ==",
        );
        let (req, len) = parse_request(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(len, raw.len());
        assert_eq!(req.path, "/ws");
        assert!(req.wants_websocket());
        assert_eq!(
            req.websocket_accept().unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(req.query_param("user").as_deref(), Some("al-ice"));
        assert_eq!(req.query_param("x").as_deref(), Some("1"));
        assert_eq!(req.query_param("nope"), None);
    }

    #[test]
    fn incomplete_and_bad_requests() {
        assert!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        assert_eq!(parse_request(b"GARBAGE\r\n\r\n").unwrap_err().status(), 400);
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(parse_request(huge.as_bytes()).unwrap_err().status(), 431);
        let v12 = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n";
        let (req, _) = parse_request(v12.as_bytes()).unwrap().unwrap();
        assert!(
            req.wants_websocket(),
            "Connection header with several tokens"
        );
        assert!(req.websocket_accept().is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
    }
}
