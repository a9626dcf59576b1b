//! One connection's task: connect, join its rooms, then read until the end; with `reconnect`,
//! open it again on the next node and `resume` its rooms where its streams stopped.

use super::outbox::{writer_task, Outbox};
use super::sender::sender_task;
use super::state::{ConnStreams, Shard};
use crate::client::{self, Kind, ServerMsg, Ws};
use crate::proto::{http_publish, pusher, Incoming};
use crate::scenario::Key;
use crate::verify::Stream;
use futures_util::{SinkExt, StreamExt};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Connects, joins, then reads until the end. A sending connection's messages go through its
/// [`Outbox`]: a [`sender_task`] makes them on schedule and a [`writer_task`] writes them to
/// whichever connection is current. With `reconnect`, a connection that ends early is opened
/// again (on the next node) and resumes its rooms where its streams stopped.
pub(super) async fn conn_task(sh: Rc<Shard>, c: u32, connect_at: Instant) {
    tokio::time::sleep_until(connect_at.into()).await;
    let layout = sh.layout.clone();
    let sends = !layout.conn_roles[c as usize].is_empty();
    let target = &sh.targets[layout.conn_url[c as usize] as usize];
    let source = client::source_ip(&target.addr, c as usize, sh.scenario.source_ips);
    let proto = sh.scenario.protocol;
    let path = proto.path(&layout.user(c), &sh.scenario.pusher_app);
    let opened = match client::connect(target, source, &path, sh.cfg).await {
        Ok(mut ws) => proto.handshake(&mut ws).await.map(|()| ws),
        e => e,
    };
    let ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            sh.stats.borrow_mut().counters.connect_errors += 1;
            sh.error(e);
            if sends {
                sh.totals.senders_left.fetch_sub(1, Relaxed);
            }
            sh.ready_one();
            return;
        }
    };
    sh.stats.borrow_mut().counters.connected += 1;
    let mut ws = ws;
    let streams = Rc::new(RefCell::new(ConnStreams::default()));
    sh.conns.borrow_mut().push((c, streams.clone()));
    let rooms = &layout.conn_rooms[c as usize];
    let mut ok = true;
    for &r in rooms {
        ok = ok && ws.feed(proto.join(&layout.room(r))).await.is_ok();
    }
    ok = ok && ws.flush().await.is_ok();
    let mut left = rooms.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok && left > 0 {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let m = match proto.parse(t.as_bytes()) {
                    Some(Incoming::Server(m)) => m,
                    Some(Incoming::Ping(pong)) => {
                        ok = ws.send(pong).await.is_ok();
                        continue;
                    }
                    None => continue,
                };
                match m.kind {
                    Kind::Joined => {
                        if let Some(k) = layout.key_of_room(m.room) {
                            streams.borrow_mut().streams.insert(k, Stream::new(m.seq));
                        }
                        left -= 1;
                    }
                    Kind::Error => {
                        sh.error(format!("join: {}", t.as_str()));
                        left -= 1;
                        sh.stats.borrow_mut().counters.join_errors += 1;
                    }
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                sh.error(format!("while joining: {e}"));
                ok = false;
            }
            Ok(None) => ok = false,
            Err(_) => {
                sh.error("join: no reply within 30 s".into());
                ok = false;
            }
        }
    }
    sh.stats.borrow_mut().counters.join_errors += left as u64;
    sh.ready_one();
    if !ok {
        sh.stats.borrow_mut().counters.disconnects += 1;
        if sends {
            sh.totals.senders_left.fetch_sub(1, Relaxed);
        }
        return;
    }
    // Sends go over the WebSocket (its writer also answers keep-alives), or over HTTP.
    let http = proto.publishes_over_http();
    let outbox = (sends || proto.answers_pings()).then(|| {
        let (outbox, messages, sinks) = Outbox::new();
        if http {
            let (sh2, streams2, addr) = (sh.clone(), streams.clone(), target.addr);
            tokio::task::spawn_local(async move {
                let on_reply = |m: ServerMsg<'_>, now| sh2.on_msg(c, m, now, &streams2, None);
                let on_error = |e| sh2.error(e);
                http_publish::run(addr, messages, pusher::request_ids, on_reply, on_error).await;
            });
        } else {
            tokio::task::spawn_local(writer_task(sh.clone(), c, outbox.clone(), messages, sinks));
        }
        if sends {
            tokio::task::spawn_local(sender_task(sh.clone(), c, outbox.clone()));
        }
        outbox
    });
    let mut attempt = 0;
    let mut backoff = MIN_BACKOFF;
    loop {
        let opened = Instant::now();
        match &outbox {
            Some(ob) if !http => {
                let (sink, stream) = ws.split();
                ob.generation.set(ob.generation.get() + 1);
                let _ = ob.sinks.send((ob.generation.get(), sink));
                reader(&sh, c, stream, &streams, Some(ob)).await;
            }
            // Receive-only connections skip the split (and its lock on every read).
            _ => reader(&sh, c, ws, &streams, None).await,
        }
        if sh.stopping.get() {
            return;
        }
        if !sh.scenario.reconnect {
            sh.stats.borrow_mut().counters.disconnects += 1;
            return;
        }
        // A connection that ends right away again (say its resume cannot be served) must not
        // turn into a reconnect storm: the backoff only resets after a connection that lasted.
        if opened.elapsed() > Duration::from_secs(2) {
            backoff = MIN_BACKOFF;
        }
        match reconnect(&sh, c, &mut attempt, &mut backoff, &streams).await {
            Some(again) => {
                ws = again;
                sh.stats.borrow_mut().counters.reconnects += 1;
            }
            None => {
                if !sh.stopping.get() {
                    sh.stats.borrow_mut().counters.disconnects += 1;
                }
                return;
            }
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Opens connection `c` again, on the next node each attempt, after `backoff` (doubling up to
/// 1 s per failed attempt), and asks to `resume` every room it follows after the last seq it
/// saw there. `None` once the run is stopping.
async fn reconnect(
    sh: &Shard,
    c: u32,
    attempt: &mut usize,
    backoff: &mut Duration,
    streams: &RefCell<ConnStreams>,
) -> Option<Ws> {
    let layout = &*sh.layout;
    loop {
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        if sh.stopping.get() {
            return None;
        }
        *attempt += 1;
        let n = sh.targets.len();
        let target = &sh.targets[(layout.conn_url[c as usize] as usize + *attempt) % n];
        let source = client::source_ip(&target.addr, c as usize, sh.scenario.source_ips);
        let path = client::chat_path(&layout.user(c));
        if let Ok(mut ws) = client::connect(target, source, &path, sh.cfg).await {
            let mut keys: Vec<Key> = layout.conn_rooms[c as usize]
                .iter()
                .map(|&r| r as Key)
                .collect();
            if sh.scenario.dm_share > 0.0 {
                keys.extend(layout.dm_keys_of(c));
            }
            let resumes: Vec<Message> = {
                let mut cs = streams.borrow_mut();
                keys.iter()
                    .map(|&k| {
                        let after = cs.streams.entry(k).or_insert_with(|| Stream::new(0));
                        client::resume(&layout.room_of_key(k), after.highest())
                    })
                    .collect()
            };
            let mut ok = true;
            for m in resumes {
                ok = ok && ws.feed(m).await.is_ok();
            }
            if ok && ws.flush().await.is_ok() {
                return Some(ws);
            }
        }
    }
}

/// Reads one connection until it ends.
async fn reader<S>(
    sh: &Shard,
    c: u32,
    mut stream: S,
    streams: &RefCell<ConnStreams>,
    outbox: Option<&Rc<Outbox>>,
) where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    // With `reconnect`, an ended connection is expected (a drill): it is counted, not reported.
    let report = |e: String| {
        if !sh.stopping.get() && !sh.scenario.reconnect {
            sh.error(e);
        }
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(Message::Text(t)) => sh.on_frame(c, t.as_bytes(), Instant::now(), streams, outbox),
            Ok(Message::Close(f)) => {
                report(format!("connection {c} closed by the server: {f:?}"));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                report(format!("connection {c}: {e}"));
                break;
            }
        }
    }
}
