//! Test support: start a real `chat-server` process and talk to it.
//!
//! Every integration test starts its own server on a free port (`--listen 127.0.0.1:0`); the
//! server prints `listening on http://ADDR` (`https://` with TLS) on stdout once every core
//! accepts connections.
#![allow(dead_code)]

pub mod browser;
pub mod client;
pub mod cluster;
pub mod persister;
pub mod raw_ws;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running server, killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub child: Child,
}

impl Server {
    /// Starts `chat-server` with two threads and the given extra flags.
    pub fn start(extra: &[&str]) -> Server {
        let mut args = vec!["--listen", "127.0.0.1:0", "--threads", "2"];
        args.extend_from_slice(extra);
        Server::start_with_args(&args)
    }

    pub fn start_with_args(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chat-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not report its address");
        let addr = line
            .strip_prefix("listening on http://")
            .or_else(|| line.strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .parse()
            .expect("address");
        Server { addr, child }
    }

    /// `ws://ADDR/ws?user=USER`
    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/ws?user={user}", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `https://ADDR/PATH`, for a server started with `--tls-cert`/`--tls-key`.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
