//! The publish API's 200 means durable: in cluster mode (Redis, Kafka, the real persister,
//! PostgreSQL) every message the API answered 200 for is a row of `messages` with its seq,
//! id, sender and body; with the broker down the API answers 503, never 200. Kafka is the
//! `tansu` broker when installed (else that test says `SKIPPED`, or fails under
//! `CHAT_REQUIRE_BROKER=1`), and librdkafka's mock cluster always.

mod support;

use chat_testkit::{Broker, RedisServer, ScratchDb};
use rdkafka::mocking::MockCluster;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::client::Client;
use support::persister::Persister;
use support::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const KEY: &str = "durable-key";

/// `POST /api/publish`; the status and the JSON answer.
async fn publish(server: &Server, room: &str, from: &str, cid: &str, body: &str) -> (u16, Value) {
    let body = json!({"room": room, "from": from, "cid": cid, "body": body}).to_string();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut out))
        .await
        .expect("an answer within 60 s")
        .expect("read the answer");
    let (head, body) = out.split_once("\r\n\r\n").expect("a response");
    (
        head[9..12].parse().unwrap(),
        serde_json::from_str(body).unwrap(),
    )
}

/// Waits (up to 30 s) for the row of (`room`, `seq`) and returns (id, sender, body).
async fn row(db: &tokio_postgres::Client, room: &str, seq: u64) -> (String, String, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = db
            .query(
                "SELECT id, sender, body FROM messages WHERE room = $1 AND seq = $2",
                &[&room, &(seq as i64)],
            )
            .await
            .expect("query messages");
        if let Some(r) = rows.first() {
            return (r.get(0), r.get(1), r.get(2));
        }
        assert!(
            Instant::now() < deadline,
            "({room}, {seq}) never reached PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One node with everything it uses, kept alive together.
struct Stack {
    server: Server,
    _persister: Persister,
    _redis: RedisServer,
    _db: ScratchDb,
}

/// Publishes through the API and checks every 200 against PostgreSQL and a live member.
/// Returns the node and what it runs on, for more checks; `None` without the persister.
async fn every_200_is_a_row(brokers: &str, extra: &[&str]) -> Option<Stack> {
    let db = ScratchDb::create(ADMIN_URL, &format!("chat_api_{}", fastrand::u64(..)));
    let persister = Persister::start(brokers, &db.url)?;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let mut args = vec![
        "--redis",
        &redis_url,
        "--kafka",
        brokers,
        "--postgres",
        &db.url,
        "--api-key",
        KEY,
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let mut bob = Client::connect(&server.ws_url("bob"), "bob").await;
    bob.join("durable").await;

    let (pg, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let sent = [
        ("bot", "c1", "first"),
        ("bot", "c2", "second"),
        ("alice", "c1", "third"),
    ];
    for (i, (from, cid, body)) in sent.into_iter().enumerate() {
        let (status, ack) = publish(&server, "durable", from, cid, body).await;
        assert_eq!(status, 200, "{ack}");
        let seq = ack["seq"].as_u64().unwrap();
        assert_eq!(seq, i as u64 + 1);
        let id = ack["id"].as_str().unwrap().to_owned();
        assert_eq!(
            row(&pg, "durable", seq).await,
            (id.clone(), from.into(), body.into())
        );
        let m = bob.expect("msg").await;
        assert_eq!(
            (m["seq"].as_u64(), m["id"].as_str()),
            (Some(seq), Some(id.as_str()))
        );
    }
    // A retry is the same message: same answer, no new row.
    let (status, again) = publish(&server, "durable", "bot", "c1", "first").await;
    assert_eq!((status, again["seq"].as_u64()), (200, Some(1)), "{again}");
    let n: i64 = pg
        .query_one("SELECT count(*) FROM messages WHERE room = 'durable'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    Some(Stack {
        server,
        _persister: persister,
        _redis: redis,
        _db: db,
    })
}

#[tokio::test]
async fn a_200_is_a_row_in_postgres_mock_kafka() {
    let kafka = MockCluster::new(3).expect("librdkafka mock cluster");
    kafka.create_topic("chat.messages", 4, 3).expect("topic");
    every_200_is_a_row(&kafka.bootstrap_servers(), &[]).await;
}

#[tokio::test]
async fn a_200_is_a_row_in_postgres_and_none_comes_while_kafka_is_down() {
    let Some(mut broker) = Broker::start(false) else {
        return;
    };
    broker.create_topic("chat.messages", 4);
    let timeout = ["--kafka-timeout-ms", "5000"];
    let Some(stack) = every_200_is_a_row(&broker.addr(), &timeout).await else {
        return;
    };
    broker.stop();
    let (status, v) = publish(&stack.server, "durable", "bot", "down1", "lost?").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );
}
