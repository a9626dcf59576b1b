//! `loadgen presence-list`: how long a large room's presence list takes. `members` users join
//! one fresh room (spread over the nodes, `concurrency` at a time), then one of them asks
//! `presence` `repeat` times, one after the other, and the round trips are timed. The answer
//! is checked: `count` must be every member, `users` the first 1000 of them. The members do
//! not read meanwhile: what the room tells them waits in their sockets.

use super::parse;
use crate::client::{self, ConnConfig, Target};
use crate::stats::{new_hist, record_ns, Percentiles};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Clone, Debug)]
pub struct ListArgs {
    /// Server WebSocket URLs, comma-separated; members are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080")]
    pub url: Vec<String>,
    /// Members of the room.
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// `presence` requests, one after the other.
    #[arg(long, default_value_t = 50)]
    pub repeat: usize,
    /// Connections opened at once while filling the room.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
}

/// What `presence-list` prints (one JSON object).
#[derive(Debug, Serialize)]
pub struct ListResult {
    pub members: usize,
    /// Seconds to connect and join every member.
    pub fill_seconds: f64,
    /// `count` of the answers (every one must be `members`).
    pub count: u64,
    /// Bytes of one answer.
    pub answer_bytes: usize,
    /// Round trip of one `presence` request.
    pub round_trip: Percentiles,
}

pub async fn run(a: &ListArgs) -> Result<ListResult, String> {
    let targets: Vec<Target> = a
        .url
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<_, _>>()?;
    if a.members == 0 || a.repeat == 0 || a.concurrency == 0 {
        return Err("members, repeat and concurrency must be positive".into());
    }
    client::raise_fd_limit();
    let run_id = format!("pl{:08x}", fastrand::u32(..));
    let room = format!("{run_id}-room");
    let cfg = ConnConfig {
        read_buffer: 4096,
        write_buffer: 4096,
        socket_buffer: 0,
    };
    let t0 = Instant::now();
    let ids: Vec<usize> = (0..a.members).collect();
    let mut conns = Vec::with_capacity(a.members);
    for chunk in ids.chunks(a.concurrency) {
        let opened = futures_util::future::join_all(chunk.iter().map(|&i| {
            let (target, room, run_id) = (&targets[i % targets.len()], &room, &run_id);
            async move {
                let user = format!("{run_id}-u{i:06}");
                let mut ws = client::connect(target, None, &client::chat_path(&user), cfg).await?;
                super::Mix::join(&mut ws, room).await?;
                Ok::<_, String>(ws)
            }
        }))
        .await;
        for ws in opened {
            conns.push(ws?);
        }
    }
    let fill_seconds = t0.elapsed().as_secs_f64();
    // Members that joined early hear of the later ones: let those events pass first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ask = client::room_request("presence", &room, None);
    let ws = &mut conns[0];
    let mut hist = new_hist();
    let (mut count, mut answer_bytes) = (0, 0);
    for _ in 0..a.repeat {
        let sent = Instant::now();
        ws.send(ask.clone()).await.map_err(|e| e.to_string())?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .map_err(|_| "no presence answer within 30 s".to_string())?;
            let Some(Ok(Message::Text(t))) = m else {
                if matches!(m, Some(Ok(_))) {
                    continue;
                }
                return Err("the connection ended".into());
            };
            if parse(t.as_bytes()).is_none_or(|e| e.kind != b"presence") {
                continue;
            }
            let took = sent.elapsed();
            let v: serde_json::Value =
                serde_json::from_str(t.as_str()).map_err(|e| format!("answer: {e}"))?;
            if v.get("users").is_none() {
                // The coalesced event of a large room (count only), not the answer.
                continue;
            }
            record_ns(&mut hist, took.as_nanos() as u64);
            count = v["count"].as_u64().unwrap_or(0);
            let users = v["users"].as_array().map_or(0, Vec::len);
            if count != a.members as u64 || users != a.members.min(1000) {
                return Err(format!(
                    "presence of {} members answered count {count} with {users} users",
                    a.members
                ));
            }
            answer_bytes = t.len();
            break;
        }
    }
    for mut ws in conns {
        let _ = ws.close(None).await;
    }
    Ok(ListResult {
        members: a.members,
        fill_seconds,
        count,
        answer_bytes,
        round_trip: Percentiles::of(&hist),
    })
}
