//! v1.1 through the real protocol: presence, typing and read pointers, standalone and on two
//! cluster nodes (a node SIGKILLed, Redis restarted empty with PostgreSQL behind it).

mod support;

use chat_testkit::{RedisServer, ScratchDb};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::client::{send_req, Client};
use support::Server;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn connect(server: &Server, user: &str) -> Client {
    let mut c = Client::connect(&server.ws_url(user), user).await;
    c.events = true;
    c
}

/// Joins and returns the `joined` reply.
async fn join(c: &mut Client, room: &str) -> Value {
    c.send(json!({"type":"join","room":room})).await;
    c.expect("joined").await
}

/// The next message of type `ty`, skipping the others; panics after 10 s.
async fn next_of(c: &mut Client, ty: &str) -> Value {
    c.until(ty).await.0
}

/// Nothing of type `ty` arrives within `wait`.
async fn none_of(c: &mut Client, ty: &str, wait: Duration) {
    let deadline = Instant::now() + wait;
    while let Some(v) = c
        .recv_within(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        assert_ne!(v["type"], ty, "{}: unexpected {v}", c.user);
    }
}

async fn presence(c: &mut Client, room: &str) -> Value {
    c.send(json!({"type":"presence","room":room})).await;
    next_of(c, "presence").await
}

/// The cases both modes share: `a` and `b` are servers (the same one standalone, two nodes in
/// cluster mode); ann has a connection on each, bob one on `b`.
async fn presence_typing_and_read(a: &Server, b: &Server) {
    let room = format!("room-{}", fastrand::u32(..));
    let mut ann1 = connect(a, "ann").await;
    assert_eq!(join(&mut ann1, &room).await["read"], 0);
    let mut bob = connect(b, "bob").await;
    join(&mut bob, &room).await;
    assert_eq!(
        next_of(&mut ann1, "online").await,
        json!({"type":"online","room":room,"user":"bob"})
    );
    // ann's second connection: she is online already, so nobody hears of it.
    let mut ann2 = connect(b, "ann").await;
    join(&mut ann2, &room).await;
    none_of(&mut bob, "online", Duration::from_millis(500)).await;
    let p = presence(&mut bob, &room).await;
    assert_eq!(
        p,
        json!({"type":"presence","room":room,"count":2,"users":["ann","bob"]})
    );

    // typing: to the others, once a second per user, never to the typist's own connections.
    for _ in 0..5 {
        ann1.send(json!({"type":"typing","room":room})).await;
    }
    assert_eq!(
        next_of(&mut bob, "typing").await,
        json!({"type":"typing","room":room,"from":"ann"})
    );
    none_of(&mut bob, "typing", Duration::from_millis(600)).await;
    none_of(&mut ann2, "typing", Duration::from_millis(100)).await;
    // It is not a message: not in history.
    bob.send(json!({"type":"history","room":room})).await;
    assert_eq!(next_of(&mut bob, "history").await["messages"], json!([]));

    // read pointers: up only, echoed to the user's other connection, in joined.
    bob.send_all((1..=5).map(|i| send_req(&room, &format!("c{i}"), "hi")))
        .await;
    for _ in 0..5 {
        next_of(&mut ann1, "msg").await;
    }
    ann1.send(json!({"type":"read","room":room,"seq":4})).await;
    assert_eq!(
        next_of(&mut ann1, "read").await,
        json!({"type":"read","room":room,"seq":4})
    );
    assert_eq!(
        next_of(&mut ann2, "read").await,
        json!({"type":"read","room":room,"seq":4})
    );
    ann2.send(json!({"type":"read","room":room,"seq":2})).await;
    assert_eq!(next_of(&mut ann2, "read").await["seq"], 4, "never back");
    ann2.send(json!({"type":"read","room":room,"seq":99})).await;
    assert_eq!(next_of(&mut ann2, "error").await["code"], "bad_request");
    none_of(&mut bob, "read", Duration::from_millis(300)).await;
    let mut ann3 = connect(a, "ann").await;
    let joined = join(&mut ann3, &room).await;
    assert_eq!(
        (joined["seq"].clone(), joined["read"].clone()),
        (json!(5), json!(4))
    );
    ann3.send(json!({"type":"resume","room":room,"after":4}))
        .await;
    let resumed = next_of(&mut ann3, "resumed").await;
    assert_eq!(resumed["read"], 4);

    // offline only when the last connection goes.
    ann1.close().await;
    ann2.close().await;
    none_of(&mut bob, "offline", Duration::from_millis(500)).await;
    ann3.close().await;
    assert_eq!(
        next_of(&mut bob, "offline").await,
        json!({"type":"offline","room":room,"user":"ann"})
    );
    assert_eq!(presence(&mut bob, &room).await["users"], json!(["bob"]));

    // Direct-message rooms: who of the two is connected; others are refused.
    let dm = "dm:ann:bob";
    assert_eq!(presence(&mut bob, dm).await["users"], json!(["bob"]));
    let mut ann = connect(a, "ann").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(presence(&mut bob, dm).await["users"], json!(["ann", "bob"]));
    ann.send(json!({"type":"typing","room":dm})).await;
    assert_eq!(next_of(&mut bob, "typing").await["from"], "ann");
    let mut eve = connect(a, "eve").await;
    eve.send(json!({"type":"presence","room":dm})).await;
    assert_eq!(next_of(&mut eve, "error").await["code"], "forbidden");
    eve.send(json!({"type":"typing","room":room})).await;
    assert_eq!(next_of(&mut eve, "error").await["code"], "not_joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_presence_typing_and_read() {
    let s = Server::start(&["--rate-limit", "0"]);
    presence_typing_and_read(&s, &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_presence_typing_and_read_with_a_node_killed_and_redis_emptied() {
    let mut redis = RedisServer::start();
    let redis_url = redis.url();
    let db = ScratchDb::create(ADMIN_URL, &format!("chat_presence_{}", fastrand::u64(..)));
    {
        let (mut client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        tokio::spawn(conn);
        chat_persister::schema::migrate(&mut client).await.unwrap();
    }
    let args = |ttl: &'static str| {
        vec![
            "--redis".to_string(),
            redis_url.clone(),
            "--postgres".into(),
            db.url.clone(),
            "--presence-ttl".into(),
            ttl.into(),
            "--rate-limit".into(),
            "0".into(),
        ]
    };
    let start = |ttl| {
        let a = args(ttl);
        let refs: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        Server::start(&refs)
    };
    let a = start("2");
    let mut b = start("2");
    presence_typing_and_read(&a, &b).await;

    // Presence event latency across nodes: bob joins on b, ann on a hears `online`.
    let room = "latency";
    let mut ann = connect(&a, "ann").await;
    join(&mut ann, room).await;
    let mut lat = Vec::new();
    for i in 0..50 {
        let user = format!("u{i}");
        let mut c = connect(&b, &user).await;
        let t = Instant::now();
        c.send(json!({"type":"join","room":room})).await;
        let v = next_of(&mut ann, "online").await;
        lat.push(t.elapsed());
        assert_eq!(v["user"], user.as_str());
        c.close().await;
        next_of(&mut ann, "offline").await;
    }
    lat.sort();
    eprintln!(
        "presence online across nodes: p50 {:?}, p99 {:?} (50 joins)",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );

    // A node SIGKILLed: its users go offline within the TTL (2 s) plus a heartbeat.
    let mut bob = connect(&b, "bob").await;
    join(&mut bob, room).await;
    next_of(&mut ann, "online").await;
    bob.send(json!({"type":"read","room":room,"seq":0})).await;
    next_of(&mut bob, "read").await;
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    let off = next_of(&mut ann, "offline").await;
    assert_eq!(off["user"], "bob");
    let took = killed.elapsed();
    eprintln!("offline after SIGKILL: {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "offline within the TTL: {took:?}"
    );
    assert_eq!(presence(&mut ann, room).await["users"], json!(["ann"]));

    // Read pointers survive a full cluster restart: every node gone, Redis restarted empty;
    // a fresh node finds them in PostgreSQL.
    let rp = "pointers";
    let mut carl = connect(&a, "carl").await;
    join(&mut carl, rp).await;
    carl.send_all((1..=3).map(|i| send_req(rp, &format!("p{i}"), "x")))
        .await;
    for _ in 0..3 {
        next_of(&mut carl, "ack").await;
    }
    carl.send(json!({"type":"read","room":rp,"seq":3})).await;
    assert_eq!(next_of(&mut carl, "read").await["seq"], 3);
    drop(carl);
    drop(a);
    redis.flushall_and_restart_without_data();
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "Redis really is empty");
    b = start("2");
    let mut carl2 = connect(&b, "carl").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let joined = loop {
        carl2.send(json!({"type":"join","room":rp})).await;
        let v = carl2.recv().await;
        if v["type"] == "joined" || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        joined["read"], 3,
        "the pointer came back from PostgreSQL: {joined}"
    );
}
