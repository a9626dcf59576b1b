//! Real backing services for the persister's tests: the tansu Kafka-protocol broker and a
//! private PostgreSQL, each on its own free loopback port and in its own temporary directory,
//! killed and removed when dropped. The tansu part is copied from
//! `server/tests/support/services.rs` (crates do not share test code).
//!
//! Everything here is blocking and std-only. From a tokio test, call it before the runtime work
//! starts or through `tokio::task::spawn_blocking`.
//!
//! The shared PostgreSQL (5432) is never stopped: a test that needs to stop PostgreSQL starts
//! its own with [`PrivatePostgres::start`].
//!
//! The broker is optional on a developer machine: [`Broker::start`] prints
//! `SKIPPED: needs the tansu broker (scripts/broker.sh install)` and returns `None` when the
//! binary is missing, unless `CHAT_REQUIRE_BROKER=1` (set by `scripts/test.sh`), which makes it
//! panic instead. The binary is `$CHAT_TANSU`, else `$CHAT_TOOLS/bin/tansu`, else
//! `${XDG_CACHE_HOME:-$HOME/.cache}/chat-tools/bin/tansu`, else `tansu` on `PATH` (the same
//! search as `scripts/broker.sh path`).
#![allow(dead_code)]

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
/// restart.
const PORT_MIN: u16 = 10_000;
const PORT_MAX: u16 = 22_000;

/// How long a service may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports this process handed out already (never handed out twice).
static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A random port with `port + offset` free as well for every offset.
fn pick_port(offsets: &[u16]) -> u16 {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let port = PORT_MIN + (random_u64() % u64::from(PORT_MAX - PORT_MIN)) as u16;
        let all = std::iter::once(port).chain(offsets.iter().map(|o| port + o));
        if taken.contains(&port) || !all.clone().all(port_is_free) {
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

/// Starts `cmd` with stdout and stderr appended to `log` (and stdin closed).
fn spawn_logged(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
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
fn terminate(child: &mut Child, grace: Duration) {
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

fn kill_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `ready` until it holds. Fails early when the process exits; the error carries the
/// tail of its log.
fn wait_ready(
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

fn accepts_tcp(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Kafka (tansu)

/// The tansu binary, if there is one (see the module docs for where it is looked for).
pub fn tansu_binary() -> Option<PathBuf> {
    let executable = |p: &Path| p.is_file().then(|| p.to_path_buf());
    if let Some(p) = std::env::var_os("CHAT_TANSU").filter(|p| !p.is_empty()) {
        return executable(Path::new(&p));
    }
    let cache = std::env::var_os("CHAT_TOOLS")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .filter(|p| !p.is_empty())
                .map(|p| PathBuf::from(p).join("chat-tools"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("chat-tools"))
        });
    if let Some(found) = cache.and_then(|c| executable(&c.join("bin").join("tansu"))) {
        return Some(found);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .find_map(|dir| executable(&dir.join("tansu")))
}

/// A tansu broker (Kafka protocol) on a free loopback port.
pub struct Broker {
    bin: PathBuf,
    port: u16,
    durable: bool,
    child: Option<Child>,
    dir: TempDir,
}

impl Broker {
    /// Starts a broker: durable keeps topics and records in SQLite in its temp dir (they survive
    /// [`Broker::stop`] + [`Broker::start_again`]); not durable keeps them in memory.
    ///
    /// `None` (after `SKIPPED: ...` on stderr) when tansu is not installed, unless
    /// `CHAT_REQUIRE_BROKER=1`: then it panics.
    pub fn start(durable: bool) -> Option<Broker> {
        let Some(bin) = tansu_binary() else {
            if std::env::var("CHAT_REQUIRE_BROKER").as_deref() == Ok("1") {
                panic!(
                    "CHAT_REQUIRE_BROKER=1 but the tansu broker was not found (CHAT_TANSU, \
                     ~/.cache/chat-tools/bin/tansu, PATH): run scripts/broker.sh install"
                );
            }
            eprintln!("SKIPPED: needs the tansu broker (scripts/broker.sh install)");
            return None;
        };
        let dir = TempDir::new("tansu");
        fs::create_dir_all(dir.path().join("data")).expect("create the broker's data dir");
        let mut broker = Broker {
            bin,
            port: 0,
            durable,
            child: None,
            dir,
        };
        let mut last_error = String::new();
        for _ in 0..5 {
            broker.port = free_port();
            match broker.spawn() {
                Ok(()) => return Some(broker),
                Err(e) => last_error = e,
            }
        }
        panic!("tansu broker did not start: {last_error}");
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// `tcp://127.0.0.1:PORT`, the form tansu's own flags take.
    fn tansu_url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<(), String> {
        // tansu resolves a sqlite:// URL relative to its working directory (host + path), so
        // it runs in the temp dir and stores data/tansu.db there.
        let storage = if self.durable {
            "sqlite://data/tansu.db"
        } else {
            "memory://tansu/"
        };
        let url = self.tansu_url();
        let log = self.log();
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", storage])
            .env(
                "RUST_LOG",
                std::env::var("CHAT_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            );
        let mut child = spawn_logged(&mut cmd, &log)
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        let port = self.port;
        let what = format!("tansu broker on port {port}");
        wait_ready(&what, &mut child, &log, START_TIMEOUT, || accepts_tcp(port))?;
        self.child = Some(child);
        Ok(())
    }

    /// `127.0.0.1:PORT`, the bootstrap address for Kafka clients (`--kafka`).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Runs `tansu ARGS...`; Ok(stdout + stderr) on exit 0, Err(the same) otherwise.
    fn tansu(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .current_dir(self.dir.path())
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// Creates a topic; one that exists already is fine (its partition count is kept).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let url = self.tansu_url();
        let partitions = partitions.to_string();
        let args = [
            "topic",
            "create",
            "--broker",
            &url,
            "--partitions",
            &partitions,
            name,
        ];
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.tansu(&args) {
                Ok(_) => return,
                Err(e) if e.contains("already exists") => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "services: tansu topic create {name}: {}; retrying",
                        e.trim()
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!(
                    "tansu topic create {name} on {url}: {e}\nbroker log:\n{}",
                    log_tail(&self.log(), 30)
                ),
            }
        }
    }

    /// Every topic of the broker with its partition count (`tansu topic list`).
    pub fn topic_partitions(&self) -> Vec<(String, usize)> {
        let url = self.tansu_url();
        let out = self
            .tansu(&["topic", "list", "--broker", &url])
            .unwrap_or_else(|e| panic!("tansu topic list on {url}: {e}"));
        // A JSON array of topic metadata: {"error_code":0,"name":"T",...,"partitions":[{...,
        // "partition_index":0,...},...]}. Partitions have no "name", and Kafka topic names are
        // [a-zA-Z0-9._-] (no escapes), so splitting at "name" cuts one topic per piece.
        out.split("\"name\":\"")
            .skip(1)
            .filter_map(|rest| {
                let (name, body) = rest.split_once('"')?;
                Some((
                    name.to_string(),
                    body.matches("\"partition_index\"").count(),
                ))
            })
            .collect()
    }

    /// The names of the broker's topics.
    pub fn topics(&self) -> Vec<String> {
        self.topic_partitions()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    /// How many partitions a topic has, `None` when it does not exist.
    pub fn partitions(&self, topic: &str) -> Option<usize> {
        self.topic_partitions()
            .into_iter()
            .find_map(|(n, p)| (n == topic).then_some(p))
    }

    /// Graceful stop: SIGTERM, SIGKILL after 10 s; waits for the exit. No-op when stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_TIMEOUT);
        }
    }

    /// SIGKILL (a crash); waits for the exit. No-op when stopped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_now(&mut child);
        }
    }

    /// Starts the stopped or killed broker again on the same port with the same storage (a
    /// durable broker keeps its topics and records; an in-memory one starts empty). Panics when
    /// it is running.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again: the broker on port {} still runs (stop() or kill() it first)",
            self.port
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("services: restarting tansu on {}: {e}; retrying", self.port);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("tansu broker did not start again: {e}"),
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL (private)

/// The newest `/usr/lib/postgresql/VERSION/bin` (Debian's layout).
fn postgres_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e} (apt-get install postgresql)", root.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| panic!("no PostgreSQL server under {}", root.display()))
}

/// Runs `cmd` (a shell command line) as the `postgres` user when this process is root
/// (PostgreSQL refuses to run as root), else as ourselves.
fn as_postgres(cmd: &str) -> std::process::Output {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c = if root {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", cmd]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", cmd]);
        c
    };
    c.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

/// A private PostgreSQL server (`initdb` + `pg_ctl`) on a free port, in a temporary directory,
/// that a test may stop and start again. Trust authentication, user `postgres`.
pub struct PrivatePostgres {
    bin: PathBuf,
    port: u16,
    running: bool,
    dir: TempDir,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = postgres_bin_dir();
        let dir = TempDir::new("pg");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "chown {} to postgres",
                dir.path().display()
            );
        }
        let data = dir.path().join("data");
        let out = as_postgres(&format!(
            "{} -D {} --auth=trust -U postgres -E UTF8 --no-sync",
            bin.join("initdb").display(),
            data.display()
        ));
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PrivatePostgres {
            bin,
            port: 0,
            running: false,
            dir,
        };
        let mut last_error = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            match pg.pg_ctl_start() {
                Ok(()) => return pg,
                Err(e) => last_error = e,
            }
        }
        panic!("private PostgreSQL did not start: {last_error}");
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let out = as_postgres(&format!(
            "{} -D {} -w -t 60 -l {} -o '-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off' start",
            self.bin.join("pg_ctl").display(),
            self.dir.path().join("data").display(),
            self.log().display(),
            self.port,
            self.dir.path().display(),
        ));
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start on port {}: {}{}\n{}",
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log_tail(&self.log(), 20)
            ))
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let out = as_postgres(&format!(
            "{} -D {} -w -t 60 -m {mode} stop",
            self.bin.join("pg_ctl").display(),
            self.dir.path().join("data").display(),
        ));
        if !out.status.success() {
            eprintln!(
                "services: pg_ctl stop: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = false;
    }

    /// Stops the server (`-m fast`: clients are disconnected, open transactions roll back).
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Starts the stopped server again on the same port with the same data.
    pub fn start_again(&mut self) {
        assert!(!self.running, "start_again: PostgreSQL still runs");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("services: restarting PostgreSQL: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("PostgreSQL did not start again: {e}"),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
    }
}
