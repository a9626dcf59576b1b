//! Slow consumers (`stalled`): connections that stop reading at `stall_at`, so the server's
//! outbound queue for them fills; what counts is whether the server closed them.

use super::state::Shard;
use crate::client::{self, ConnConfig, Kind};
use futures_util::{SinkExt, StreamExt};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A slow consumer: joins room `i % rooms` with small buffers, reads normally until `stall_at`
/// seconds after the start, then stops reading. Once the schedule is over it reads what is
/// left (up to 10 s) to learn whether the server closed it. Its receptions are not verified.
pub(super) async fn stalled_task(sh: Rc<Shard>, i: u32) {
    let layout = sh.layout.clone();
    let n = sh.targets.len();
    let target = &sh.targets[i as usize % n];
    let cfg = ConnConfig {
        read_buffer: 4096,
        write_buffer: 4096,
        socket_buffer: 4096,
    };
    let user = format!("{}s{i}", layout.prefix);
    let room = layout.room(i % layout.rooms);
    let joined = async {
        let mut ws = client::connect(target, None, &client::chat_path(&user), cfg).await?;
        ws.send(client::join(&room))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let m = client::parse(t.as_bytes());
                    match m.map(|m| m.kind) {
                        Some(Kind::Joined) => return Ok(ws),
                        Some(Kind::Error) => return Err(format!("join: {}", t.as_str())),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed while joining".to_string()),
            }
        }
    };
    let ws = tokio::time::timeout(Duration::from_secs(30), joined).await;
    sh.ready_one();
    let mut ws = match ws {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            sh.error(format!("stalled connection {i}: {e}"));
            sh.stats.borrow_mut().counters.connect_errors += 1;
            sh.totals.stalled_left.fetch_sub(1, Relaxed);
            return;
        }
        Err(_) => {
            sh.error(format!("stalled connection {i}: no joined within 30 s"));
            sh.stats.borrow_mut().counters.connect_errors += 1;
            sh.totals.stalled_left.fetch_sub(1, Relaxed);
            return;
        }
    };
    let start = sh.wait_start().await;
    let stall = start + Duration::from_secs_f64(sh.scenario.stall_at);
    let mut closed = false;
    while !closed {
        match tokio::time::timeout_at(stall.into(), ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => closed = true,
            Ok(Some(Ok(_))) => {}
        }
    }
    // Not reading: the server's queue for this connection fills up.
    let end = start + Duration::from_secs_f64(sh.scenario.total_secs());
    tokio::time::sleep_until(end.into()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !closed {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => closed = true,
            Ok(Some(Ok(_))) => {}
        }
    }
    sh.stats.borrow_mut().counters.stalled_disconnected += u64::from(closed);
    sh.totals.stalled_left.fetch_sub(1, Relaxed);
}
