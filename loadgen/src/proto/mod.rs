//! The wire protocols the load generator speaks, so that one scenario (rooms, members, senders,
//! rate, body, node layout) drives our server and the peers it is compared with
//! (`peers/README.md`): `chat` (PROTOCOL.md: ours, the naive Rust server, Node `ws`), `socketio`
//! (Engine.IO v4 / Socket.IO v5 over a plain WebSocket) and `pusher` (Pusher Channels: subscribe
//! over the WebSocket, publish with the signed HTTP events API, as a Pusher backend does).
//!
//! The engine sees every protocol through the same few calls: the WebSocket path, a handshake,
//! the join request, a send encoder, and a parser that turns a server frame into the
//! [`ServerMsg`] of the chat protocol. Where a protocol has no room sequence (Socket.IO, Pusher)
//! the parser derives it from the cid the load generator put in the payload: with one sender
//! per room (checked by [`Protocol::validate`]) message `k` of a sender is the room's seq
//! `k + 1`, so the same [`crate::verify::Stream`] checks loss, duplication and order.

pub mod http_publish;
pub mod pusher;
pub mod socketio;

use crate::client::{self, Kind, SendEncoder, ServerMsg, Ws};
use crate::scenario::Scenario;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// PROTOCOL.md: join / send / msg / ack with the server's room seq.
    #[default]
    Chat,
    /// Socket.IO 4 (Engine.IO v4 over a WebSocket): `join` and `send` events with acks.
    Socketio,
    /// Pusher Channels: public channels, events published over the HTTP API.
    Pusher,
}

/// What a server frame means to the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Server(ServerMsg<'a>),
    /// A keep-alive the client must answer with this frame.
    Ping(Message),
}

impl Protocol {
    /// The WebSocket path (with query) a connection of `user` opens.
    pub fn path(&self, user: &str, app: &pusher::App) -> String {
        match self {
            Protocol::Chat => client::chat_path(user),
            Protocol::Socketio => socketio::PATH.to_string(),
            Protocol::Pusher => pusher::path(app),
        }
    }

    /// What follows the upgrade before the connection can join: Socket.IO's open packet and
    /// namespace connect, Pusher's `connection_established`.
    pub async fn handshake(&self, ws: &mut Ws) -> Result<(), String> {
        let expect: fn(&[u8]) -> Result<bool, String> = match self {
            Protocol::Chat => return Ok(()),
            Protocol::Socketio => socketio::handshake_step,
            Protocol::Pusher => pusher::handshake_step,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let frame = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| "handshake: no reply within 30 s".to_string())?;
            match frame {
                Some(Ok(Message::Text(t))) => {
                    if *self == Protocol::Socketio && t.as_bytes().first() == Some(&b'0') {
                        ws.send(socketio::connect_packet())
                            .await
                            .map_err(|e| format!("handshake: {e}"))?;
                        continue;
                    }
                    if expect(t.as_bytes())? {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("handshake: {e}")),
                None => return Err("handshake: closed".into()),
            }
        }
    }

    /// The request that makes the connection a member of `room`.
    pub fn join(&self, room: &str) -> Message {
        match self {
            Protocol::Chat => client::join(room),
            Protocol::Socketio => socketio::join(room),
            Protocol::Pusher => pusher::subscribe(room),
        }
    }

    /// The fixed start of a message to `room`, up to the cid.
    pub fn send_head(&self, room: &str) -> Bytes {
        match self {
            Protocol::Chat => client::send_head(room),
            Protocol::Socketio => socketio::send_head(room),
            Protocol::Pusher => pusher::event_head(room),
        }
    }

    /// The encoder of a sending connection's messages.
    pub fn encoder(&self, body: usize, app: &pusher::App, authority: &str) -> Encoder {
        match self {
            Protocol::Chat => Encoder::Ws(SendEncoder::new(body)),
            Protocol::Socketio => Encoder::Ws(SendEncoder::with_suffix(body, b"}]")),
            Protocol::Pusher => Encoder::Pusher(pusher::Publisher::new(body, app, authority)),
        }
    }

    /// Reads a server frame. `None`: not a frame of this protocol (counted as unparsed).
    pub fn parse<'a>(&self, b: &'a [u8]) -> Option<Incoming<'a>> {
        match self {
            Protocol::Chat => client::parse(b).map(Incoming::Server),
            Protocol::Socketio => socketio::parse(b),
            Protocol::Pusher => pusher::parse(b),
        }
    }

    /// Whether sends go over the HTTP API instead of the connection (Pusher).
    pub fn publishes_over_http(&self) -> bool {
        *self == Protocol::Pusher
    }

    /// Whether every connection needs a write side to answer keep-alives while the run lasts
    /// (Socket.IO pings every 25 s; Pusher only after 120 s of silence, longer than a run, and
    /// our server never asks a busy client).
    pub fn answers_pings(&self) -> bool {
        *self == Protocol::Socketio
    }

    /// What the protocols without a room seq cannot support.
    pub fn validate(&self, s: &Scenario) -> Result<(), String> {
        if *self == Protocol::Chat {
            return Ok(());
        }
        let name = format!("{self:?}").to_lowercase();
        if s.senders > s.rooms {
            return Err(format!(
                "--protocol {name}: at most one sender per room ({} senders, {} rooms): the \
                 room's seq is its sender's message number",
                s.senders, s.rooms
            ));
        }
        if s.dm_share > 0.0 || s.reconnect || s.stalled > 0 || s.postgres.is_some() {
            return Err(format!(
                "--protocol {name}: no DMs, --reconnect, --stalled or --postgres (chat protocol only)"
            ));
        }
        Ok(())
    }
}

/// A sending connection's encoder: a WebSocket frame per message, or a signed HTTP request.
pub enum Encoder {
    Ws(SendEncoder),
    Pusher(pusher::Publisher),
}

impl Encoder {
    /// Message `k` of `role`, intended at `intended_ns`, after `head` ([`Protocol::send_head`]).
    /// A Pusher message is the whole HTTP request, as a binary message for the HTTP writer.
    #[inline]
    pub fn encode(&mut self, head: &[u8], role: u32, k: u64, intended_ns: u64) -> Message {
        match self {
            Encoder::Ws(e) => e.encode(head, role, k, intended_ns),
            Encoder::Pusher(p) => Message::Binary(p.request(head, role, k, intended_ns)),
        }
    }
}

/// A delivered message of a protocol without room seqs: the room's seq is the sender's message
/// number + 1 (from the cid); `None` when the cid is not one of ours.
pub(crate) fn delivered<'a>(kind: Kind, room: &'a [u8], cid: &'a [u8]) -> Option<ServerMsg<'a>> {
    let (_, k, _) = crate::schedule::parse_cid(cid)?;
    Some(ServerMsg {
        kind,
        room,
        seq: k + 1,
        cid,
        code: b"",
        complete: false,
    })
}

/// A reply of kind `kind` for `room` with no seq (a join's answer).
pub(crate) fn reply<'a>(kind: Kind, room: &'a [u8], code: &'a [u8]) -> ServerMsg<'a> {
    ServerMsg {
        kind,
        room,
        seq: 0,
        cid: b"",
        code,
        complete: false,
    }
}

/// For the protocols' tests: `b` as `proto` parses it, which must be a server message (panics
/// with the frame otherwise).
#[cfg(test)]
fn parse_server(proto: Protocol, b: &[u8]) -> crate::client::ServerMsg<'_> {
    match proto.parse(b) {
        Some(Incoming::Server(m)) => m,
        other => panic!("{}: {other:?}", String::from_utf8_lossy(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Stream;

    /// The body-seq verification end to end: frames as each peer sends them, parsed, fed to the
    /// verifier. A lost, a duplicated and a swapped message must each be counted.
    #[test]
    fn body_seqs_catch_loss_duplication_and_reordering() {
        let sio = |k: u64| format!(r#"42["msg",{{"room":"r","cid":"3-{k}-99","body":"x"}}]"#);
        let push = |k: u64| format!(r#"{{"event":"msg","channel":"r","data":"3-{k}-99 xyz"}}"#);
        for (proto, frame) in [
            (Protocol::Socketio, &sio as &dyn Fn(u64) -> String),
            (Protocol::Pusher, &push),
        ] {
            let mut s = Stream::new(0);
            // k = 0, 1, 3, 2 (swapped), 3 again (duplicate), 5 (4 lost): seqs 1, 2, 4, 3, 4, 6.
            for k in [0, 1, 3, 2, 3, 5] {
                let f = frame(k);
                let Some(Incoming::Server(m)) = proto.parse(f.as_bytes()) else {
                    panic!("{proto:?}: {f} not parsed");
                };
                assert_eq!((m.kind, m.room, m.seq), (Kind::Msg, &b"r"[..], k + 1));
                s.on_seq(m.seq);
            }
            let sum = s.summary();
            assert_eq!((sum.duplicated, sum.reordered), (1, 1), "{proto:?}");
            assert_eq!(sum.lost(6), 1, "{proto:?}: seq 5 never came");
            assert_eq!(sum.lost(7), 2, "{proto:?}: nor the tail's seq 7");
        }
    }

    #[test]
    fn one_sender_per_room_without_seqs() {
        let mut s = Scenario {
            rooms: 10,
            senders: 10,
            ..Scenario::default()
        };
        assert!(Protocol::Socketio.validate(&s).is_ok());
        s.senders = 11;
        assert!(Protocol::Socketio.validate(&s).is_err());
        assert!(Protocol::Chat.validate(&s).is_ok());
        s.senders = 10;
        s.dm_share = 0.1;
        assert!(Protocol::Pusher.validate(&s).is_err());
    }
}
