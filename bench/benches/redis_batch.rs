//! The cluster bus's publish step against a real Redis: one `EVALSHA` of the server's
//! `PUBLISH_LUA` per round trip against pipelines of 16 / 64 / 256 (what the bus thread sends:
//! everything a core accepted since the last round trip).
//!
//! The script, the key names and the arguments are the server's own: `PUBLISH_LUA` and the key
//! functions come from `chat_server::bus::redis` (server/src/lib.rs), the arguments are built
//! as `publish_cmd` in server/src/bus/cluster.rs builds them (msg JSON head and tail around the
//! seq, floor, cache length, dedupe TTL, plain publish, room channel). Connection as the
//! server's: `ConnectionManager`, RESP3, pipelines with `ignore_errors`.
//!
//! Every run uses its own rooms (`bench-<pid>-<time>-r<k>`, so keys `chat:{bench-...}:...`) and a
//! fresh `cid` per message (no dedupe hits), and deletes its keys (SCAN MATCH + UNLINK on the
//! run's prefix) after each variant and at the end; nothing else in Redis is touched.
//! `CHAT_BENCH_REDIS` overrides the address (default `redis://127.0.0.1:6379`).

use bytes::BytesMut;
use chat_server::bus::redis::{dedupe_key, log_key, room_channel, seq_key, PUBLISH_LUA};
use chat_wire::protocol::Msg;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages per criterion iteration, for every variant.
const MESSAGES: usize = 256;
const ROOMS: usize = 64;
/// Dedupe TTL (s) passed to the script; short so that keys of an interrupted run go away.
const DEDUPE_TTL: &str = "30";
const HISTORY_LEN: &str = "1000";

struct Bench {
    conn: ConnectionManager,
    sha: String,
    run: String,
    rooms: Vec<String>,
    body: String,
    next: u64,
}

impl Bench {
    async fn connect(url: &str) -> RedisResult<Bench> {
        let url = if url.contains('?') {
            url.to_owned()
        } else {
            format!("{}?protocol=resp3", url.trim_end_matches('/'))
        };
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(1);
        let mut conn = client.get_connection_manager_with_config(config).await?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(PUBLISH_LUA)
            .query_async(&mut conn)
            .await?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let run = format!("bench-{}-{nanos:x}", std::process::id());
        let rooms = (0..ROOMS).map(|k| format!("{run}-r{k}")).collect();
        Ok(Bench {
            conn,
            sha,
            run,
            rooms,
            body: chat_bench::chat_text(100, true),
            next: 0,
        })
    }

    /// One publish as the bus builds it (`publish_cmd` in server/src/bus/cluster.rs).
    fn publish_cmd(&mut self) -> redis::Cmd {
        let n = self.next;
        self.next += 1;
        let room = &self.rooms[n as usize % ROOMS];
        let cid = format!("c-{n}");
        let id = format!("5f3a9c0e12d4b6a8-0-{n:x}");
        let msg = Msg {
            room,
            seq: 0,
            id: &id,
            from: "alice",
            ts: 1_764_000_000_000 + n,
            body: &self.body,
            cid: &cid,
        };
        let (mut head, mut tail) = (BytesMut::new(), BytesMut::new());
        msg.encode_head(&mut head);
        msg.encode_tail(&mut tail);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha)
            .arg(3)
            .arg(seq_key(room))
            .arg(log_key(room))
            .arg(dedupe_key(room, "alice", &cid))
            .arg(&head[..])
            .arg(&tail[..])
            .arg("0")
            .arg(HISTORY_LEN)
            .arg(DEDUPE_TTL)
            .arg("p")
            .arg(room_channel(room));
        cmd
    }

    /// `MESSAGES` publishes, `batch` per round trip (1: one `EVALSHA` per round trip).
    async fn publish(&mut self, batch: usize) {
        let mut left = MESSAGES;
        while left > 0 {
            let n = batch.min(left);
            left -= n;
            if n == 1 {
                let cmd = self.publish_cmd();
                let v: Value = cmd.query_async(&mut self.conn).await.unwrap();
                check(Ok(v));
            } else {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for _ in 0..n {
                    pipe.add_command(self.publish_cmd());
                }
                let answers: Vec<RedisResult<Value>> =
                    pipe.query_async(&mut self.conn).await.unwrap();
                assert_eq!(answers.len(), n);
                answers.into_iter().for_each(check);
            }
        }
    }

    /// Deletes every key of this run.
    async fn cleanup(&mut self) -> RedisResult<u64> {
        let pattern = format!("chat:{{{}-*", self.run);
        let mut cursor = 0u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut self.conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut self.conn)
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// `{seq, msg}` with a new seq (every cid is fresh, so never the `{0, first}` of a retry).
fn check(answer: RedisResult<Value>) {
    match answer.unwrap() {
        Value::Array(items) if items.len() == 2 => match items[0] {
            Value::Int(seq) if seq > 0 => {}
            ref other => panic!("publish answered seq {other:?}"),
        },
        other => panic!("publish answered {other:?}"),
    }
}

fn redis_batch(c: &mut Criterion) {
    let url = chat_bench::redis_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connected = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), Bench::connect(&url))
            .await
            .map_err(|_| "no answer within 3 s".to_string())?
            .map_err(|e| e.to_string())
    });
    let mut bench = match connected {
        Ok(b) => b,
        Err(e) => {
            println!("SKIPPED: redis_batch needs Redis at {url} ({e}); set CHAT_BENCH_REDIS");
            return;
        }
    };
    let mut group = c.benchmark_group("redis_batch/publish_lua");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    for batch in [1, 16, 64, 256] {
        let id = if batch == 1 {
            BenchmarkId::new("evalsha_per_round_trip", MESSAGES)
        } else {
            BenchmarkId::new(format!("pipeline_{batch}"), MESSAGES)
        };
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        bench.publish(batch).await;
                    }
                    started.elapsed()
                })
            })
        });
        rt.block_on(bench.cleanup()).unwrap();
    }
    group.finish();
    let left = rt.block_on(bench.cleanup()).unwrap();
    assert_eq!(left, 0, "every key of the run deleted");
}

criterion_group!(benches, redis_batch);
criterion_main!(benches);
