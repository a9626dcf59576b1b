//! A private `redis-server` and a three-master Redis Cluster (with or without replicas), each on free loopback ports in a
//! temporary directory: tests may stop, kill, restart or wipe them (never the shared 6379).

use crate::process::*;
use crate::service::{Service, Spawn};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `PING` over RESP: true once Redis answers `+PONG` (not while it is still loading its data).
pub fn redis_pong(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    s.write_all(b"PING\r\n").is_ok()
        && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// `redis-cli -p PORT ARGS...`, its stdout with the trailing newline trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli (apt-get install redis-tools)");
    assert!(
        out.status.success(),
        "redis-cli -p {port} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// The flags every test Redis gets: loopback only, every write fsynced to the append-only file
/// before it is answered (so a stop, a kill or a restart never loses an acknowledged write), no
/// RDB snapshots.
const REDIS_BASE_ARGS: &[&str] = &[
    "--bind",
    "127.0.0.1",
    "--daemonize",
    "no",
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--save",
    "",
    "--enable-debug-command",
    "local",
];

/// One private `redis-server` process with its own port and data directory. Its append-only
/// file keeps every acknowledged write over a stop or a kill and [`RedisServer::start_again`].
pub type RedisServer = Service<Redis>;

/// How a [`RedisServer`] runs `redis-server`: its extra flags and data directory.
pub struct Redis {
    extra: Vec<String>,
    dir: TempDir,
}

impl Redis {
    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }
}

impl Spawn for Redis {
    const WHAT: &'static str = "redis-server";

    fn spawn(&self, port: u16) -> Result<Child, String> {
        let log = self.log();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(REDIS_BASE_ARGS)
            .args(&self.extra);
        let mut child = spawn_logged(&mut cmd, &log)
            .map_err(|e| format!("spawn redis-server (apt-get install redis-server): {e}"))?;
        let what = format!("redis-server on port {port}");
        wait_ready(&what, &mut child, &log, START_TIMEOUT, || redis_pong(port))?;
        // The PONG could come from another Redis that took the port first: ours must say so.
        let info = redis_cli(port, &["info", "server"]);
        let ours = format!("process_id:{}", child.id());
        if !info.lines().any(|l| l.trim() == ours) {
            kill_now(&mut child);
            return Err(format!("port {port} is taken by another Redis"));
        }
        Ok(child)
    }
}

impl RedisServer {
    /// Starts a Redis on a free port in a new temporary directory.
    pub fn start() -> RedisServer {
        RedisServer::start_with_args(&[])
    }

    /// As [`RedisServer::start`], with extra `redis-server` flags (say
    /// `["--maxmemory", "1mb", "--maxmemory-policy", "allkeys-lru"]`); restarts keep them.
    pub fn start_with_args(extra: &[&str]) -> RedisServer {
        RedisServer::start_on_free_port("redis", extra, &[])
    }

    /// On a port with `port + offset` free too for every offset.
    fn start_on_free_port(prefix: &str, extra: &[&str], port_offsets: &[u16]) -> RedisServer {
        let redis = Redis {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: TempDir::new(prefix),
        };
        Service::start_on(redis, || pick_port(port_offsets))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The data directory (append-only files, `redis.log`).
    pub fn dir(&self) -> &Path {
        self.spec.dir.path()
    }

    /// `redis-cli -p PORT ARGS...` (stdout, trimmed); panics when redis-cli fails.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// Redis loses its data: stops it, deletes the append-only files and snapshots (keeping
    /// `redis.log` and, for a cluster node, `nodes.conf`), starts it again on the same port,
    /// empty.
    pub fn flushall_and_restart_without_data(&mut self) {
        self.stop();
        for name in ["appendonlydir", "appendonly.aof", "dump.rdb"] {
            let p = self.dir().join(name);
            let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
        }
        self.start_again();
    }
}

/// A Redis Cluster of three masters (slots split evenly by `redis-cli --cluster create`),
/// without replicas or with some per master, each a [`RedisServer`] with cluster mode on.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with_replicas(0, 5000)
    }

    /// Three masters with `replicas` replicas each (`redis-cli --cluster create
    /// --cluster-replicas`), and `--cluster-node-timeout node_timeout_ms`: a master is failed
    /// over about that long after it stops answering.
    pub fn start_with_replicas(replicas: usize, node_timeout_ms: u64) -> RedisCluster {
        let timeout = node_timeout_ms.to_string();
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::start_on_free_port(
                    "redis-cluster",
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        &timeout,
                        // With replicas, they are the copy: a failover never reads this file,
                        // and fsyncing every write only slows the drills down.
                        "--appendonly",
                        if replicas > 0 { "no" } else { "yes" },
                    ],
                    &[CLUSTER_BUS_OFFSET],
                )
            })
            .collect();
        let cluster = RedisCluster { nodes };

        let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr()).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create {addrs:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(START_TIMEOUT);
        if replicas > 0 {
            cluster.wait_replicas(replicas, START_TIMEOUT);
        }
        cluster
    }

    /// Waits until every master has `replicas` replicas online (`INFO replication` of each
    /// replica: `master_link_status:up`, counted per master).
    pub fn wait_replicas(&self, replicas: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let masters: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| redis_pong(self.nodes[i].port))
                .filter(|&i| self.replication_field(i, "role").as_deref() == Some("master"))
                .collect();
            let ready = masters.iter().all(|&m| {
                self.replicas_of(m)
                    .iter()
                    .filter(|&&r| {
                        self.replication_field(r, "master_link_status").as_deref() == Some("up")
                    })
                    .count()
                    >= replicas
            });
            if ready && !masters.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Redis Cluster replicas not in sync within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the node that is master of `slot` now (asked of a running node).
    pub fn master_of(&self, slot: u16) -> Option<usize> {
        let asker = (0..self.nodes.len()).find(|&i| redis_pong(self.nodes[i].port))?;
        let shards = self.nodes[asker].cli(&["cluster", "slots"]);
        // redis-cli prints CLUSTER SLOTS flat: start, end, master ip, port, id, replicas...
        let lines: Vec<&str> = shards.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 4 < lines.len() {
            if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>()) {
                if (start..=end).contains(&slot) {
                    let port: u16 = lines[i + 3].parse().ok()?;
                    return self.nodes.iter().position(|n| n.port() == port);
                }
            }
            i += 1;
        }
        None
    }

    /// The indexes of the replicas of node `master` (by `INFO replication` of each node).
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        let port = self.nodes[master].port();
        (0..self.nodes.len())
            .filter(|&i| {
                i != master
                    && redis_pong(self.nodes[i].port)
                    && self.nodes[i]
                        .cli(&["info", "replication"])
                        .lines()
                        .any(|l| l.trim() == format!("master_port:{port}"))
            })
            .collect()
    }

    /// A field of `INFO replication` of node `i` (say `master_repl_offset`, `role`).
    pub fn replication_field(&self, i: usize, field: &str) -> Option<String> {
        let info = self.nodes[i].cli(&["info", "replication"]);
        info.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{field}:")))
            .map(str::to_string)
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let states: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| redis_pong(n.port))
                .map(|n| {
                    let info = n.cli(&["cluster", "info"]);
                    let state = info
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("cluster_state:"))
                        .unwrap_or("?");
                    format!("{}={state}", n.port)
                })
                .collect();
            if states.iter().all(|s| s.ends_with("=ok")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Redis Cluster not ok within {timeout:?}: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port()).collect()
    }

    /// One node, to stop, kill or restart it.
    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}
