//! The Pusher Channels protocol (protocol 7), as a Pusher application uses it: clients
//! subscribe to public channels over the WebSocket (`pusher:subscribe`), and messages are
//! published by the backend through the HTTP events API (`POST /apps/{id}/events`, signed with
//! the app secret), which delivers them to every subscriber, the sender's own connection
//! included. That is what Pusher's docs recommend for chat: client events need private channels
//! with an auth endpoint and are never echoed to their sender. The load generator plays that
//! backend for each sender (a connection per request, see [`super::http_publish`]).
//!
//! An event's `data` is `"<cid> <body>"`: the cid gives the latency and the room's seq.

use super::{delivered, reply, Incoming};
use crate::client::{self, Kind};
use crate::json::{self, Val};
use bytes::{BufMut, Bytes, BytesMut};
use chat_wire::protocol::put_json_str;
use hmac::{KeyInit, Mac};
use md5::Digest;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

/// A Pusher app's credentials: `id:key:secret` on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
}

impl Default for App {
    /// The app `peers/peer.sh` configures Sockudo with.
    fn default() -> App {
        App {
            id: "chat-bench".into(),
            key: "chat-bench-key".into(),
            secret: "chat-bench-secret".into(),
        }
    }
}

impl App {
    pub fn parse(s: &str) -> Result<App, String> {
        let mut p = s.splitn(3, ':');
        match (p.next(), p.next(), p.next()) {
            (Some(id), Some(key), Some(secret)) if !id.is_empty() && !key.is_empty() => Ok(App {
                id: id.into(),
                key: key.into(),
                secret: secret.into(),
            }),
            _ => Err(format!("--pusher-app wants ID:KEY:SECRET, not {s}")),
        }
    }
}

/// The WebSocket endpoint of `app`.
pub fn path(app: &App) -> String {
    format!("/app/{}?protocol=7&client=loadgen&version=1.0", app.key)
}

/// The handshake is done at `pusher:connection_established`.
pub fn handshake_step(b: &[u8]) -> Result<bool, String> {
    let mut event: &[u8] = b"";
    json::walk(b, |k, v| {
        if let (b"event", Val::Str(v)) = (k, v) {
            event = v;
        }
    });
    match event {
        b"pusher:connection_established" => Ok(true),
        b"pusher:error" => Err(format!("pusher: {}", String::from_utf8_lossy(b))),
        _ => Ok(false),
    }
}

/// `{"event":"pusher:subscribe","data":{"channel":R}}`.
pub fn subscribe(room: &str) -> Message {
    let mut b = BytesMut::with_capacity(room.len() + 56);
    b.put_slice(br#"{"event":"pusher:subscribe","data":{"channel":"#);
    put_json_str(&mut b, room);
    b.put_slice(b"}}");
    client::text(b.freeze())
}

/// The start of an event's JSON for the HTTP API, up to the cid in `data`.
pub fn event_head(room: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(br#"{"name":"msg","channel":"#);
    put_json_str(&mut b, room);
    b.put_slice(br#","data":""#);
    b.freeze()
}

/// Reads a server event: `msg` on a channel is a delivery, `subscription_succeeded` a join.
pub fn parse(b: &[u8]) -> Option<Incoming<'_>> {
    let (mut event, mut channel, mut data): (&[u8], &[u8], &[u8]) = (b"", b"", b"");
    json::walk(b, |k, v| match (k, v) {
        (b"event", Val::Str(v)) => event = v,
        (b"channel", Val::Str(v)) => channel = v,
        (b"data", Val::Str(v) | Val::Raw(v)) => data = v,
        _ => {}
    })?;
    let m = match event {
        b"msg" => {
            let cid = data.split(|&c| c == b' ').next()?;
            delivered(Kind::Msg, channel, cid)?
        }
        b"pusher_internal:subscription_succeeded" => reply(Kind::Joined, channel, b""),
        b"pusher:error" | b"pusher:subscription_error" => {
            reply(Kind::Error, channel, b"pusher_error")
        }
        b"pusher:ping" => {
            return Some(Incoming::Ping(Message::text(
                r#"{"event":"pusher:pong","data":{}}"#,
            )))
        }
        _ => reply(Kind::Other, b"", b""),
    };
    Some(Incoming::Server(m))
}

/// Makes the signed HTTP requests of one sender.
pub struct Publisher {
    app: App,
    host: String,
    tail: Bytes,
    body: BytesMut,
    out: BytesMut,
}

impl Publisher {
    pub fn new(body: usize, app: &App, authority: &str) -> Publisher {
        let mut tail = BytesMut::with_capacity(body + 3);
        tail.put_u8(b' ');
        tail.extend(client::body_bytes(body));
        tail.put_slice(br#""}"#);
        Publisher {
            app: app.clone(),
            host: authority.to_string(),
            tail: tail.freeze(),
            body: BytesMut::with_capacity(1024),
            out: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The whole `POST /apps/{id}/events` request for message `k` of `role`.
    pub fn request(&mut self, head: &[u8], role: u32, k: u64, intended_ns: u64) -> Bytes {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.request_at(head, role, k, intended_ns, now)
    }

    fn request_at(&mut self, head: &[u8], role: u32, k: u64, t: u64, unix: u64) -> Bytes {
        self.body.clear();
        self.body.put_slice(head);
        crate::schedule::write_cid(&mut self.body, role, k, t);
        self.body.put_slice(&self.tail);
        let path = format!("/apps/{}/events", self.app.id);
        let query = format!(
            "auth_key={}&auth_timestamp={unix}&auth_version=1.0&body_md5={}",
            self.app.key,
            hex(&md5::Md5::digest(&self.body))
        );
        let signature = sign(&self.app.secret, &format!("POST\n{path}\n{query}"));
        let o = &mut self.out;
        o.put_slice(
            format!("POST {path}?{query}&auth_signature={signature} HTTP/1.1\r\n").as_bytes(),
        );
        o.put_slice(
            format!("Host: {}\r\nContent-Type: application/json\r\n", self.host).as_bytes(),
        );
        o.put_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        o.put_slice(&self.body);
        o.split().freeze()
    }
}

/// The room and cid of a request made by [`Publisher`] (to match its response).
pub fn request_ids(req: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = &req[req.windows(4).position(|w| w == b"\r\n\r\n")? + 4..];
    let (mut channel, mut data): (&[u8], &[u8]) = (b"", b"");
    json::walk(body, |k, v| match (k, v) {
        (b"channel", Val::Str(v)) => channel = v,
        (b"data", Val::Str(v)) => data = v,
        _ => {}
    })?;
    Some((channel, data.split(|&c| c == b' ').next()?))
}

/// Pusher's `auth_signature`: HMAC-SHA256 of the string to sign, in lowercase hex.
fn sign(secret: &str, string_to_sign: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(string_to_sign.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{parse_server, Protocol};

    fn server(b: &[u8]) -> crate::client::ServerMsg<'_> {
        parse_server(Protocol::Pusher, b)
    }

    #[test]
    fn parses_server_events() {
        let m = server(br#"{"event":"msg","channel":"lg-r2","data":"4-9-123 abcdef"}"#);
        assert_eq!(
            (m.kind, m.room, m.seq, m.cid),
            (Kind::Msg, &b"lg-r2"[..], 10, &b"4-9-123"[..])
        );
        let j = server(
            br#"{"event":"pusher_internal:subscription_succeeded","channel":"lg-r2","data":"{}"}"#,
        );
        assert_eq!((j.kind, j.room), (Kind::Joined, &b"lg-r2"[..]));
        let e = server(br#"{"event":"pusher:error","data":{"code":4001,"message":"x"}}"#);
        assert_eq!(e.kind, Kind::Error);
        assert!(matches!(
            parse(br#"{"event":"pusher:ping","data":{}}"#),
            Some(Incoming::Ping(_))
        ));
        assert_eq!(
            parse(br#"{"event":"msg","channel":"r","data":"nope x"}"#),
            None
        );
        assert!(handshake_step(
            br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\"}"}"#
        )
        .unwrap());
        assert!(handshake_step(br#"{"event":"pusher:error","data":{"code":4001}}"#).is_err());
        assert!(!handshake_step(br#"{"event":"other"}"#).unwrap());
        assert_eq!(App::parse("a:b:c").unwrap().secret, "c");
        assert!(App::parse("a:b").is_err());
    }

    /// The signature of Pusher's documented example (pusher.com/docs/channels/library_auth_reference/rest-api):
    /// app 3, key 278d425bdf160c739803, secret 7ad3773142a6692b25b8.
    #[test]
    fn signs_like_the_reference() {
        let s = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
        assert_eq!(
            sign("7ad3773142a6692b25b8", s),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        assert_eq!(
            hex(&md5::Md5::digest(
                br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#
            )),
            "ec365a775a4cd0599faeb73354201b6f"
        );
    }

    #[test]
    fn builds_signed_requests() {
        let app = App::default();
        let mut p = Publisher::new(4, &app, "127.0.0.1:6001");
        let req = p.request_at(&event_head("lg-r1"), 2, 5, 77, 1_700_000_000);
        let text = std::str::from_utf8(&req).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            body,
            r#"{"name":"msg","channel":"lg-r1","data":"2-5-77 abcd"}"#
        );
        assert!(head.starts_with("POST /apps/chat-bench/events?auth_key=chat-bench-key&auth_timestamp=1700000000&auth_version=1.0&body_md5="));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let md5 = hex(&md5::Md5::digest(body.as_bytes()));
        let query = format!(
            "auth_key=chat-bench-key&auth_timestamp=1700000000&auth_version=1.0&body_md5={md5}"
        );
        let sig = sign(
            "chat-bench-secret",
            &format!("POST\n/apps/chat-bench/events\n{query}"),
        );
        assert!(head.contains(&format!("{query}&auth_signature={sig} HTTP/1.1")));
        assert_eq!(request_ids(&req), Some((&b"lg-r1"[..], &b"2-5-77"[..])));
    }
}
