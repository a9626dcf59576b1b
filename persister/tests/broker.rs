//! The persister against a real Kafka-protocol broker (tansu, SQLite storage): records land
//! exactly once, also across a broker outage. Prints `SKIPPED: ...` without tansu, unless
//! `CHAT_REQUIRE_BROKER=1`.

mod support;

use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_exactly_once_across_a_broker_restart() {
    let Some(mut broker) = tokio::task::spawn_blocking(|| Broker::start(true))
        .await
        .unwrap()
    else {
        return;
    };
    let topic = unique("t").replace('_', "-");
    let addr = broker.addr();
    broker = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || {
            broker.create_topic(&topic, 3);
            broker
        }
    })
    .await
    .unwrap();
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
    let distinct: i64 = db
        .client()
        .await
        .query_one("SELECT count(DISTINCT (room, seq)) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, 6_000);
    assert!(p.terminate(WAIT).success(), "{}", p.log_tail(30));
    drop(broker);
}
