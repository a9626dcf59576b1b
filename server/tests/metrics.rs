//! The latency histograms on a real server's `/metrics`: one observation per acked send
//! (merged over the cores), the outbound-queue wait of the frames written, cumulative buckets;
//! rooms freed; the I/O driver each core runs on (`--io-driver`).

mod support;

use support::client::{http_get, send_req, Client};
use support::Server;

/// `name`'s samples: (labels, value).
fn samples<'a>(metrics: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| {
            let (labels, v) = rest.rsplit_once(' ')?;
            Some((labels, v.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn acks_and_socket_writes_are_observed_in_histograms() {
    let server = Server::start(&[]);
    // Two clients, so that the sends' rooms are owned by either core.
    let mut a = Client::connect(&server.ws_url("a"), "a").await;
    let mut b = Client::connect_on_other_core(&server.ws_url("b"), "b", 0).await;
    for (c, room) in [(&mut a, "ra"), (&mut b, "rb")] {
        c.join(room).await;
        for i in 0..10 {
            c.send(send_req(room, &format!("c{i}"), "x")).await;
            c.until("ack").await;
        }
    }
    let (_, metrics) = http_get(server.addr, "/metrics").await;
    for name in [
        "chat_ack_latency_seconds",
        "chat_outbound_queue_wait_seconds",
        "chat_redis_batch_seconds",
        "chat_kafka_delivery_seconds",
        "chat_postgres_read_seconds",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} histogram\n")),
            "{name} missing:\n{metrics}"
        );
    }
    let count = samples(&metrics, "chat_ack_latency_seconds_count");
    assert_eq!(
        count,
        [("", 20.0)],
        "one observation per acked send, all cores merged"
    );
    let buckets = samples(&metrics, "chat_ack_latency_seconds_bucket");
    assert_eq!(buckets.len(), 17, "16 bounds and +Inf: {buckets:?}");
    assert_eq!(buckets[0].0, "{le=\"0.0001\"}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    assert_eq!(buckets[16], ("{le=\"+Inf\"}", 20.0));
    let sum = samples(&metrics, "chat_ack_latency_seconds_sum")[0].1;
    assert!(sum > 0.0 && sum < 20.0 * 5.0, "seconds: {sum}");
    // Every ack and msg frame went through an outbound queue and a socket write.
    let writes = samples(&metrics, "chat_outbound_queue_wait_seconds_count")[0].1;
    assert!(writes >= 20.0, "writes observed: {writes}");
    // Standalone: no Redis, Kafka or PostgreSQL to time.
    assert_eq!(
        samples(&metrics, "chat_kafka_delivery_seconds_count"),
        [("", 0.0)]
    );
}

/// Rooms a connection touched but that hold nothing (never written to, nobody subscribed) are
/// not kept: `history` of never-used rooms creates none, and a joined (or resumed) room nobody
/// wrote to is freed when its last member leaves or closes. A room with messages stays (its seq must
/// continue). Read through `chat_rooms` (issue: 50,000 `history` requests left 50,003 rooms).
#[tokio::test]
async fn rooms_that_hold_nothing_are_freed() {
    let server = Server::start(&["--room-rate-limit", "0"]);
    let rooms = |metrics: &str| -> f64 { samples(metrics, "chat_rooms").iter().map(|s| s.1).sum() };
    let mut c = Client::connect(&server.ws_url("a"), "a").await;
    c.join("kept").await;
    c.send(send_req("kept", "c1", "x")).await;
    c.until("ack").await;

    const N: usize = 2000;
    c.send_all(
        (0..N).map(|i| serde_json::json!({"type": "history", "room": format!("never-{i}")})),
    )
    .await;
    let mut answered = 0;
    while answered < N {
        if c.recv().await["type"] == "history" {
            answered += 1;
        }
    }
    for i in 0..50 {
        let room = format!("joined-{i}");
        c.join(&room).await;
        c.send(serde_json::json!({"type":"leave","room":room}))
            .await;
        c.until("left").await;
    }
    let (_, metrics) = http_get(server.addr, "/metrics").await;
    assert_eq!(rooms(&metrics), 1.0, "only the room with a message is kept");

    // Resumed rooms are joined: held while the connection is, freed when it closes.
    let mut d = Client::connect(&server.ws_url("d"), "d").await;
    for i in 0..20 {
        d.send(serde_json::json!({"type":"resume","room":format!("resumed-{i}"),"after":0}))
            .await;
        d.until("resumed").await;
    }
    let (_, metrics) = http_get(server.addr, "/metrics").await;
    assert_eq!(rooms(&metrics), 21.0);
    d.close().await;
    c.close().await;
    let mut left = 0.0;
    for _ in 0..50 {
        let (_, metrics) = http_get(server.addr, "/metrics").await;
        left = rooms(&metrics);
        if left == 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        left, 1.0,
        "rooms of closed connections that hold nothing are freed"
    );
}

/// `--io-driver epoll` runs every core on epoll (the default picks io_uring where the kernel
/// allows it), and the protocol works the same: a message across cores, its ack, its delivery.
#[tokio::test]
async fn the_epoll_driver_serves_the_same_protocol() {
    let server = Server::start(&["--io-driver", "epoll"]);
    let (_, metrics) = http_get(server.addr, "/metrics").await;
    let drivers = samples(&metrics, "chat_core_io_uring");
    assert_eq!(drivers.len(), 2, "one per core:\n{metrics}");
    assert!(drivers.iter().all(|(_, v)| *v == 0.0), "{drivers:?}");
    let (mut alice, mut bob) = support::client::pair(&server).await;
    alice.join("epoll").await;
    bob.join("epoll").await;
    alice.send(send_req("epoll", "e1", "over epoll")).await;
    let (ack, _) = alice.until("ack").await;
    assert_eq!(ack["seq"], 1);
    let (msg, _) = bob.until("msg").await;
    assert_eq!(
        (msg["seq"].as_u64(), msg["body"].as_str()),
        (Some(1), Some("over epoll"))
    );
    // The default: io_uring where this kernel allows it, epoll otherwise; the gauge says which.
    let auto = Server::start(&[]);
    let (_, metrics) = http_get(auto.addr, "/metrics").await;
    let drivers = samples(&metrics, "chat_core_io_uring");
    assert_eq!(drivers.len(), 2, "{metrics}");
    assert!(
        drivers.iter().all(|(_, v)| *v == 0.0 || *v == 1.0),
        "{drivers:?}"
    );
}
