//! History and resume past the Redis cache, from a real PostgreSQL.
//!
//! The `messages` rows are written here the way the persister writes them (same columns), so
//! these tests pin the server's read side: stitching cache and database without a gap,
//! reporting `complete` truthfully when the database lags, and continuing seqs from the
//! database when Redis lost a room.

mod support;

use chat_testkit::{RedisServer, ScratchDb};
use serde_json::{json, Value};
use std::time::Duration;
use support::client::{send_req, seqs, Client};
use support::Server;
use tokio_postgres::NoTls;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh database with the persister's tables, made by its own migrations; dropped on
/// `drop`.
struct TestDb {
    db: ScratchDb,
}

impl TestDb {
    async fn create() -> TestDb {
        let name = format!("chat_store_test_{}", fastrand::u64(..));
        let db = TestDb {
            db: ScratchDb::create(ADMIN_URL, &name),
        };
        chat_persister::schema::migrate(&mut db.client().await)
            .await
            .unwrap();
        db
    }

    fn url(&self) -> String {
        self.db.url.clone()
    }

    async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url()).await
    }

    /// Stores delivered `msg`s as the persister would.
    async fn persist(&self, msgs: &[Value]) {
        let c = self.client().await;
        for m in msgs {
            c.execute(
                "INSERT INTO messages (room, seq, id, sender, body, sent_at, cid)
                 VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1000), $7) ON CONFLICT DO NOTHING",
                &[
                    &m["room"].as_str().unwrap(),
                    &m["seq"].as_i64().unwrap(),
                    &m["id"].as_str().unwrap(),
                    &m["from"].as_str().unwrap(),
                    &m["body"].as_str().unwrap(),
                    &(m["ts"].as_u64().unwrap() as f64),
                    &m["cid"].as_str().unwrap(),
                ],
            )
            .await
            .unwrap();
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    tokio::spawn(conn);
    client
}

/// Sends `n` messages to `room` and returns them as delivered (the sender's own copies).
async fn send_and_collect(c: &mut Client, room: &str, n: usize) -> Vec<Value> {
    c.send_all(
        (1..=n).map(|i| send_req(room, &format!("c{i}"), &format!("message {i} \"quoted\" é"))),
    )
    .await;
    let (mut msgs, mut acks) = (Vec::new(), 0);
    while msgs.len() < n || acks < n {
        let v = c.recv().await;
        match v["type"].as_str().unwrap() {
            "msg" => msgs.push(v),
            "ack" => acks += 1,
            other => panic!("unexpected {other}: {v}"),
        }
    }
    msgs
}

/// A fresh database, a private Redis and a server on both that keeps 5 messages per room in
/// the cache; alice is connected and has joined `room`.
async fn stack_with_alice_in(room: &str) -> (TestDb, RedisServer, Server, Client) {
    let db = TestDb::create().await;
    let redis = RedisServer::start();
    let server = Server::start(&[
        "--redis",
        &redis.url(),
        "--postgres",
        &db.url(),
        "--history-len",
        "5",
    ]);
    let mut alice = Client::connect(&server.ws_url("alice"), "alice").await;
    alice.join(room).await;
    (db, redis, server, alice)
}

#[tokio::test]
async fn history_and_resume_stitch_cache_and_database() {
    let (db, _redis, server, mut alice) = stack_with_alice_in("old").await;
    let sent = send_and_collect(&mut alice, "old", 30).await;
    db.persist(&sent).await;

    // The newest 20: 26..30 from the cache, 11..25 from PostgreSQL, identical to what was sent.
    alice
        .send(json!({"type":"history","room":"old","limit":20}))
        .await;
    let h = alice.expect("history").await;
    let got = h["messages"].as_array().unwrap();
    assert_eq!(seqs(got), (11..=30).collect::<Vec<_>>());
    assert_eq!(
        got,
        &sent[10..30],
        "rows read back are the same msg objects"
    );
    alice
        .send(json!({"type":"history","room":"old","before":11,"limit":100}))
        .await;
    let h = alice.expect("history").await;
    assert_eq!(
        h["messages"].as_array().unwrap(),
        &sent[0..10],
        "a page entirely from PostgreSQL"
    );

    // Resume across the boundary: exactly 4..30, complete.
    let mut bob = Client::connect(&server.ws_url("bob"), "bob").await;
    bob.send(json!({"type":"resume","room":"old","after":3}))
        .await;
    let (resumed, missed) = bob.until("resumed").await;
    assert_eq!(missed, sent[3..30].to_vec());
    assert_eq!(
        (resumed["seq"].as_u64(), resumed["complete"].as_bool()),
        (Some(30), Some(true))
    );
}

#[tokio::test]
async fn resume_says_incomplete_when_the_database_lags() {
    let (db, _redis, server, mut alice) = stack_with_alice_in("lag").await;
    let sent = send_and_collect(&mut alice, "lag", 20).await;
    // The persister has not written 10..12 yet (nor anything of the cache's 16..20: fine).
    let persisted: Vec<Value> = sent
        .iter()
        .filter(|m| !(10..=12).contains(&m["seq"].as_u64().unwrap()))
        .cloned()
        .collect();
    db.persist(&persisted).await;
    let mut bob = Client::connect(&server.ws_url("bob"), "bob").await;
    bob.send(json!({"type":"resume","room":"lag","after":5}))
        .await;
    let (resumed, got) = bob.until("resumed").await;
    assert_eq!(resumed["complete"], false, "never silently partial");
    assert_eq!(seqs(&got), [6, 7, 8, 9, 13, 14, 15, 16, 17, 18, 19, 20]);
    // Once the rows are there, the same resume is complete.
    db.persist(&sent).await;
    bob.send(json!({"type":"resume","room":"lag","after":5}))
        .await;
    let (resumed, got) = bob.until("resumed").await;
    assert_eq!(
        (resumed["complete"].as_bool(), seqs(&got)),
        (Some(true), (6..=20).collect())
    );
}

#[tokio::test]
async fn seqs_continue_from_the_database_when_redis_lost_the_room() {
    let db = TestDb::create().await;
    let mut redis = RedisServer::start();
    {
        let server = Server::start(&["--redis", &redis.url(), "--postgres", &db.url()]);
        let mut alice = Client::connect(&server.ws_url("alice"), "alice").await;
        alice.join("amnesia").await;
        let sent = send_and_collect(&mut alice, "amnesia", 12).await;
        db.persist(&sent).await;
    }
    redis.flushall_and_restart_without_data();
    // A fresh node that never saw the room: the seq must continue at 13, not restart at 1.
    let server = Server::start(&["--redis", &redis.url(), "--postgres", &db.url()]);
    let mut carol = Client::connect(&server.ws_url("carol"), "carol").await;
    carol.join("amnesia").await;
    carol
        .send(send_req("amnesia", "after-loss", "hello again"))
        .await;
    let (ack, _) = carol.until("ack").await;
    assert_eq!(ack["seq"], 13);
    carol
        .send(json!({"type":"history","room":"amnesia","limit":3}))
        .await;
    let (h, _) = carol.until("history").await;
    assert_eq!(
        seqs(h["messages"].as_array().unwrap()),
        vec![11, 12, 13],
        "history spans the loss"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}
