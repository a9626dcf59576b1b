//! Replays from PostgreSQL under a reconnect storm's rules: a `resume` far behind the cache
//! reads the database page by page, at the client's pace, and at most `--pg-replays` replays
//! read it at once on a node (the others wait, then hear `unavailable`).

mod support;

use chat_testkit::{RedisServer, ScratchDb};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::client::{http_get, send_req, Client};
use support::Server;
use tokio_postgres::NoTls;

const BACKLOG: usize = 6_000;
const BODY: usize = 4_000;

/// A scratch database holding the persister's tables (made by its own migrations), a private
/// Redis, and a node on both that keeps 5 messages per room in the cache; each of `rooms` got
/// `per_room` messages of `body` bytes (room `far` alone: [`BACKLOG`] of [`BODY`]), all of
/// them stored in PostgreSQL as the persister would.
struct Stack {
    _db: ScratchDb,
    _redis: RedisServer,
    server: Server,
}

async fn stack(extra: &[&str]) -> Stack {
    stack_of(extra, &["far".to_string()], BACKLOG, BODY).await
}

async fn stack_of(extra: &[&str], rooms: &[String], per_room: usize, body: usize) -> Stack {
    let db = ScratchDb::create(
        "postgres://postgres@127.0.0.1:5432/test",
        &format!("chat_replay_test_{}", fastrand::u64(..)),
    );
    let (mut pg, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(conn);
    chat_persister::schema::migrate(&mut pg).await.unwrap();
    let redis = RedisServer::start();
    let (redis_url, db_url) = (redis.url(), db.url.clone());
    let mut args = vec![
        "--redis",
        &redis_url,
        "--postgres",
        &db_url,
        "--history-len",
        "5",
        "--outbound-limit",
        "1048576",
        "--rate-limit",
        "0",
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);

    let mut sender = Client::connect(&server.ws_url("sender"), "sender").await;
    for room in rooms {
        sender.join(room).await;
    }
    let body = "z".repeat(body);
    let total = rooms.len() * per_room;
    let mut sent = Vec::new();
    for chunk in 0..total.div_ceil(500) {
        let ids = chunk * 500..((chunk + 1) * 500).min(total);
        let end = ids.end;
        sender
            .send_all(ids.map(|i| send_req(&rooms[i % rooms.len()], &format!("c{i}"), &body)))
            .await;
        while sent.len() < end {
            let v = sender.recv().await;
            if v["type"] == "msg" {
                sent.push(v);
            }
        }
    }
    // Stored as the persister stores them: one row per message, the same columns.
    let rows = serde_json::to_string(&sent).unwrap();
    pg.execute(
        "INSERT INTO messages (room, seq, id, sender, body, sent_at, cid)
         SELECT m->>'room', (m->>'seq')::int8, m->>'id', m->>'from', m->>'body',
                to_timestamp((m->>'ts')::float8 / 1000), m->>'cid'
         FROM json_array_elements($1::text::json) AS m",
        &[&rows],
    )
    .await
    .unwrap();
    Stack {
        _db: db,
        _redis: redis,
        server,
    }
}

/// Reads a whole `resume` reply: the seqs of its messages, then the `resumed` frame.
async fn read_resume(c: &mut Client) -> (Vec<u64>, Value) {
    let mut seqs = Vec::new();
    loop {
        let m = c.recv().await;
        match m["type"].as_str() {
            Some("msg") => seqs.push(m["seq"].as_u64().unwrap()),
            Some("resumed") | Some("error") => return (seqs, m),
            _ => panic!("unexpected during a resume: {m}"),
        }
    }
}

async fn metric(server: &Server, name: &str) -> f64 {
    let (_, text) = http_get(server.addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_backlog_in_postgres_reaches_a_fast_reader_page_by_page() {
    let s = stack(&[]).await;
    let reads_before = metric(&s.server, "chat_postgres_read_seconds_count").await;
    let mut reader = Client::connect(&s.server.ws_url("reader"), "reader").await;
    let started = Instant::now();
    reader
        .send(json!({"type":"resume","room":"far","after":0}))
        .await;
    let (seqs, resumed) = read_resume(&mut reader).await;
    let took = started.elapsed();
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["complete"], true, "{resumed}");
    assert_eq!(seqs, (1..=BACKLOG as u64).collect::<Vec<_>>());
    let reads = metric(&s.server, "chat_postgres_read_seconds_count").await - reads_before;
    println!(
        "resume of {BACKLOG} x {BODY} B from PostgreSQL by a fast reader: {took:?}, {reads} queries"
    );
    assert!(
        reads >= (BACKLOG / 500) as f64,
        "read in pages of 500 rows: {reads} queries"
    );
    // The connection lives on and goes live.
    reader.send(send_req("far", "after", "live")).await;
    let (ack, _) = reader.until("ack").await;
    assert_eq!(ack["seq"], BACKLOG as u64 + 1);
}

#[tokio::test]
async fn replays_beyond_the_places_wait_and_a_reader_that_stops_holds_only_its_own() {
    let s = stack(&["--pg-replays", "1", "--pg-replay-wait", "1"]).await;
    // `stalled` asks for the whole backlog (~24 MB) and reads nothing: its replay stops after
    // a page or two (the client's kernel buffers, the outbound limit) and keeps its place.
    let mut stalled = Client::connect(&s.server.ws_url("stalled"), "stalled").await;
    stalled
        .send(json!({"type":"resume","room":"far","after":0}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The only place is taken: a second replay waits a second, then hears `unavailable`.
    let mut other = Client::connect(&s.server.ws_url("other"), "other").await;
    let asked = Instant::now();
    other
        .send(json!({"type":"resume","room":"far","after":0}))
        .await;
    let (seqs, answer) = read_resume(&mut other).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    assert!(seqs.is_empty());
    assert!(asked.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        metric(&s.server, "chat_postgres_replays_refused_total").await,
        1.0
    );
    // A history reaching into PostgreSQL waits for a place too.
    other
        .send(json!({"type":"history","room":"far","before":100,"limit":10}))
        .await;
    let h = other.recv().await;
    assert_eq!(h["code"], "unavailable", "{h}");

    // Once the stalled client is gone, its place is free again and the replay goes through.
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    other
        .send(json!({"type":"resume","room":"far","after":0}))
        .await;
    let (seqs, resumed) = read_resume(&mut other).await;
    assert_eq!(resumed["complete"], true, "{resumed}");
    assert_eq!(seqs.len(), BACKLOG);
}

/// A reconnect storm: `CHAT_TEST_STORM` clients (500 unless set; 5,000 for the README's
/// figure) resume at once, each 300 messages behind in one of 100 rooms, all of it past the
/// cache. Every one gets its whole backlog; PostgreSQL sees one query per replay, at most
/// `--pg-replays` (16) in flight from this node.
#[tokio::test]
async fn a_reconnect_storm_gets_every_backlog() {
    let clients: usize = std::env::var("CHAT_TEST_STORM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rooms: Vec<String> = (0..100).map(|r| format!("storm{r}")).collect();
    let s = stack_of(&["--max-connections", "100000"], &rooms, 300, 100).await;
    let mut conns = Vec::new();
    for i in 0..clients {
        conns.push(Client::connect(&s.server.ws_url(&format!("u{i}")), &format!("u{i}")).await);
    }
    let reads_before = metric(&s.server, "chat_postgres_read_seconds_count").await;
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let room = rooms[i % rooms.len()].clone();
            tokio::spawn(async move {
                c.send(json!({"type":"resume","room":room,"after":0})).await;
                let (seqs, resumed) = read_resume(&mut c).await;
                (seqs.len(), resumed, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for t in tasks {
        let (n, resumed, took) = t.await.unwrap();
        assert_eq!(resumed["complete"], true, "{resumed}");
        assert_eq!(n, 300);
        slowest = slowest.max(took);
    }
    let reads = metric(&s.server, "chat_postgres_read_seconds_count").await - reads_before;
    println!(
        "reconnect storm: {clients} clients resumed 300 messages each from PostgreSQL, all \
         complete after {slowest:?}; {reads} PostgreSQL queries, {:.0} per second",
        reads / slowest.as_secs_f64()
    );
    assert!(reads >= clients as f64, "each backlog came from PostgreSQL");
    assert_eq!(
        metric(&s.server, "chat_postgres_replays_refused_total").await,
        0.0
    );
}
