//! The test services themselves (the `chat-testkit` crate): a private Redis keeps acknowledged
//! writes over a stop, a kill and a restart and loses them when told to; a three-master Redis
//! Cluster forms and routes keys; the tansu broker starts, creates topics idempotently and keeps
//! them over a restart when durable. Without tansu the broker tests print `SKIPPED: ...`
//! (they fail instead under `CHAT_REQUIRE_BROKER=1`).

use chat_testkit::{free_port, Broker, RedisCluster, RedisServer};
use std::collections::HashSet;

#[test]
fn free_ports_are_free_and_distinct() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let distinct: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    for p in ports {
        assert!(std::net::TcpListener::bind(("127.0.0.1", p)).is_ok(), "{p}");
    }
}

#[test]
fn redis_keeps_data_over_restarts_and_loses_it_on_reset() {
    let mut redis = RedisServer::start();
    assert_ne!(redis.port(), 6379);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.cli(&["set", "k", "v1"]), "OK");
    assert_eq!(redis.cli(&["get", "k"]), "v1");

    redis.stop();
    assert!(!redis.is_running());
    redis.start_again();
    assert_eq!(
        redis.cli(&["get", "k"]),
        "v1",
        "graceful restart keeps data"
    );

    // appendfsync always: even a write answered just before SIGKILL survives.
    assert_eq!(redis.cli(&["incr", "n"]), "1");
    redis.kill();
    redis.start_again();
    assert_eq!(
        redis.cli(&["get", "k"]),
        "v1",
        "restart after kill keeps data"
    );
    assert_eq!(redis.cli(&["get", "n"]), "1");

    let port = redis.port();
    redis.flushall_and_restart_without_data();
    assert_eq!(redis.port(), port, "same port after the reset");
    assert_eq!(redis.cli(&["get", "k"]), "", "the reset loses the data");
    assert_eq!(redis.cli(&["dbsize"]), "0");

    // And it is a working Redis again, durable as before.
    assert_eq!(redis.cli(&["set", "k", "v2"]), "OK");
    redis.kill();
    redis.start_again();
    assert_eq!(redis.cli(&["get", "k"]), "v2");
}

#[test]
fn redis_dir_is_removed_on_drop() {
    let redis = RedisServer::start();
    let dir = redis.dir().to_path_buf();
    assert!(dir.join("redis.log").exists());
    drop(redis);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn redis_cluster_forms_and_routes_keys() {
    let cluster = RedisCluster::start();
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(cluster.urls().len(), 3);
    for p in &ports {
        assert!(
            *p < 55_000,
            "{p}: the cluster bus port (+10000) must be a valid port"
        );
    }
    for node in cluster.nodes() {
        let info = node.cli(&["cluster", "info"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    }

    // Keys land on different masters; redis-cli -c follows the MOVED redirects.
    let cli_c = |port: u16, args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-c", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    };
    for i in 0..20 {
        let key = format!("room:{i}");
        assert_eq!(cli_c(ports[i % 3], &["set", &key, &i.to_string()]), "OK");
    }
    for i in 0..20 {
        let key = format!("room:{i}");
        assert_eq!(cli_c(ports[(i + 1) % 3], &["get", &key]), i.to_string());
    }
    let sizes: Vec<u64> = cluster
        .nodes()
        .iter()
        .map(|n| n.cli(&["dbsize"]).parse().unwrap())
        .collect();
    assert!(
        sizes.iter().all(|&n| n > 0),
        "one master holds none: {sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<u64>(), 20, "{sizes:?}");
}

#[test]
fn broker_in_memory_creates_topics() {
    let Some(broker) = Broker::start(false) else {
        return;
    };
    assert_eq!(broker.addr(), format!("127.0.0.1:{}", broker.port()));
    broker.create_topic("chat.messages", 8);
    broker.create_topic("chat.messages", 8); // idempotent
    assert!(broker.topics().contains(&"chat.messages".to_string()));
    assert_eq!(broker.partitions("chat.messages"), Some(8));
    assert_eq!(broker.partitions("missing"), None);
}

#[test]
fn durable_broker_keeps_topics_over_a_restart() {
    let Some(mut broker) = Broker::start(true) else {
        return;
    };
    let port = broker.port();
    broker.create_topic("chat.messages", 8);
    broker.create_topic("other", 1);
    let before = broker.topics();
    assert!(before.contains(&"chat.messages".to_string()), "{before:?}");
    assert!(before.contains(&"other".to_string()), "{before:?}");

    broker.stop();
    assert!(!broker.is_running());
    broker.start_again();
    assert_eq!(broker.port(), port);
    let after = broker.topics();
    assert!(after.contains(&"chat.messages".to_string()), "{after:?}");
    assert!(after.contains(&"other".to_string()), "{after:?}");
    assert_eq!(broker.partitions("chat.messages"), Some(8));
    assert_eq!(broker.partitions("other"), Some(1));

    broker.kill();
    broker.start_again();
    assert!(broker.topics().contains(&"chat.messages".to_string()));
    broker.create_topic("chat.messages", 8); // still idempotent after restarts
}
