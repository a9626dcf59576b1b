//! The users who come and go, and the users who stay.
//!
//! A churning user `<prefix>c<i>` (room `i % rooms`) connects at `start + phase + k *
//! churn_period`, joins, sends `typing` on its share of `typing_rate`, and closes half a period
//! later; it leaves for good at the end of the run. Its `join` and close instants are what the
//! devices time presence events from. A present user `<prefix>p<i>` joins room
//! `<prefix>pr<i / 10>` before the start and stays until the mix stops.

use super::{parse, Mix};
use futures_util::{SinkExt, StreamExt};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Members of each present users' room.
const PRESENT_ROOM: u32 = 10;

/// One churning user's whole run.
pub(super) async fn churner(mix: Rc<Mix>, i: u32, start: Instant, end: Instant) {
    let s = &mix.scenario;
    let period = Duration::from_secs_f64(s.churn_period);
    let phase = period.mul_f64(f64::from(i) / s.churn as f64);
    let user = format!("{}c{i}", mix.layout.prefix);
    let room = mix.layout.room(i % mix.layout.rooms);
    let node = mix.churner_node(i);
    let typing_every =
        (s.typing_rate > 0.0).then(|| Duration::from_secs_f64(s.churn as f64 / s.typing_rate));
    let typing = crate::client::room_request("typing", &room, None);
    let mut at = start + phase;
    while at < end {
        tokio::time::sleep_until(at.into()).await;
        at += period;
        let mut ws = match mix.open(&user, node).await {
            Ok(ws) => ws,
            Err(e) => {
                mix.error(format!("{user}: {e}"));
                continue;
            }
        };
        mix.last_move.borrow_mut().insert(i, (Instant::now(), true));
        if let Err(e) = Mix::join(&mut ws, &room).await {
            // The devices may have seen it come: it goes with the close below.
            mix.error(format!("{user}: {e}"));
        } else {
            mix.counters.borrow_mut().churn_joins += 1;
        }
        let leave = (at - period / 2).min(end);
        let mut next_typing = typing_every.map(|e| Instant::now() + e.mul_f64(fastrand::f64()));
        loop {
            let wake = next_typing.map_or(leave, |t| t.min(leave));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {
                    if wake >= leave {
                        break;
                    }
                    next_typing = typing_every.map(|e| wake + e);
                    if ws.send(typing.clone()).await.is_err() {
                        break;
                    }
                    mix.counters.borrow_mut().typing_sent += 1;
                }
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if parse(t.as_bytes()).is_some_and(|e| e.kind == b"error") {
                            mix.error_reply(&user, t.as_str());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        mix.error(format!("{user}: connection lost"));
                        break;
                    }
                },
            }
        }
        mix.last_move
            .borrow_mut()
            .insert(i, (Instant::now(), false));
        close(&mut ws).await;
        mix.counters.borrow_mut().churn_leaves += 1;
    }
}

/// Sends a close and reads until the server's close (or 5 s).
async fn close(ws: &mut crate::client::Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Connects and joins the present users (200 at a time); each then reads until `stop`.
pub(super) async fn connect_present(
    mix: &Rc<Mix>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let nodes = mix.targets.len() as u32;
    let ids: Vec<u32> = (0..mix.scenario.present as u32).collect();
    let opened = mix
        .open_all(&ids, |i| async move {
            let user = format!("{}p{i}", mix.layout.prefix);
            let room = format!("{}pr{}", mix.layout.prefix, i / PRESENT_ROOM);
            let mut ws = mix.open(&user, i % nodes).await?;
            Mix::join(&mut ws, &room).await?;
            Ok(ws)
        })
        .await;
    mix.counters.borrow_mut().present += opened.len() as u64;
    opened
        .into_iter()
        .map(|ws| tokio::task::spawn_local(stay(ws, stop.clone())))
        .collect()
}

/// Reads (answering pings) until `stop`, then closes.
async fn stay(mut ws: crate::client::Ws, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            m = ws.next() => if !matches!(m, Some(Ok(_))) { return },
        }
    }
    close(&mut ws).await;
}
