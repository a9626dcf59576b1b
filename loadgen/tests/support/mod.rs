//! Test helpers: an in-process fake chat server that can stall on purpose, and a real
//! `chat-server` child process.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use loadgen::coordinator::RunOptions;
use loadgen::scenario::Scenario;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct State {
    rooms: HashMap<String, (u64, Vec<usize>)>,
    users: HashMap<String, Vec<usize>>,
    conns: Vec<mpsc::UnboundedSender<Message>>,
    first_send: Option<Instant>,
}

/// A minimal chat server speaking the subset of PROTOCOL.md the load generator uses (`join`,
/// `send`, `dm`), in memory. With `stall = Some((at, length))` it stops answering anything for
/// `length`, `at` after the first `send` it sees: a server that freezes (a GC pause, a stuck
/// disk) while the load keeps coming.
pub async fn fake_server(stall: Option<(Duration, Duration)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(State::default()));
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let mut user = String::new();
                #[allow(clippy::result_large_err)] // tungstenite's callback signature
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp| {
                    let q = req.uri().query().unwrap_or_default();
                    user = q.strip_prefix("user=").unwrap_or_default().to_string();
                    Ok(resp)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, cb).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
                let me = {
                    let mut s = state.lock().unwrap();
                    s.conns.push(out_tx);
                    let me = s.conns.len() - 1;
                    s.users.entry(user.clone()).or_default().push(me);
                    me
                };
                tokio::spawn(async move {
                    while let Some(m) = out_rx.recv().await {
                        if tx.feed(m).await.is_err() {
                            return;
                        }
                        while let Ok(m) = out_rx.try_recv() {
                            if tx.feed(m).await.is_err() {
                                return;
                            }
                        }
                        if tx.flush().await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(m)) = rx.next().await {
                    let Message::Text(t) = m else { continue };
                    // The stall: nothing is read or answered inside the window.
                    if let Some((at, len)) = stall {
                        let first = state.lock().unwrap().first_send;
                        if let Some(first) = first {
                            let (from, to) = (first + at, first + at + len);
                            let now = Instant::now();
                            if now >= from && now < to {
                                tokio::time::sleep_until(to.into()).await;
                            }
                        }
                    }
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    handle(&state, me, &user, &v);
                }
            });
        }
    });
    addr
}

fn handle(state: &Mutex<State>, me: usize, user: &str, v: &Value) {
    let mut s = state.lock().unwrap();
    let send = |s: &State, to: usize, m: Value| {
        let _ = s.conns[to].send(Message::text(m.to_string()));
    };
    match v["type"].as_str().unwrap_or_default() {
        "join" => {
            let room = v["room"].as_str().unwrap_or_default().to_string();
            let r = s.rooms.entry(room.clone()).or_default();
            r.1.push(me);
            let seq = r.0;
            send(&s, me, json!({"type":"joined","room":room,"seq":seq}));
        }
        kind @ ("send" | "dm") => {
            s.first_send.get_or_insert_with(Instant::now);
            let (room, members) = if kind == "send" {
                let room = v["room"].as_str().unwrap_or_default().to_string();
                let members = s.rooms.get(&room).map(|r| r.1.clone()).unwrap_or_default();
                (room, members)
            } else {
                let to = v["to"].as_str().unwrap_or_default();
                let (a, b) = if user < to { (user, to) } else { (to, user) };
                let mut members = s.users.get(a).cloned().unwrap_or_default();
                members.extend(s.users.get(b).cloned().unwrap_or_default());
                (format!("dm:{a}:{b}"), members)
            };
            let r = s.rooms.entry(room.clone()).or_default();
            r.0 += 1;
            let seq = r.0;
            let cid = v["cid"].clone();
            let msg = json!({"type":"msg","room":room,"seq":seq,"id":format!("f-{seq}"),
                "from":user,"ts":0,"body":v["body"],"cid":cid});
            for m in members {
                send(&s, m, msg.clone());
            }
            send(
                &s,
                me,
                json!({"type":"ack","cid":cid,"room":room,"seq":seq,"id":format!("f-{seq}")}),
            );
        }
        _ => {}
    }
}

/// A `chat-server` child, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `cargo build` put `chat-server`: `$CARGO_TARGET_DIR/debug`, else the workspace's
/// `target/debug`; `$CHAT_SERVER_BIN` overrides both (a shared target directory's binary may
/// come from another checkout).
pub fn chat_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CHAT_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let target = if target.is_relative() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(target)
    } else {
        target
    };
    target.join("debug/chat-server")
}

/// Starts `chat-server --listen 127.0.0.1:0 --threads 2 --rate-limit 0`; None (after printing
/// `SKIPPED: ...`) when the binary has not been built.
pub fn start_chat_server() -> Option<Server> {
    start_chat_server_with(&[])
}

/// [`start_chat_server`] with more flags.
pub fn start_chat_server_with(extra: &[&str]) -> Option<Server> {
    let bin = chat_server_bin();
    if !bin.exists() {
        println!(
            "SKIPPED: {} not found (build it with `cargo build -p chat-server`)",
            bin.display()
        );
        return None;
    }
    let mut child = Command::new(&bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--rate-limit",
            "0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chat-server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let line = line
        .trim()
        .replace("listening on https://", "listening on http://");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Some(Server { child, addr })
}

/// A fresh directory for results.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "loadgen-test-{name}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A scenario against the `chat-server` at `addr` (`host:port`): `rooms` rooms of `members`
/// members, `senders` of them sending `rate` msg/s in total, for `warmup` then `duration`
/// seconds; everything else as by default.
pub fn scenario(
    addr: &str,
    (rooms, members, senders): (usize, usize, usize),
    rate: f64,
    (warmup, duration): (f64, f64),
) -> Scenario {
    Scenario {
        urls: vec![format!("ws://{addr}")],
        rooms,
        members,
        senders,
        rate,
        warmup,
        duration,
        ..Scenario::default()
    }
}

/// In-process run options for `scenario` (named `name`, results in a fresh directory): no
/// agents, no progress line, no plots.
pub fn run_options(scenario: Scenario, name: &str) -> RunOptions {
    RunOptions {
        scenario: Scenario {
            name: name.into(),
            ..scenario
        },
        agents: vec![],
        results_dir: temp_dir(name),
        command_line: "test".into(),
        progress: false,
        plots: false,
        start_delay: Duration::from_millis(200),
    }
}
