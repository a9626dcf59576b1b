//! The tansu Kafka-protocol broker as a child process, on durable (`sqlite://`) or in-memory
//! storage, that tests may stop, kill and start again.
//!
//! The broker is optional on a developer machine: [`Broker::start`] prints
//! `SKIPPED: needs the tansu broker (scripts/broker.sh install)` and returns `None` when the
//! binary is missing, unless `CHAT_REQUIRE_BROKER=1` (set by `scripts/test.sh`), which makes it
//! panic instead. The binary is `$CHAT_TANSU`, else `$CHAT_TOOLS/bin/tansu`, else
//! `${XDG_CACHE_HOME:-$HOME/.cache}/chat-tools/bin/tansu`, else `tansu` on `PATH` (the same
//! search as `scripts/broker.sh path`).

use crate::process::*;
use crate::service::{Service, Spawn};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A tansu broker (Kafka protocol) on a free loopback port. Durable, it keeps its topics and
/// records over [`Broker::stop`] + [`Broker::start_again`]; in memory, it starts again empty.
pub type Broker = Service<Tansu>;

/// How a [`Broker`] runs tansu: its binary, storage and temp dir.
pub struct Tansu {
    bin: PathBuf,
    durable: bool,
    dir: TempDir,
}

impl Tansu {
    fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }
}

/// `tcp://127.0.0.1:PORT`, the form tansu's own flags take.
fn tansu_url(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

impl Spawn for Tansu {
    const WHAT: &'static str = "tansu broker";

    fn spawn(&self, port: u16) -> Result<Child, String> {
        // tansu resolves a sqlite:// URL relative to its working directory (host + path), so
        // it runs in the temp dir and stores data/tansu.db there.
        let storage = if self.durable {
            "sqlite://data/tansu.db"
        } else {
            "memory://tansu/"
        };
        let url = tansu_url(port);
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
        let what = format!("tansu broker on port {port}");
        wait_ready(&what, &mut child, &log, START_TIMEOUT, || accepts_tcp(port))?;
        Ok(child)
    }
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
        let tansu = Tansu { bin, durable, dir };
        Some(Service::start_on(tansu, free_port))
    }

    /// `127.0.0.1:PORT`, the bootstrap address for Kafka clients (`--kafka`).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.spec.dir.path()
    }

    /// Runs `tansu ARGS...`; Ok(stdout + stderr) on exit 0, Err(the same) otherwise.
    fn tansu(&self, args: &[&str]) -> Result<String, String> {
        let bin = &self.spec.bin;
        let out = Command::new(bin)
            .current_dir(self.dir())
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
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
        let url = tansu_url(self.port);
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
                    log_tail(&self.spec.log(), 30)
                ),
            }
        }
    }

    /// Every topic of the broker with its partition count (`tansu topic list`).
    pub fn topic_partitions(&self) -> Vec<(String, usize)> {
        let url = tansu_url(self.port);
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
}
