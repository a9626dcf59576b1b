//! The workspace's own binaries as child processes: `chat-server` nodes and the
//! `chat-persister`, found next to the test executable (`cargo test --workspace` builds them),
//! each with its log in the drill's directory, killable, signalable and restartable.

use chat_testkit::{log_tail, send_signal};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to print its first line (address) after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A binary of this workspace: `<target>/<profile>/<name>`, the test executable being
/// `<target>/<profile>/deps/<test>-<hash>`. Panics with what to do when it is not built.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in <target>/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{name} is not built: expected {} next to the test executable. `cargo test --workspace` \
         builds every binary of the workspace; with `-p chat-drills` alone, build them first: \
         cargo build -p chat-server -p chat-persister",
        bin.display()
    );
    bin
}

/// Starts `bin ARGS` with stderr appended to `log` and returns it with its first stdout line
/// (the rest of stdout is drained by a thread so that the process never blocks on it).
fn spawn_reporting(
    bin: &Path,
    args: &[String],
    log: &Path,
    env: &[(&str, &str)],
) -> (Child, String) {
    let err = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) => (child, line),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!(
                "{} {args:?} printed nothing within {START_TIMEOUT:?} (exit: {status:?}); log {}:\n{}",
                bin.display(),
                log.display(),
                log_tail(log, 40)
            )
        }
    }
}

/// Waits up to `timeout` for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One `chat-server` process (a node of the drill's cluster).
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    exited: Option<ExitStatus>,
    log: PathBuf,
}

impl Node {
    /// Starts `chat-server --listen 127.0.0.1:0 ARGS` and waits for `listening on http://ADDR`.
    pub fn start(name: &str, args: &[String], dir: &Path) -> Node {
        let bin = workspace_binary("chat-server");
        let log = dir.join(format!("{name}.log"));
        let mut all = vec!["--listen".to_string(), "127.0.0.1:0".to_string()];
        all.extend_from_slice(args);
        let level = std::env::var("CHAT_DRILL_SERVER_LOG").unwrap_or_else(|_| "info".into());
        let (child, line) = spawn_reporting(&bin, &all, &log, &[("RUST_LOG", &level)]);
        let addr = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"));
        Node {
            name: name.to_string(),
            addr,
            child,
            exited: None,
            log,
        }
    }

    /// `ws://ADDR`, the form loadgen's `urls` take.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (a crash), then reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// Sends a signal ("TERM", ...) without waiting.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// The exit status once it exited, waiting up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_exit(&mut self.child, timeout);
        }
        self.exited
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        chat_testkit::print_log_if_panicking(&self.name, &self.log, 60);
    }
}

/// The `chat-persister` process; [`Persister::restart`] starts it again with the same flags
/// (same consumer group, same database).
pub struct Persister {
    args: Vec<String>,
    child: Option<Child>,
    metrics_addr: String,
    log: PathBuf,
    pub starts: u32,
}

impl Persister {
    /// `host:port` of its `/metrics`.
    pub fn metrics_addr(&self) -> &str {
        &self.metrics_addr
    }

    /// Starts `chat-persister` on `topic` (consumer group `group`) writing `pg`.
    pub fn start(kafka: &str, pg: &str, topic: &str, group: &str, dir: &Path) -> Persister {
        let args: Vec<String> = [
            "--kafka",
            kafka,
            "--postgres",
            pg,
            "--topic",
            topic,
            "--group",
            group,
            "--metrics-listen",
            "127.0.0.1:0",
            "--batch-wait-ms",
            "20",
            "--session-timeout-ms",
            "6000",
            "--lag-interval-ms",
            "500",
            "--retry-max-ms",
            "1000",
            "--log-interval",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut p = Persister {
            args,
            child: None,
            metrics_addr: String::new(),
            log: dir.join("persister.log"),
            starts: 0,
        };
        p.restart();
        p
    }

    /// Starts it (again, after [`Persister::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the persister still runs");
        let bin = workspace_binary("chat-persister");
        let _ = writeln!(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap(),
            "==== drill: start #{}",
            self.starts + 1
        );
        let level = std::env::var("CHAT_DRILL_PERSISTER_LOG").unwrap_or_else(|_| "info".into());
        let (child, line) = spawn_reporting(&bin, &self.args, &self.log, &[("RUST_LOG", &level)]);
        self.metrics_addr = line
            .strip_prefix("metrics on http://")
            .unwrap_or_else(|| panic!("persister: unexpected first line {line:?}"))
            .to_string();
        self.child = Some(child);
        self.starts += 1;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// How it ended, when it exited on its own (it is then reaped: [`Persister::restart`] works).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGKILL (a crash), then reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is still running (panics with its log when it exited on its own).
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "the persister exited ({status}); log:\n{}",
                    self.log_tail(60)
                );
            }
        }
    }

    /// The sum of every series of a metric in `/metrics` (None while it does not answer).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, text) = http_get(&self.metrics_addr, "/metrics").ok()?;
        (status == 200).then(|| metric_sum(&text, name))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.kill();
        chat_testkit::print_log_if_panicking("persister", &self.log, 60);
    }
}

/// The sum over every series of `name` in Prometheus text (0 when absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A blocking HTTP/1.1 GET with short timeouts: (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let sock: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write {addr}: {e}"))?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)
        .map_err(|e| format!("read {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path} on {addr}: not HTTP: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
