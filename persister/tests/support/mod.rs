//! Helpers for the persister's end-to-end tests: a database of its own per test, the real
//! `chat-persister` binary as a child process, records produced with rdkafka.
#![allow(dead_code)]

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

use chat_testkit::ScratchDb;
#[allow(unused_imports)]
pub use chat_testkit::{Broker, PrivatePostgres, TempDir};

/// The shared PostgreSQL (never stopped, never wiped: each test makes its own database).
pub const SHARED_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

fn unique_suffix() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!(
        "{}_{:012x}",
        std::process::id(),
        h.finish() & 0xffff_ffff_ffff
    )
}

/// A name no other test (or test run) uses, for topics, groups and databases.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", unique_suffix())
}

/// Opens a client; its connection runs on a task.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of its own on a PostgreSQL server, dropped (with its connections) at the end.
pub struct Db {
    scratch: ScratchDb,
}

impl Db {
    /// A new database on the shared server.
    pub async fn create() -> Db {
        Db::create_on(SHARED_PG).await
    }

    /// A new database on the server of `admin_url` (any database there).
    pub async fn create_on(admin_url: &str) -> Db {
        Db {
            scratch: ScratchDb::create(admin_url, &unique("persister_test")),
        }
    }

    pub fn url(&self) -> &str {
        &self.scratch.url
    }

    pub async fn client(&self) -> Client {
        connect(self.url()).await
    }

    /// `SELECT count(*) FROM messages`, 0 while the table does not exist yet, `None` when the
    /// server does not answer.
    pub async fn try_count(&self) -> Option<i64> {
        let (client, connection) = tokio_postgres::connect(self.url(), NoTls).await.ok()?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        match client.query_one("SELECT count(*) FROM messages", &[]).await {
            Ok(row) => Some(row.get(0)),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                Some(0)
            }
            Err(_) => None,
        }
    }

    pub async fn count(&self) -> i64 {
        self.try_count().await.expect("count messages")
    }

    /// The result of a query that returns one `bigint`.
    pub async fn scalar(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// Sum of the stored next offsets of `topic` over its partitions.
    pub async fn offsets(&self, topic: &str) -> Vec<(i32, i64)> {
        self.client()
            .await
            .query(
                "SELECT partition, next_offset FROM persister_offsets WHERE topic = $1 ORDER BY 1",
                &[&topic],
            )
            .await
            .expect("read persister_offsets")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Polls the row count until it is `n` (panics after `timeout`, or when it exceeds `n`).
    pub async fn wait_rows(&self, n: i64, timeout: Duration, persister: &mut Persister) {
        let deadline = Instant::now() + timeout;
        let mut last = -1;
        loop {
            if let Some(c) = self.try_count().await {
                assert!(c <= n, "{c} rows, more than the {n} expected");
                if c == n {
                    return;
                }
                last = c;
            }
            if let Some(status) = persister.try_wait() {
                panic!(
                    "the persister exited ({status}) at {last} of {n} rows; log:\n{}",
                    persister.log_tail(60)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{last} of {n} rows after {timeout:?}; persister log:\n{}",
                persister.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `chat-persister` binary, running.
pub struct Persister {
    child: Child,
    /// Kept open: the persister may print more to stdout.
    _stdout: BufReader<ChildStdout>,
    metrics_addr: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Persister {
    /// Starts it with `--kafka`, `--postgres`, `--topic`, `--group`, a free metrics port, and
    /// `extra` flags; returns once it printed its metrics address.
    pub fn start(kafka: &str, pg: &str, topic: &str, group: &str, extra: &[&str]) -> Persister {
        let dir = TempDir::new("persister");
        let log = dir.path().join("persister.log");
        let err = std::fs::File::create(&log).expect("create the log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-persister"))
            .args(["--kafka", kafka, "--postgres", pg, "--topic", topic])
            .args(["--group", group, "--metrics-listen", "127.0.0.1:0"])
            .args(["--session-timeout-ms", "6000", "--lag-interval-ms", "500"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("CHAT_PERSISTER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn chat-persister");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the first line");
        let metrics_addr = line
            .trim()
            .strip_prefix("metrics on http://")
            .unwrap_or_else(|| {
                panic!(
                    "first line {line:?} is not `metrics on http://ADDR`; log:\n{}",
                    chat_testkit::log_tail(&log, 30)
                )
            })
            .to_string();
        Persister {
            child,
            _stdout: stdout,
            metrics_addr,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        chat_testkit::log_tail(&self.log, lines)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `GET /metrics`, the body.
    pub fn metrics(&self) -> String {
        http_get(&self.metrics_addr, "/metrics")
    }

    /// The value of an unlabelled sample in `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
    }

    /// Sends SIGTERM and waits for the exit (panics after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        chat_testkit::send_signal(self.child.id(), "TERM");
        self.wait(timeout)
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the persister did not exit within {timeout:?}; log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.kill();
        chat_testkit::print_log_if_panicking("persister", &self.log, 80);
    }
}

/// A minimal HTTP/1.1 GET, the response body.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// The `msg` JSON of PROTOCOL.md for (room, seq), with a deterministic id, sender, ts and body.
pub fn msg_json(room: &str, seq: i64) -> String {
    serde_json::json!({
        "type": "msg",
        "room": room,
        "seq": seq,
        "id": format!("node-0-{seq:x}"),
        "from": format!("user{}", seq % 7),
        "ts": ts_of(seq),
        "body": format!("hello {room} #{seq} \u{e9}\"\\"),
        "cid": format!("c-{room}-{seq}"),
    })
    .to_string()
}

/// The `ts` that [`msg_json`] gives (ms since the Unix epoch).
pub fn ts_of(seq: i64) -> i64 {
    1_700_000_000_000 + seq * 7
}

/// Produces `records` (key, value) and waits until every one is acknowledged.
pub fn produce(brokers: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for (key, value) in records {
        let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "produce: {e}"
                    );
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("every record delivered");
}

/// `n` messages over `rooms` rooms, seq 1.. per room, interleaved: (key, value) pairs.
pub fn messages(rooms: usize, per_room: i64) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(rooms * per_room as usize);
    for seq in 1..=per_room {
        for r in 0..rooms {
            let room = format!("room-{r}");
            out.push((room.clone(), msg_json(&room, seq).into_bytes()));
        }
    }
    out
}

/// Produces one record and returns its (partition, offset).
pub async fn produce_one(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: &[u8],
) -> (i32, i64) {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .payload(value);
    if let Some(k) = key {
        record = record.key(k);
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    (delivery.partition, delivery.offset)
}

pub fn future_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .create()
        .expect("producer")
}

/// Sum of the high watermarks of `topic`'s partitions 0..`partitions`.
pub fn high_watermarks(brokers: &str, topic: &str, partitions: i32) -> Vec<(i32, i64)> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer for watermarks");
    (0..partitions)
        .map(|p| {
            let (_, high) = rdkafka::consumer::Consumer::fetch_watermarks(
                &consumer,
                topic,
                p,
                Duration::from_secs(10),
            )
            .expect("watermarks");
            (p, high)
        })
        .collect()
}
