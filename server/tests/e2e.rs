//! One message's whole path: client -> chat-server -> Redis -> Kafka -> chat-persister ->
//! PostgreSQL, and back through `history`/`resume` once the Redis cache no longer holds it.
//!
//! Uses the real `chat-persister` binary from the same target directory (`cargo test
//! --workspace` builds it; `support/persister.rs`); without it the test says `SKIPPED` (or
//! fails when `CHAT_REQUIRE_E2E=1`, as `scripts/test.sh` sets).

mod support;

use chat_testkit::RedisServer;
use rdkafka::mocking::MockCluster;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::client::{send_req, Client};
use support::persister::Persister;
use support::Server;
use tokio_postgres::NoTls;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[tokio::test]
async fn a_message_travels_to_postgres_and_back() {
    let db = format!("chat_e2e_{}", fastrand::u64(..));
    let (admin, conn) = tokio_postgres::connect(ADMIN_URL, NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{db}");

    let kafka = MockCluster::new(3).expect("mock cluster");
    kafka.create_topic("chat.messages", 4, 3).unwrap();
    let brokers = kafka.bootstrap_servers();
    let Some(_persister) = Persister::start(&brokers, &db_url) else {
        return;
    };

    let redis = RedisServer::start();
    let server = Server::start(&[
        "--redis",
        &redis.url(),
        "--kafka",
        &brokers,
        "--postgres",
        &db_url,
        "--history-len",
        "5",
    ]);
    let mut alice = Client::connect(&server.ws_url("alice"), "alice").await;
    alice.join("e2e").await;
    alice
        .send_all((1..=30).map(|i| send_req("e2e", &format!("c{i}"), &format!("m{i}"))))
        .await;
    let (mut sent, mut acks) = (Vec::new(), 0);
    while sent.len() < 30 || acks < 30 {
        let v = alice.recv().await;
        match v["type"].as_str().unwrap() {
            "msg" => sent.push(v),
            "ack" => acks += 1,
            other => panic!("{other}: {v}"),
        }
    }

    // Every acked message reaches PostgreSQL, exactly once.
    let (client, conn) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = client
            .query_one("SELECT count(*) FROM messages WHERE room = 'e2e'", &[])
            .await
            .unwrap()
            .get(0);
        if n == 30 {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} of 30 rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The cache holds 26..30; everything older now comes from PostgreSQL, identical.
    let mut bob = Client::connect(&server.ws_url("bob"), "bob").await;
    bob.send(json!({"type":"history","room":"e2e","limit":30}))
        .await;
    let h = bob.expect("history").await;
    assert_eq!(h["messages"].as_array().unwrap(), &sent);
    bob.send(json!({"type":"resume","room":"e2e","after":2}))
        .await;
    let (resumed, missed) = bob.until("resumed").await;
    assert_eq!(missed, sent[2..].to_vec());
    assert_eq!(
        (resumed["seq"].as_u64(), resumed["complete"].as_bool()),
        (Some(30), Some(true))
    );
    let seqs: Vec<u64> = missed
        .iter()
        .map(|m: &Value| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (3..=30).collect::<Vec<_>>());

    drop(client);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
}
