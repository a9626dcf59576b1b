//! The latency histograms on a real server's `/metrics`: one observation per acked send
//! (merged over the cores), the outbound-queue wait of the frames written, cumulative buckets.

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
