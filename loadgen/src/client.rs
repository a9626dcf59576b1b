//! One client connection, on `tokio-tungstenite`: connecting from a chosen loopback source
//! address with buffers sized for many connections, the requests of PROTOCOL.md encoded
//! without per-message allocation, and a small parser that picks the few fields the load
//! generator needs out of a server message without building a JSON tree (chat-wire's scanner).

use bytes::{BufMut, Bytes, BytesMut};
use chat_wire::protocol::put_json_str;
use chat_wire::protocol::scan::{self, Val};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// A server node: its URL, `host:port` and resolved address.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub authority: String,
    pub addr: SocketAddr,
}

impl Target {
    /// `ws://host:port` (a trailing `/` or path is ignored: the endpoint is `/ws`).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or_default().to_string();
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("{url}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: no address"))?;
        Ok(Target {
            url: url.to_string(),
            authority,
            addr,
        })
    }

    /// The node's `/metrics` URL (same host and port as its WebSocket).
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.authority)
    }
}

/// Source address number `i` of `n`: 127.0.0.1, 127.0.0.2, ... (None: let the kernel choose).
pub fn source_ip(target: &SocketAddr, i: usize, n: usize) -> Option<IpAddr> {
    if n <= 1 || !target.ip().is_loopback() || !target.is_ipv4() {
        return None;
    }
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 1));
    Some(IpAddr::V4(Ipv4Addr::from(base + (i % n) as u32)))
}

/// Raises the open-files limit to its hard maximum (every connection is a file descriptor);
/// returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                l = want;
            }
        }
    }
    l.rlim_cur
}

/// Buffer settings of every connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnConfig {
    pub read_buffer: usize,
    pub write_buffer: usize,
    pub socket_buffer: usize,
}

impl ConnConfig {
    /// The buffers a scenario asks for.
    pub fn of(s: &crate::scenario::Scenario) -> ConnConfig {
        ConnConfig {
            read_buffer: s.read_buffer,
            write_buffer: s.write_buffer,
            socket_buffer: s.socket_buffer,
        }
    }

    fn ws(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .write_buffer_size(self.write_buffer)
            .max_write_buffer_size(usize::MAX)
    }
}

/// The chat protocol's endpoint for `user`.
pub fn chat_path(user: &str) -> String {
    format!("/ws?user={user}")
}

/// Opens the WebSocket at `path` (e.g. [`chat_path`]) on `target`, from `source` when given.
pub async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    path: &str,
    cfg: ConnConfig,
) -> Result<Ws, String> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if cfg.socket_buffer > 0 {
        let _ = socket.set_send_buffer_size(cfg.socket_buffer as u32);
        let _ = socket.set_recv_buffer_size(cfg.socket_buffer as u32);
    }
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let url = format!("ws://{}{path}", target.authority);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(cfg.ws()))
        .await
        .map_err(|e| format!("handshake {}: {e}", target.authority))?;
    Ok(ws)
}

/// `{"type":"join","room":R}`.
pub fn join(room: &str) -> Message {
    room_request("join", room, None)
}

/// `{"type":T,"room":R}`, plus `,"seq":S` when given (`read`): the requests that name only a
/// room (`join`, `presence`, `typing`, `read`).
pub fn room_request(kind: &str, room: &str, seq: Option<u64>) -> Message {
    let mut b = BytesMut::with_capacity(room.len() + 48);
    b.put_slice(b"{\"type\":\"");
    b.put_slice(kind.as_bytes());
    b.put_slice(b"\",\"room\":");
    put_json_str(&mut b, room);
    if let Some(s) = seq {
        b.put_slice(b",\"seq\":");
        b.put_slice(s.to_string().as_bytes());
    }
    b.put_u8(b'}');
    text(b.freeze())
}

/// `{"type":"resume","room":R,"after":N}`.
pub fn resume(room: &str, after: u64) -> Message {
    let mut b = BytesMut::with_capacity(room.len() + 48);
    b.put_slice(br#"{"type":"resume","room":"#);
    put_json_str(&mut b, room);
    b.put_slice(br#","after":"#);
    b.put_slice(after.to_string().as_bytes());
    b.put_u8(b'}');
    text(b.freeze())
}

/// The fixed start of a `send` to `room`, up to the cid's value.
pub fn send_head(room: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(br#"{"type":"send","room":"#);
    put_json_str(&mut b, room);
    b.put_slice(br#","cid":""#);
    b.freeze()
}

/// The fixed start of a `dm` to `user`, up to the cid's value.
pub fn dm_head(user: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(br#"{"type":"dm","to":"#);
    put_json_str(&mut b, user);
    b.put_slice(br#","cid":""#);
    b.freeze()
}

/// Encodes sends into one reused buffer: each message is split off it, so after warm-up no
/// send allocates (tungstenite copies the payload into its frame buffer and drops ours).
pub struct SendEncoder {
    buf: BytesMut,
    tail: Bytes,
}

impl SendEncoder {
    /// Bodies of `body` bytes of printable ASCII.
    pub fn new(body: usize) -> SendEncoder {
        SendEncoder::with_suffix(body, b"}")
    }

    /// The same, with `suffix` closing the message after the body's string (Socket.IO wraps
    /// the object in an array: `}]`).
    pub fn with_suffix(body: usize, suffix: &[u8]) -> SendEncoder {
        let mut tail = BytesMut::with_capacity(body + 12 + suffix.len());
        tail.put_slice(br#"","body":""#);
        tail.extend(body_bytes(body));
        tail.put_u8(b'"');
        tail.put_slice(suffix);
        SendEncoder {
            buf: BytesMut::with_capacity(64 * 1024),
            tail: tail.freeze(),
        }
    }

    /// `head` (from [`send_head`] or [`dm_head`]) + cid + body.
    #[inline]
    pub fn encode(&mut self, head: &[u8], role: u32, k: u64, intended_ns: u64) -> Message {
        let need = head.len() + 64 + self.tail.len();
        if self.buf.capacity() < need {
            self.buf.reserve((64 * 1024).max(need));
        }
        self.buf.put_slice(head);
        crate::schedule::write_cid(&mut self.buf, role, k, intended_ns);
        self.buf.put_slice(&self.tail);
        text(self.buf.split().freeze())
    }
}

/// `n` bytes of printable ASCII: the body of every message (no JSON escaping needed).
pub fn body_bytes(n: usize) -> impl Iterator<Item = u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8)
}

pub(crate) fn text(b: Bytes) -> Message {
    Message::Text(Utf8Bytes::try_from(b).expect("requests are built from UTF-8 pieces"))
}

/// The kinds of server message the load generator cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Msg,
    Ack,
    Joined,
    Resumed,
    Error,
    Other,
}

/// The fields of a server message the load generator reads; strings are raw (still escaped)
/// slices of the frame, which is fine for the names and cids the load generator makes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerMsg<'a> {
    pub kind: Kind,
    pub room: &'a [u8],
    pub seq: u64,
    pub cid: &'a [u8],
    pub code: &'a [u8],
    /// `complete` of a `resumed` reply.
    pub complete: bool,
}

/// Reads the top-level `type`, `room`, `seq`, `cid`, `code` and `complete` of a JSON object; every other
/// value (nested ones included) is skipped. `None` for anything that is not a JSON object.
pub fn parse(b: &[u8]) -> Option<ServerMsg<'_>> {
    let mut m = ServerMsg {
        kind: Kind::Other,
        room: b"",
        seq: 0,
        cid: b"",
        code: b"",
        complete: false,
    };
    let mut bad_seq = false;
    scan::walk(b, |key, v| match (key, v) {
        (b"type", Val::Str(v)) => {
            m.kind = match v {
                b"msg" => Kind::Msg,
                b"ack" => Kind::Ack,
                b"joined" => Kind::Joined,
                b"resumed" => Kind::Resumed,
                b"error" => Kind::Error,
                _ => Kind::Other,
            }
        }
        (b"room", Val::Str(v)) => m.room = v,
        (b"cid", Val::Str(v)) => m.cid = v,
        (b"code", Val::Str(v)) => m.code = v,
        (b"seq", Val::Raw(v)) => match crate::schedule::parse_u64(v) {
            Some(s) => m.seq = s,
            None => bad_seq = true,
        },
        (b"complete", Val::Raw(v)) => m.complete = v == b"true",
        _ => {}
    })?;
    (!bad_seq).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_messages() {
        let m = parse(br#"{"type":"msg","room":"lg-a0-r1","seq":42,"id":"a-0-1","from":"u","ts":1700000000000,"body":"he said \"}\"","cid":"1-2-3"}"#).unwrap();
        assert_eq!(
            (m.kind, m.room, m.seq, m.cid),
            (Kind::Msg, &b"lg-a0-r1"[..], 42, &b"1-2-3"[..])
        );
        let a = parse(br#"{"type":"ack","cid":"0-7-99","room":"r","seq":3,"id":"x"}"#).unwrap();
        assert_eq!((a.kind, a.seq, a.cid), (Kind::Ack, 3, &b"0-7-99"[..]));
        let e = parse(
            br#"{ "type" : "error", "code":"rate_limited","message":"slow down","cid":"1-1-1" }"#,
        )
        .unwrap();
        assert_eq!(
            (e.kind, e.code, e.cid),
            (Kind::Error, &b"rate_limited"[..], &b"1-1-1"[..])
        );
        let h = parse(
            br#"{"type":"history","room":"r","messages":[{"type":"msg","seq":9,"body":"]}"}]}"#,
        )
        .unwrap();
        assert_eq!((h.kind, h.seq), (Kind::Other, 0));
        let j = parse(br#"{"type":"joined","room":"r","seq":0}"#).unwrap();
        assert_eq!(j.kind, Kind::Joined);
        let r = parse(br#"{"type":"resumed","room":"r","seq":7,"complete":true}"#).unwrap();
        assert_eq!((r.kind, r.seq, r.complete), (Kind::Resumed, 7, true));
        let r = parse(br#"{"type":"resumed","room":"r","seq":7,"complete":false}"#).unwrap();
        assert!(!r.complete);
        assert_eq!(parse(b"[1]"), None);
        assert_eq!(parse(br#"{"type":"msg""#), None);
        assert_eq!(parse(br#"{"seq":-1}"#), None);
    }

    #[test]
    fn encodes_requests() {
        let mut enc = SendEncoder::new(5);
        let m = enc.encode(&send_head("room-1"), 3, 4, 5);
        assert_eq!(
            m.to_text().unwrap(),
            r#"{"type":"send","room":"room-1","cid":"3-4-5","body":"abcde"}"#
        );
        let m = enc.encode(&dm_head("bob"), 0, 1, 2);
        let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["to"].as_str()),
            (Some("dm"), Some("bob"))
        );
        assert_eq!(
            join("x").to_text().unwrap(),
            r#"{"type":"join","room":"x"}"#
        );
        assert_eq!(
            room_request("read", "x", Some(7)).to_text().unwrap(),
            r#"{"type":"read","room":"x","seq":7}"#
        );
        assert_eq!(
            resume("x", 42).to_text().unwrap(),
            r#"{"type":"resume","room":"x","after":42}"#
        );
    }

    #[test]
    fn source_ips_only_for_loopback() {
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(source_ip(&lo, 0, 1), None);
        assert_eq!(source_ip(&lo, 5, 4), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(source_ip(&"10.0.0.1:80".parse().unwrap(), 5, 4), None);
    }
}
