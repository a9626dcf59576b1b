//! A reader's device: one of the two connections of room `r`'s reader user `<prefix>o<r>`
//! (device 0 on node `r % nodes`, device 1 on the next). It watches the room's presence and
//! typing events and the user's read pointer, checks each against the contract, and on its
//! own schedule moves the pointer to the latest seq it saw and sends `typing`.

use super::{parse, Mix, Pointers, TYPING_SLACK_MS};
use crate::client::{self, Ws};
use crate::stats::record_ns;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// A device's own `typing`, this often (the other device, the same user, must never get it).
const TYPING_EVERY: Duration = Duration::from_secs(2);

/// A reader device, joined, waiting for the start.
pub(super) struct Device {
    ws: Ws,
    room: u32,
    dev: usize,
    /// The highest seq seen in the room.
    seen: u64,
}

/// Connects and joins both devices of every room's reader user (200 at a time).
pub(super) async fn connect_all(mix: &Rc<Mix>) -> Vec<Device> {
    let rooms = mix.layout.rooms;
    let nodes = mix.targets.len() as u32;
    *mix.pointers.borrow_mut() = vec![Pointers::default(); rooms as usize];
    let all: Vec<(u32, usize)> = (0..rooms).flat_map(|r| [(r, 0), (r, 1)]).collect();
    let out = mix
        .open_all(&all, |(r, dev)| async move {
            let user = reader(mix, r);
            let mut ws = mix.open(&user, (r + dev as u32) % nodes).await?;
            let seen = Mix::join(&mut ws, &mix.layout.room(r)).await?;
            Ok(Device {
                ws,
                room: r,
                dev,
                seen,
            })
        })
        .await;
    mix.counters.borrow_mut().devices += out.len() as u64;
    out
}

fn reader(mix: &Mix, r: u32) -> String {
    format!("{}o{r}", mix.layout.prefix)
}

/// The device's life from the start: its own requests until `end`, the room's events until
/// `stop`; then it counts the churning users still online in its view and closes.
pub(super) async fn run(
    mix: Rc<Mix>,
    d: Device,
    start: Instant,
    end: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let Device {
        mut ws,
        room,
        dev,
        mut seen,
    } = d;
    let s = &mix.scenario;
    let me = reader(&mix, room);
    let room_name = mix.layout.room(room);
    let churn_prefix = format!("{}c", mix.layout.prefix);
    let node = (room + dev as u32) % mix.targets.len() as u32;
    // The user's reads alternate between its devices: each device every other turn.
    let phase = |every: Duration| every.mul_f64(f64::from(room) / f64::from(mix.layout.rooms));
    let read_every = (s.read_rate > 0.0)
        .then(|| Duration::from_secs_f64(f64::from(mix.layout.rooms) / s.read_rate));
    let mut next_read = read_every.map(|e| start + phase(e * 2) + e * dev as u32);
    let mut next_typing = start + phase(TYPING_EVERY) + TYPING_EVERY / 2 * dev as u32;
    let mut online: HashMap<u32, bool> = HashMap::new();
    let mut last_typing: HashMap<Vec<u8>, Instant> = HashMap::new();
    loop {
        let next = next_read.map_or(next_typing, |r| r.min(next_typing));
        let acting = next < end;
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(next.into()), if acting => {
                let now = Instant::now();
                let mut out = Vec::new();
                if let (Some(t), Some(e)) = (next_read, read_every) {
                    if t <= now {
                        next_read = Some(t + e * 2);
                        if seen > 0 {
                            let mut p = mix.pointers.borrow_mut();
                            p[room as usize].asked = p[room as usize].asked.max(seen);
                            out.push(client::room_request("read", &room_name, Some(seen)));
                            mix.counters.borrow_mut().read_sent += 1;
                        }
                    }
                }
                if next_typing <= now {
                    next_typing += TYPING_EVERY;
                    out.push(client::room_request("typing", &room_name, None));
                    mix.counters.borrow_mut().typing_sent += 1;
                }
                for m in out {
                    if ws.feed(m).await.is_err() {
                        break;
                    }
                }
                if ws.flush().await.is_err() {
                    mix.error(format!("{me}: connection lost"));
                    break;
                }
            }
            m = ws.next() => {
                let t = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        mix.error(format!("{me}: {e}"));
                        break;
                    }
                    None => {
                        mix.error(format!("{me}: closed by the server"));
                        break;
                    }
                };
                let Some(e) = parse(t.as_bytes()) else { continue };
                let now = Instant::now();
                let mut c = mix.counters.borrow_mut();
                match e.kind {
                    b"msg" => seen = seen.max(e.seq),
                    b"online" | b"offline" => {
                        let Some(i) = e
                            .user
                            .strip_prefix(churn_prefix.as_bytes())
                            .and_then(crate::schedule::parse_u64)
                        else {
                            continue;
                        };
                        let i = i as u32;
                        let came = e.kind == b"online";
                        let was = online.insert(i, came).unwrap_or(false);
                        if was == came {
                            c.presence_out_of_turn += 1;
                            continue;
                        }
                        if came {
                            c.online += 1;
                            mix.online_now.set(mix.online_now.get() + 1);
                        } else {
                            c.offline += 1;
                            mix.online_now.set(mix.online_now.get() - 1);
                        }
                        if let Some(&(at, joined)) = mix.last_move.borrow().get(&i) {
                            if joined == came {
                                let h = if mix.churner_node(i) == node {
                                    &mix.same_node
                                } else {
                                    &mix.cross_node
                                };
                                record_ns(&mut h.borrow_mut(), now.duration_since(at).as_nanos() as u64);
                            }
                        }
                    }
                    b"typing" => {
                        c.typing_received += 1;
                        if e.user == me.as_bytes() {
                            c.typing_to_self += 1;
                        }
                        let min_gap = Duration::from_millis(1000 - TYPING_SLACK_MS);
                        if let Some(prev) = last_typing.insert(e.user.to_vec(), now) {
                            if now.duration_since(prev) < min_gap {
                                c.typing_too_often += 1;
                            }
                        }
                    }
                    b"read" => {
                        c.read_received += 1;
                        let mut p = mix.pointers.borrow_mut();
                        let heard = &mut p[room as usize].heard[dev];
                        if e.seq < *heard {
                            c.read_backwards += 1;
                        }
                        *heard = (*heard).max(e.seq);
                    }
                    b"error" => {
                        drop(c);
                        mix.error_reply(&me, t.as_str());
                    }
                    _ => {}
                }
            }
        }
    }
    let still = online.values().filter(|o| **o).count() as u64;
    mix.counters.borrow_mut().presence_unmatched += still;
    mix.online_now
        .set(mix.online_now.get().saturating_sub(still));
    let _ = ws.close(None).await;
}
