//! The persister against a real Kafka-protocol broker (tansu, SQLite storage): records land
//! exactly once, also across a broker outage. Prints `SKIPPED: ...` without tansu, unless
//! `CHAT_REQUIRE_BROKER=1`.

mod support;

use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(120);

/// A tansu broker (`durable`: SQLite storage, else memory) with a fresh topic of `partitions`;
/// `None` (after `SKIPPED: ...`) without tansu.
async fn broker_with_topic(durable: bool, partitions: u32) -> Option<(Broker, String, String)> {
    tokio::task::spawn_blocking(move || {
        let broker = Broker::start(durable)?;
        let topic = unique("t").replace('_', "-");
        broker.create_topic(&topic, partitions);
        let addr = broker.addr();
        Some((broker, addr, topic))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_exactly_once_across_a_broker_restart() {
    let Some((mut broker, addr, topic)) = broker_with_topic(true, 3).await else {
        return;
    };
    let db = Db::create().await;

    let all = messages(6, 1_000);
    let (first, second) = all.split_at(3_000);
    {
        let (addr, topic, first) = (addr.clone(), topic.clone(), first.to_vec());
        tokio::task::spawn_blocking(move || produce(&addr, &topic, &first))
            .await
            .unwrap();
    }
    let mut p = Persister::start(
        &addr,
        db.url(),
        &topic,
        &unique("g"),
        &["--batch-max", "1000"],
    );
    db.wait_rows(3_000, WAIT, &mut p).await;

    // The broker goes away for a few seconds; the persister waits and resumes.
    broker = tokio::task::spawn_blocking(move || {
        broker.stop();
        std::thread::sleep(Duration::from_secs(3));
        broker.start_again();
        broker
    })
    .await
    .unwrap();
    assert!(p.try_wait().is_none(), "the persister survives the outage");
    {
        let (addr, topic, second) = (addr.clone(), topic.clone(), second.to_vec());
        tokio::task::spawn_blocking(move || produce(&addr, &topic, &second))
            .await
            .unwrap();
    }
    db.wait_rows(6_000, WAIT, &mut p).await;

    let deadline = Instant::now() + WAIT;
    let highs: i64 = high_watermarks(&addr, &topic, 3)
        .iter()
        .map(|(_, h)| h)
        .sum();
    loop {
        let stored: i64 = db.offsets(&topic).await.iter().map(|(_, o)| o).sum();
        if stored == highs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stored {stored} vs high watermarks {highs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let distinct = db
        .scalar("SELECT count(DISTINCT (room, seq)) FROM messages")
        .await;
    assert_eq!(distinct, 6_000);
    assert!(p.terminate(WAIT).success(), "{}", p.log_tail(30));
    drop(broker);
}

/// A persister restarted right after the previous one was SIGKILLed joins a group in which the
/// dead member still counts (its session has not expired). tansu made the dead member the
/// leader of the new generation and gave the restarted one nothing, never to rebalance again;
/// the idle watchdog (`src/idle_watch.rs`) sees records wait while no stored offset moves, and
/// rejoins. Every record must land, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persister_restarted_right_after_a_crash_gets_the_partitions() {
    let Some((broker, addr, topic)) = broker_with_topic(false, 3).await else {
        return;
    };
    let group = unique("g");
    let db = Db::create().await;
    let all = messages(6, 400);
    let (first, second) = all.split_at(1_200);
    let produce_async = |records: Vec<(String, Vec<u8>)>| {
        let (addr, topic) = (addr.clone(), topic.clone());
        tokio::task::spawn_blocking(move || produce(&addr, &topic, &records))
    };
    produce_async(first.to_vec()).await.unwrap();
    let mut a = Persister::start(&addr, db.url(), &topic, &group, &[]);
    db.wait_rows(1_200, WAIT, &mut a).await;

    // Crash, and the restart comes inside the 6 s session timeout (after 3 s, as a supervisor's
    // restart delay would: an immediate restart got the partitions from tansu at once).
    a.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut b = Persister::start(&addr, db.url(), &topic, &group, &[]);
    produce_async(second.to_vec()).await.unwrap();
    db.wait_rows(2_400, WAIT, &mut b).await;
    let log = b.log_text();
    let assignments: Vec<&str> = log.lines().filter(|l| l.contains("assigned;")).collect();
    println!(
        "restarted persister: {} rejoin(s); assignments:\n{}",
        b.metric("chat_persister_group_rejoins_total"),
        assignments.join("\n")
    );
    let distinct = db
        .scalar("SELECT count(DISTINCT (room, seq)) FROM messages")
        .await;
    assert_eq!(distinct, 2_400);
    assert!(b.terminate(WAIT).success(), "{}", b.log_tail(30));
    drop(broker);
}
