//! `loadgen agent --listen ADDR`: runs shares of runs for a remote coordinator, one run at a
//! time, on the same [`engine`](crate::engine) as an in-process run.
//!
//! ## Coordinator ↔ agent protocol
//!
//! One TCP connection per run, carrying JSON objects, one per line (`\n`), each with a `type`:
//!
//! | direction | `type` | fields | meaning |
//! | --- | --- | --- | --- |
//! | → agent | `prepare` | `share`: {`run_id`, `agent`, `scenario`} | open and join this share's connections |
//! | ← agent | `ready` | `ready`: {`connections`, `connected`, `connect_errors`, `join_errors`, `setup_seconds`, `first_error`} | all connections are set up (or failed) |
//! | → agent | `start` | `delay_ms` | start sending `delay_ms` after receiving this line |
//! | ← agent | `tick` | `tick`: {`second`, `sent`, `acked`, `delivered`, `errors`, `latency`} | one second of the run; `latency` is a histogram |
//! | ← agent | `done` | `report`: {`agent`, `counters`, `hists`, `cpu_seconds`, `wall_seconds`, `thread_utilization`, `first_error`} | the share's totals; the connection closes |
//! | ← agent | `error` | `message` | the share could not run; the connection closes |
//!
//! Histograms are HdrHistogram V2 + DEFLATE, base64-encoded; the coordinator adds them up, so
//! the merged percentiles are exact. The coordinator sends `start` to every agent at once; each
//! agent starts `delay_ms` after it reads the line, so agents start together to within the
//! one-way network delay, without relying on synchronized clocks. A coordinator that goes
//! away before `start` abandons the share (its connections close); after `start`, the share
//! runs to its end (runs are bounded) and the agent waits for the next coordinator.

use crate::engine::{self, AgentReport, Ready, Share};
use crate::stats::TickWire;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Coordinator → agent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    Prepare { share: Box<Share> },
    Start { delay_ms: u64 },
}

/// Agent → coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromAgent {
    Ready { ready: Ready },
    Tick { tick: TickWire },
    Done { report: Box<AgentReport> },
    Error { message: String },
}

/// Serves runs forever, one at a time.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (sock, peer) = listener.accept().await?;
        eprintln!("agent: run from {peer}");
        match session(sock).await {
            Ok(()) => eprintln!("agent: run from {peer} done"),
            Err(e) => eprintln!("agent: run from {peer}: {e}"),
        }
    }
}

pub async fn write_line<T: Serialize>(
    w: &mut (impl AsyncWriteExt + Unpin),
    msg: &T,
) -> Result<(), String> {
    let mut line = serde_json::to_vec(msg).map_err(|e| e.to_string())?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(|e| e.to_string())
}

async fn session(sock: TcpStream) -> Result<(), String> {
    sock.set_nodelay(true).ok();
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut next = async || -> Result<ToAgent, String> {
        let line = lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the coordinator went away")?;
        serde_json::from_str(&line).map_err(|e| format!("bad line from the coordinator: {e}"))
    };
    let ToAgent::Prepare { share } = next().await? else {
        return Err("expected `prepare` first".into());
    };
    let (tick_tx, mut tick_rx) = mpsc::unbounded_channel();
    let prepared = match engine::prepare(*share, tick_tx).await {
        Ok(p) => p,
        Err(message) => {
            write_line(
                &mut w,
                &FromAgent::Error {
                    message: message.clone(),
                },
            )
            .await?;
            return Err(message);
        }
    };
    write_line(
        &mut w,
        &FromAgent::Ready {
            ready: prepared.ready.clone(),
        },
    )
    .await?;
    let ToAgent::Start { delay_ms } = next().await? else {
        return Err("expected `start`".into());
    };
    let start = Instant::now() + Duration::from_millis(delay_ms);
    let forward = tokio::spawn(async move {
        while let Some(t) = tick_rx.recv().await {
            // A coordinator that went away does not stop the run; its lines are dropped.
            let _ = write_line(&mut w, &FromAgent::Tick { tick: t.to_wire() }).await;
        }
        w
    });
    let report = prepared.run(start).await;
    let mut w = forward.await.map_err(|e| e.to_string())?;
    write_line(
        &mut w,
        &FromAgent::Done {
            report: Box::new(report),
        },
    )
    .await?;
    w.shutdown().await.ok();
    Ok(())
}
