//! Socket.IO 4 as its JavaScript client speaks it, over a plain WebSocket (no long-polling
//! first: `transport=websocket`): Engine.IO v4 packets (`0` open, `2` ping, `3` pong, `4`
//! message) carrying Socket.IO v5 packets (`0` connect, `2` event, `3` ack, `4` connect error).
//!
//! The events are those of `peers/socketio/server.js`: `join {room}` and `send {room, cid,
//! body}`, each with an ack (`42<id>[...]` answered `43<id>[...]`), and `msg {room, cid, body}`
//! to every member of the room, the sender included (`io.to(room).emit`). Acks carry the room
//! (and the cid for a send), so the ack id is only echoed, never looked up.

use super::{delivered, reply, Incoming};
use crate::client::{self, Kind};
use crate::json::{self, Val};
use bytes::{BufMut, Bytes, BytesMut};
use chat_wire::protocol::put_json_str;
use tokio_tungstenite::tungstenite::Message;

/// The Engine.IO endpoint, WebSocket transport from the start.
pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// `40`: connect to the main namespace (sent after the server's open packet `0{...}`).
pub fn connect_packet() -> Message {
    Message::text("40")
}

/// The handshake is done at the server's `40{"sid":...}`; `44{...}` is a refusal.
pub fn handshake_step(b: &[u8]) -> Result<bool, String> {
    if b.starts_with(b"40") {
        return Ok(true);
    }
    if b.starts_with(b"44") {
        return Err(format!(
            "socket.io connect refused: {}",
            String::from_utf8_lossy(b)
        ));
    }
    Ok(false)
}

/// `420["join",{"room":R}]`.
pub fn join(room: &str) -> Message {
    let mut b = BytesMut::with_capacity(room.len() + 32);
    b.put_slice(br#"420["join",{"room":"#);
    put_json_str(&mut b, room);
    b.put_slice(b"}]");
    client::text(b.freeze())
}

/// `421["send",{"room":R,"cid":"` (the encoder adds cid, body and `}]`).
pub fn send_head(room: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(br#"421["send",{"room":"#);
    put_json_str(&mut b, room);
    b.put_slice(br#","cid":""#);
    b.freeze()
}

/// Reads a server packet: `42["msg",{..}]` is a delivery, `43<id>[{..}]` an ack (with a cid:
/// a send's, without: a join's), `2` a ping to answer with `3`.
pub fn parse(b: &[u8]) -> Option<Incoming<'_>> {
    match b {
        b"2" => return Some(Incoming::Ping(Message::text("3"))),
        [b'4', b'2', rest @ ..] => {
            // ["msg",{...}]
            let rest = rest.strip_prefix(b"[")?;
            let (event, next) = json::string(rest, 0)?;
            let i = json::ws(rest, next);
            let obj = rest[i..].strip_prefix(b",")?;
            let (room, cid, _) = fields(obj)?;
            let m = match event {
                b"msg" => delivered(Kind::Msg, room, cid)?,
                _ => reply(Kind::Other, b"", b""),
            };
            return Some(Incoming::Server(m));
        }
        [b'4', b'3', rest @ ..] => {
            let start = rest.iter().position(|&c| c == b'[')?;
            if !rest[..start].iter().all(u8::is_ascii_digit) {
                return None;
            }
            let (room, cid, error) = fields(&rest[start + 1..])?;
            let m = if !error.is_empty() {
                let mut m = reply(Kind::Error, room, error);
                m.cid = cid;
                m
            } else if cid.is_empty() {
                reply(Kind::Joined, room, b"")
            } else {
                delivered(Kind::Ack, room, cid)?
            };
            return Some(Incoming::Server(m));
        }
        [b'4', b'4', ..] => return Some(Incoming::Server(reply(Kind::Error, b"", b"refused"))),
        _ => {}
    }
    // Open (`0{..}`), connect (`40{..}`), pong, noop: nothing for the engine.
    matches!(b.first(), Some(b'0'..=b'6')).then(|| Incoming::Server(reply(Kind::Other, b"", b"")))
}

/// `room`, `cid` and `error` of an event's or ack's object.
fn fields(obj: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (mut room, mut cid, mut error): (&[u8], &[u8], &[u8]) = (b"", b"", b"");
    json::walk(obj, |k, v| match (k, v) {
        (b"room", Val::Str(v)) => room = v,
        (b"cid", Val::Str(v)) => cid = v,
        (b"error", Val::Str(v)) => error = v,
        _ => {}
    })?;
    Some((room, cid, error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::SendEncoder;
    use crate::proto::{parse_server, Protocol};

    #[test]
    fn encodes_events_with_acks() {
        assert_eq!(
            join("r1").to_text().unwrap(),
            r#"420["join",{"room":"r1"}]"#
        );
        let mut enc = SendEncoder::with_suffix(3, b"}]");
        let m = enc.encode(&send_head("r1"), 2, 7, 99);
        assert_eq!(
            m.to_text().unwrap(),
            r#"421["send",{"room":"r1","cid":"2-7-99","body":"abc"}]"#
        );
        // What a Socket.IO server decodes: the event name, then the object.
        let v: serde_json::Value = serde_json::from_str(&m.to_text().unwrap()[3..]).unwrap();
        assert_eq!(
            (v[0].as_str(), v[1]["cid"].as_str()),
            (Some("send"), Some("2-7-99"))
        );
    }

    fn server(b: &[u8]) -> crate::client::ServerMsg<'_> {
        parse_server(Protocol::Socketio, b)
    }

    #[test]
    fn parses_server_packets() {
        let m = server(br#"42["msg",{"room":"lg-r1","cid":"2-7-99","body":"abc"}]"#);
        assert_eq!(
            (m.kind, m.room, m.seq, m.cid),
            (Kind::Msg, &b"lg-r1"[..], 8, &b"2-7-99"[..])
        );
        let a = server(br#"4312[{"room":"lg-r1","cid":"2-7-99"}]"#);
        assert_eq!((a.kind, a.room, a.seq), (Kind::Ack, &b"lg-r1"[..], 8));
        let j = server(br#"430[{"room":"lg-r1"}]"#);
        assert_eq!((j.kind, j.room), (Kind::Joined, &b"lg-r1"[..]));
        let e = server(br#"431[{"room":"r","cid":"1-1-1","error":"not_member"}]"#);
        assert_eq!(
            (e.kind, e.code, e.cid),
            (Kind::Error, &b"not_member"[..], &b"1-1-1"[..])
        );
        assert_eq!(parse(b"2"), Some(Incoming::Ping(Message::text("3"))));
        assert_eq!(
            server(br#"0{"sid":"x","pingInterval":25000}"#).kind,
            Kind::Other
        );
        assert_eq!(server(br#"42["other",{}]"#).kind, Kind::Other);
        assert_eq!(server(br#"44{"message":"no"}"#).kind, Kind::Error);
        // A delivery whose cid is not ours cannot be placed in a room's sequence.
        assert_eq!(parse(br#"42["msg",{"room":"r","cid":"x"}]"#), None);
        assert_eq!(parse(br#"43a[{"room":"r"}]"#), None);
        assert_eq!(parse(b"{}"), None);
        assert!(handshake_step(br#"40{"sid":"abc"}"#).unwrap());
        assert!(!handshake_step(b"2").unwrap());
        assert!(handshake_step(br#"44{"message":"x"}"#).is_err());
    }
}
