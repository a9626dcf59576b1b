//! The naive Rust chat server: what a Rust team writes first with the usual crates (tokio,
//! tokio-tungstenite, redis-rs), speaking the project's protocol (PROTOCOL.md: join / send ->
//! msg to every member / ack) well enough for the load generator. Per message it makes the
//! obvious Redis calls, each awaited: INCR the room's seq, then PUBLISH the message to the
//! room's channel; every node PSUBSCRIBEs to all rooms and forwards each message to its local
//! members. A task per connection, one shared multiplexed Redis connection, rooms in a
//! `Mutex<HashMap>`. Nothing batched, nothing tuned: the baseline of peers/README.md.
//!
//! `naive-chat LISTEN REDIS_URL` (e.g. `127.0.0.1:9121 redis://127.0.0.1:6379`).

use futures_util::{SinkExt, StreamExt};
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Tx = mpsc::UnboundedSender<Message>;

/// Local members of each room: connection id -> its outbound queue.
#[derive(Default)]
struct Rooms(Mutex<HashMap<String, HashMap<u64, Tx>>>);

#[derive(Deserialize)]
struct Request_ {
    #[serde(rename = "type")]
    kind: String,
    room: Option<String>,
    cid: Option<String>,
    body: Option<String>,
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9121".into());
    let redis_url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(redis_url).expect("redis url");
    let redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let rooms = Arc::new(Rooms::default());
    let mut pubsub = client.get_async_pubsub().await.expect("redis pubsub");
    pubsub.psubscribe("room:*").await.expect("psubscribe");
    let fanout = rooms.clone();
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(m) = messages.next().await {
            let room = &m.get_channel_name()["room:".len()..];
            let Ok(text) = std::str::from_utf8(m.get_payload_bytes()) else {
                continue;
            };
            let members = fanout.0.lock().unwrap();
            if let Some(members) = members.get(room) {
                for tx in members.values() {
                    let _ = tx.send(Message::text(text));
                }
            }
        }
        eprintln!("redis pub/sub connection lost");
        std::process::exit(1);
    });
    let listener = TcpListener::bind(&listen).await.expect("listen");
    println!("naive-chat listening on {listen}");
    let node = format!("{:08x}", std::process::id());
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let conn = Conn {
            id: ids.fetch_add(1, Ordering::Relaxed),
            node: node.clone(),
            redis: redis.clone(),
            rooms: rooms.clone(),
        };
        tokio::spawn(conn.serve(stream));
    }
}

struct Conn {
    id: u64,
    node: String,
    redis: redis::aio::MultiplexedConnection,
    rooms: Arc<Rooms>,
}

impl Conn {
    async fn serve(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut user = String::from("anonymous");
        let callback = |req: &Request, resp: Response| {
            if let Some(q) = req.uri().query() {
                for kv in q.split('&') {
                    if let Some(u) = kv.strip_prefix("user=") {
                        user = u.to_string();
                    }
                }
            }
            Ok(resp)
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
            return;
        };
        let (mut sink, mut source) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let mut joined: Vec<String> = Vec::new();
        while let Some(Ok(frame)) = source.next().await {
            let Message::Text(text) = frame else { continue };
            let reply = match serde_json::from_str::<Request_>(&text) {
                Ok(r) => self.handle(r, &user, &tx, &mut joined).await,
                Err(_) => error("bad_request", None),
            };
            if let Some(r) = reply {
                let _ = tx.send(Message::text(r.to_string()));
            }
        }
        {
            let mut rooms = self.rooms.0.lock().unwrap();
            for room in &joined {
                if let Some(m) = rooms.get_mut(room) {
                    m.remove(&self.id);
                    if m.is_empty() {
                        rooms.remove(room);
                    }
                }
            }
        }
        writer.abort();
    }

    async fn handle(
        &mut self,
        r: Request_,
        user: &str,
        tx: &Tx,
        joined: &mut Vec<String>,
    ) -> Option<serde_json::Value> {
        let Some(room) = r.room else {
            return error("bad_request", r.cid);
        };
        match r.kind.as_str() {
            "join" => {
                self.rooms
                    .0
                    .lock()
                    .unwrap()
                    .entry(room.clone())
                    .or_default()
                    .insert(self.id, tx.clone());
                joined.push(room.clone());
                let seq: Option<u64> = self.redis.get(format!("seq:{room}")).await.ok()?;
                Some(json!({"type": "joined", "room": room, "seq": seq.unwrap_or(0)}))
            }
            "send" => {
                if !joined.contains(&room) {
                    return error("not_joined", r.cid);
                }
                let Ok(seq) = self.redis.incr::<_, _, u64>(format!("seq:{room}"), 1).await else {
                    return error("unavailable", r.cid);
                };
                let id = format!("{}-{seq:x}", self.node);
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let msg = json!({"type": "msg", "room": room, "seq": seq, "id": id, "from": user,
                    "ts": ts, "body": r.body, "cid": r.cid});
                let published: redis::RedisResult<()> = self
                    .redis
                    .publish(format!("room:{room}"), msg.to_string())
                    .await;
                if published.is_err() {
                    return error("unavailable", r.cid);
                }
                Some(json!({"type": "ack", "cid": r.cid, "room": room, "seq": seq, "id": id}))
            }
            _ => error("bad_request", r.cid),
        }
    }
}

fn error(code: &str, cid: Option<String>) -> Option<serde_json::Value> {
    Some(json!({"type": "error", "code": code, "message": code, "cid": cid}))
}
