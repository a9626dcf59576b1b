//! Processes and ports: free loopback ports, temporary directories, logged child processes,
//! signals and readiness polling. The building blocks of the service types in this crate.

use std::collections::hash_map::RandomState;
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ports are picked at random from here: below the kernel's ephemeral range (32768-60999 on
/// Linux), so that no outgoing connection takes a port while its server is stopped for a
/// restart, and low enough that a Redis Cluster node's bus port (port + 10000) stays below
/// 32768 too.
const PORT_MIN: u16 = 10_000;
const PORT_MAX: u16 = 22_000;
/// Redis Cluster's bus listens on the client port + 10000.
pub const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// How long a service may take to accept connections after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service gets to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports this process handed out already (never handed out twice).
static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A random port with `port + offset` free as well for every offset.
pub fn pick_port(offsets: &[u16]) -> u16 {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let port = PORT_MIN + (random_u64() % u64::from(PORT_MAX - PORT_MIN)) as u16;
        let all = std::iter::once(port).chain(offsets.iter().map(|o| port + o));
        // Every port of the set against what was handed out: a Redis Cluster node's bus port
        // (port + 10000) must not be a port `free_port` gave a test that has not bound it yet.
        if all.clone().any(|p| taken.contains(&p)) || !all.clone().all(port_is_free) {
            continue;
        }
        taken.extend(all);
        return port;
    }
    panic!("no free port in {PORT_MIN}..{PORT_MAX}");
}

/// A free TCP port on 127.0.0.1 (not in the ephemeral range; never the same one twice in a
/// process). Another process could still take it before it is used: services started here
/// retry with another port when that happens.
pub fn free_port() -> u16 {
    pick_port(&[])
}

/// A directory under the system temp dir, removed (with its contents) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "chat-test-{prefix}-{}-{:016x}",
            std::process::id(),
            random_u64()
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// For the `Drop` of a process a test runs: when the test is failing (the thread panics),
/// prints the last `lines` lines of its log under `---- WHAT log (PATH):`.
pub fn print_log_if_panicking(what: &str, log: &Path, lines: usize) {
    if std::thread::panicking() {
        eprintln!(
            "---- {what} log ({}):\n{}",
            log.display(),
            log_tail(log, lines)
        );
    }
}

/// Starts `cmd` with stdout and stderr appended to `log` (and stdin closed).
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
}

/// Sends `signal` ("TERM", "KILL", "STOP", ...) to a process, std-only: through the shell's
/// `kill` builtin.
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, then SIGKILL once `grace` has passed; waits for the exit either way.
pub fn terminate(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    send_signal(child.id(), "TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn kill_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `ready` until it holds. Fails early when the process exits; the error carries the
/// tail of its log.
pub fn wait_ready(
    what: &str,
    child: &mut Child,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before it was ready; {}:\n{}",
                log.display(),
                log_tail(log, 30)
            ));
        }
        if Instant::now() >= deadline {
            kill_now(child);
            return Err(format!(
                "{what} was not ready within {timeout:?}; {}:\n{}",
                log.display(),
                log_tail(log, 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Starts a service on a port from `pick` with `start`, up to 5 times with another port:
/// another process may take a free port between the check and the service's bind. Panics with
/// the last error when every try failed. `what` names the service in the message.
pub fn start_on_some_port(
    what: &str,
    mut pick: impl FnMut() -> u16,
    mut start: impl FnMut(u16) -> Result<(), String>,
) {
    let mut last_error = String::new();
    for _ in 0..5 {
        match start(pick()) {
            Ok(()) => return,
            Err(e) => last_error = e,
        }
    }
    panic!("{what} did not start: {last_error}");
}

/// Starts a stopped or killed service again with `spawn`, retrying for [`START_TIMEOUT`]: its
/// port can stay busy briefly (say a client's socket in TIME_WAIT bound to it by chance), and
/// it is ours. Panics when `running` (the service was not stopped first) or when it does not
/// start in time. `what` names the service in messages.
pub fn start_again(
    what: &str,
    port: u16,
    running: bool,
    mut spawn: impl FnMut() -> Result<(), String>,
) {
    assert!(
        !running,
        "start_again: {what} on port {port} still runs (stop() or kill() it first)"
    );
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match spawn() {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("services: restarting {what} on {port}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{what} did not start again: {e}"),
        }
    }
}

pub fn accepts_tcp(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
