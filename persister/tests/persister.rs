//! End to end through the real `chat-persister` binary, real PostgreSQL (a database of its own
//! per test, or a private server when the test stops it) and Kafka: librdkafka's in-process
//! mock cluster here, the tansu broker in `broker.rs`.

mod support;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(120);

/// A mock cluster (3 brokers) with `topic` of `partitions` partitions.
///
/// Mind its retention: a mock partition keeps only its last 5 MB (librdkafka's
/// `rd_kafka_mock_partition_t.max_size`), so a test produces at most ~2 MB per partition
/// before the persister reads it (else records vanish, as with a real broker's retention, and
/// the persister rightly reports skipped offsets).
fn mock_cluster(topic: &str, partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(3).expect("mock cluster");
    cluster
        .create_topic(topic, partitions, 1)
        .expect("create topic");
    cluster
}

/// A fresh topic of `partitions` partitions on a mock cluster of its own, the cluster's
/// bootstrap servers, and a fresh database.
async fn topic_and_db(
    partitions: i32,
) -> (
    String,
    MockCluster<'static, DefaultProducerContext>,
    String,
    Db,
) {
    let topic = unique("t");
    let cluster = mock_cluster(&topic, partitions);
    let brokers = cluster.bootstrap_servers();
    let db = Db::create().await;
    (topic, cluster, brokers, db)
}

async fn produce_async(brokers: &str, topic: &str, records: Vec<(String, Vec<u8>)>) {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || produce(&brokers, &topic, &records))
        .await
        .expect("producer thread");
}

fn total(offsets: &[(i32, i64)]) -> i64 {
    offsets.iter().map(|(_, o)| o).sum()
}

/// Waits until the stored offsets add up to `n` (every record of a fresh topic accounted for).
async fn wait_offsets(db: &Db, topic: &str, n: i64, persister: &mut Persister) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = total(&db.offsets(topic).await);
        if got == n {
            return;
        }
        assert!(
            Instant::now() < deadline && persister.try_wait().is_none(),
            "stored offsets add up to {got}, expected {n}; log:\n{}",
            persister.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows and offsets agree: with no duplicates and no poison in a fresh topic, the rows are
/// exactly the records before the stored offsets.
async fn assert_rows_match_offsets(db: &Db, topic: &str) -> i64 {
    let rows = db.count().await;
    let offsets = db.offsets(topic).await;
    assert_eq!(rows, total(&offsets), "rows vs stored offsets {offsets:?}");
    rows
}

/// Every (room, seq) of `rooms` x `per_room` is there once, with the columns [`msg_json`]
/// gave it.
async fn assert_messages(db: &Db, rooms: usize, per_room: i64) {
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT room, seq, id, sender, body, (extract(epoch FROM sent_at) * 1000)::int8, cid \
             FROM messages ORDER BY room, seq",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), rooms * per_room as usize);
    let mut per: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &rows {
        let room: String = r.get(0);
        let seq: i64 = r.get(1);
        let want: serde_json::Value = serde_json::from_str(&msg_json(&room, seq)).unwrap();
        assert_eq!(r.get::<_, &str>(2), want["id"], "id of {room}/{seq}");
        assert_eq!(r.get::<_, &str>(3), want["from"], "sender of {room}/{seq}");
        assert_eq!(r.get::<_, &str>(4), want["body"], "body of {room}/{seq}");
        assert_eq!(r.get::<_, i64>(5), ts_of(seq), "sent_at of {room}/{seq}");
        assert_eq!(
            r.get::<_, Option<&str>>(6),
            want["cid"].as_str(),
            "cid of {room}/{seq}"
        );
        per.entry(room).or_default().push(seq);
    }
    assert_eq!(per.len(), rooms);
    for (room, seqs) in per {
        assert_eq!(
            seqs,
            (1..=per_room).collect::<Vec<_>>(),
            "seqs of {room} (dense, once each)"
        );
    }
}

/// Lag gauges of every partition, once they were fetched.
fn lags(persister: &Persister) -> BTreeMap<String, i64> {
    persister
        .metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("chat_persister_consumer_lag{"))
        .filter_map(|l| {
            let (labels, v) = l.split_once("} ")?;
            Some((labels.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_lands_exactly_once_also_when_delivered_twice() {
    exactly_once("auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_lands_exactly_once_through_the_staging_table() {
    exactly_once("staging").await;
}

async fn exactly_once(copy_mode: &str) {
    let (topic, _cluster, brokers, db) = topic_and_db(4).await;

    // 5000 messages in 20 rooms over 4 partitions; every 10th is produced a second time (a
    // redelivery, as after a producer retry), some in the same batch, some much later.
    let records = messages(20, 250);
    let again: Vec<_> = records.iter().step_by(10).cloned().collect();
    let (first, second) = records.split_at(2500);
    let mut stream = first.to_vec();
    stream.extend(again[..50].iter().cloned());
    stream.extend(second.iter().cloned());
    stream.extend(again[50..].iter().cloned());
    assert_eq!(stream.len(), 5500);
    produce_async(&brokers, &topic, stream).await;

    let mut p = Persister::start(
        &brokers,
        db.url(),
        &topic,
        &unique("g"),
        &[
            "--batch-max",
            "700",
            "--batch-wait-ms",
            "20",
            "--copy-mode",
            copy_mode,
        ],
    );
    db.wait_rows(5000, WAIT, &mut p).await;
    wait_offsets(&db, &topic, 5500, &mut p).await;
    assert_messages(&db, 20, 250).await;
    assert_eq!(
        db.offsets(&topic).await,
        high_watermarks(&brokers, &topic, 4),
        "stored offsets are the high watermarks"
    );

    assert_eq!(p.metric("chat_persister_rows_written_total"), 5000.0);
    assert_eq!(p.metric("chat_persister_rows_duplicate_total"), 500.0);
    assert_eq!(p.metric("chat_persister_records_consumed_total"), 5500.0);
    assert_eq!(p.metric("chat_persister_dead_letters_total"), 0.0);
    assert_eq!(p.metric("chat_persister_skipped_offsets_total"), 0.0);
    let fallbacks = p.metric("chat_persister_copy_fallbacks_total");
    if copy_mode == "auto" {
        // The late second copies meet their rows in `messages`: the direct COPY fails and
        // the batch goes through staging.
        assert!(fallbacks >= 1.0, "fallbacks {fallbacks}");
    } else {
        assert_eq!(fallbacks, 0.0);
    }
    assert!(p.metric("chat_persister_batches_total") >= 8.0);
    assert!(p.metric("chat_persister_copy_seconds_count") >= 8.0);
    assert!(p.metric("chat_persister_batch_records_count") >= 8.0);
    assert!(p.metric("process_cpu_seconds_total") > 0.0);
    assert!(p.metric("process_resident_memory_bytes") > 0.0);
    assert_eq!(p.metric("chat_persister_assigned_partitions"), 4.0);
    let deadline = Instant::now() + WAIT;
    loop {
        let l = lags(&p);
        if l.len() == 4 && l.values().all(|&v| v == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "lag gauges {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let status = p.terminate(WAIT);
    assert!(status.success(), "exit {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart_loses_nothing_and_duplicates_nothing() {
    const ROOMS: usize = 40;
    const PER_ROOM: i64 = 1_500;
    const N: i64 = ROOMS as i64 * PER_ROOM;
    let (topic, _cluster, brokers, db) = topic_and_db(8).await;
    produce_async(&brokers, &topic, messages(ROOMS, PER_ROOM)).await;

    let group = unique("g");
    let args = ["--batch-max", "5000", "--batch-wait-ms", "20"];
    let mut p = Persister::start(&brokers, db.url(), &topic, &group, &args);

    // Wait until a good part has landed and a batch transaction is open, then kill -9.
    let watch = db.client().await;
    let db_name = db.url().rsplit('/').next().unwrap().to_string();
    let deadline = Instant::now() + WAIT;
    let in_transaction = loop {
        let rows = db.try_count().await.unwrap_or(0);
        if rows >= N / 5 {
            let in_transaction = watch
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND application_name = 'chat-persister' AND xact_start IS NOT NULL \
                     AND state <> 'idle'",
                    &[&db_name],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                > 0;
            if in_transaction || rows >= N * 3 / 5 {
                break in_transaction;
            }
        }
        assert!(
            Instant::now() < deadline && rows < N,
            "{rows} rows; log:\n{}",
            p.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    p.kill();
    let at_kill = assert_rows_match_offsets(&db, &topic).await;
    eprintln!("killed at {at_kill} of {N} rows (batch transaction open: {in_transaction})");
    assert!(at_kill > 0 && at_kill < N, "killed at {at_kill} rows");

    // The restart joins the same group and reads from the offsets stored in PostgreSQL.
    let mut p = Persister::start(&brokers, db.url(), &topic, &group, &args);
    db.wait_rows(N, WAIT, &mut p).await;
    wait_offsets(&db, &topic, N, &mut p).await;
    assert_rows_match_offsets(&db, &topic).await;
    assert_eq!(
        db.offsets(&topic).await,
        high_watermarks(&brokers, &topic, 8)
    );
    assert_eq!(p.metric("chat_persister_skipped_offsets_total"), 0.0);
    let restarted = p.metric("chat_persister_rows_written_total");
    assert_eq!(restarted as i64, N - at_kill, "the restart wrote the rest");
    assert_eq!(
        p.metric("chat_persister_rows_duplicate_total"),
        0.0,
        "nothing read twice: the stored offsets were exact"
    );
    assert!(
        p.log_text()
            .contains("assigned; reading from the offsets stored in PostgreSQL"),
        "{}",
        p.log_tail(30)
    );
    let client = db.client().await;
    let distinct: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT DISTINCT room, seq FROM messages) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, N);
    let max_seq: Vec<i64> = client
        .query("SELECT max(seq) FROM messages GROUP BY room", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(max_seq, vec![PER_ROOM; ROOMS]);
    assert!(p.terminate(WAIT).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dead_letter_table_and_the_stream_goes_on() {
    let (topic, _cluster, brokers, db) = topic_and_db(2).await;
    let producer = future_producer(&brokers);

    /// offset, key, value, a part of the reason
    type Dead = (i64, Option<Vec<u8>>, Vec<u8>, &'static str);
    /// key, value, a part of the reason
    type Poison = (Option<&'static [u8]>, Vec<u8>, &'static str);
    let mut expected_dead: Vec<Dead> = Vec::new();
    let mut seq = 0;
    let valid = |seq: &mut i64| {
        *seq += 1;
        msg_json("r", *seq).into_bytes()
    };
    let poison: Vec<Poison> = vec![
        (
            Some(b"r"),
            b"{\"type\":\"msg\",\"room\":".to_vec(),
            "invalid msg",
        ),
        (
            Some(b"r"),
            br#"{"type":"msg","room":"r","seq":99,"id":"x","from":"u","ts":1}"#.to_vec(),
            "missing field `body`",
        ),
        (
            Some(b"r"),
            br#"{"type":"msg","room":"r","seq":"7","id":"x","from":"u","ts":1,"body":"b"}"#
                .to_vec(),
            "invalid type",
        ),
        (
            Some(b"elsewhere"),
            br#"{"type":"msg","room":"r","seq":98,"id":"x","from":"u","ts":1,"body":"b"}"#.to_vec(),
            "does not match room",
        ),
        (Some(b"r"), b"\xff\xfe binary".to_vec(), "invalid msg"),
    ];
    for (key, value, reason) in poison {
        let v = valid(&mut seq);
        produce_one(&producer, &topic, 0, Some(b"r"), &v).await;
        let (_, offset) = produce_one(&producer, &topic, 0, key, &value).await;
        expected_dead.push((offset, key.map(<[u8]>::to_vec), value, reason));
    }
    for _ in 0..5 {
        let v = valid(&mut seq);
        produce_one(&producer, &topic, 0, Some(b"r"), &v).await;
    }
    // Partition 1 gets good records too: it must not wait for partition 0's poison.
    for s in 1..=10 {
        let room = "s";
        produce_one(
            &producer,
            &topic,
            1,
            Some(room.as_bytes()),
            msg_json(room, s).as_bytes(),
        )
        .await;
    }

    let mut p = Persister::start(&brokers, db.url(), &topic, &unique("g"), &[]);
    db.wait_rows(seq + 10, WAIT, &mut p).await;
    wait_offsets(&db, &topic, seq + 10 + 5, &mut p).await;

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT topic, partition, \"offset\", key, value, reason, kafka_timestamp IS NOT NULL \
             FROM persister_dead_letters ORDER BY \"offset\"",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), expected_dead.len());
    for (row, (offset, key, value, reason)) in rows.iter().zip(&expected_dead) {
        assert_eq!(row.get::<_, &str>(0), topic);
        assert_eq!(row.get::<_, i32>(1), 0);
        assert_eq!(row.get::<_, i64>(2), *offset);
        assert_eq!(row.get::<_, Option<Vec<u8>>>(3), *key);
        assert_eq!(row.get::<_, Option<Vec<u8>>>(4).as_ref(), Some(value));
        let got: &str = row.get(5);
        assert!(got.contains(reason), "reason {got:?} should say {reason:?}");
        assert!(row.get::<_, bool>(6), "the Kafka timestamp is kept");
    }
    let seqs: Vec<i64> = client
        .query(
            "SELECT seq FROM messages WHERE room = 'r' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seqs,
        (1..=seq).collect::<Vec<_>>(),
        "every good record stored"
    );
    assert_eq!(p.metric("chat_persister_dead_letters_total"), 5.0);
    assert!(p.terminate(WAIT).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_loses_nothing() {
    const ROOMS: usize = 10;
    const PER_ROOM: i64 = 4_000;
    const N: i64 = ROOMS as i64 * PER_ROOM;
    let mut pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap();
    let db = Db::create_on(&pg.url()).await;
    let topic = unique("t");
    let cluster = mock_cluster(&topic, 4);
    let brokers = cluster.bootstrap_servers();

    // Half now, the other half while PostgreSQL is down.
    let records = messages(ROOMS, PER_ROOM);
    let (first, second) = records.split_at(records.len() / 2);
    produce_async(&brokers, &topic, first.to_vec()).await;
    let mut p = Persister::start(
        &brokers,
        db.url(),
        &topic,
        &unique("g"),
        &["--batch-max", "2000", "--retry-max-ms", "500"],
    );
    let deadline = Instant::now() + WAIT;
    while db.try_count().await.unwrap_or(0) < 2_000 {
        assert!(Instant::now() < deadline, "{}", p.log_tail(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let producing = {
        let (brokers, topic, second) = (brokers.clone(), topic.clone(), second.to_vec());
        tokio::task::spawn_blocking(move || produce(&brokers, &topic, &second))
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(p.try_wait().is_none(), "the persister survives the outage");
    assert!(
        p.metric("chat_persister_pg_errors_total") >= 1.0,
        "failed attempts are counted"
    );
    pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    producing.await.unwrap();

    db.wait_rows(N, WAIT, &mut p).await;
    wait_offsets(&db, &topic, N, &mut p).await;
    assert_rows_match_offsets(&db, &topic).await;
    assert_messages(&db, ROOMS, PER_ROOM).await;
    assert!(
        p.log_text().contains("batch write failed; retrying")
            || p.log_text().contains("PostgreSQL connect failed"),
        "{}",
        p.log_tail(30)
    );
    assert!(p.terminate(WAIT).success());
    drop(db);
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_the_batch_in_flight_and_exits_zero() {
    const N: i64 = 60_000;
    let (topic, _cluster, brokers, db) = topic_and_db(8).await;
    produce_async(&brokers, &topic, messages(40, N / 40)).await;

    let group = unique("g");
    let args = ["--batch-max", "5000"];
    let mut p = Persister::start(&brokers, db.url(), &topic, &group, &args);
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = db.try_count().await.unwrap_or(0);
        if rows >= 10_000 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", p.log_tail(30));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = p.terminate(WAIT);
    assert!(status.success(), "exit {status}; log:\n{}", p.log_tail(30));
    assert!(
        p.log_text().contains("every batch committed"),
        "{}",
        p.log_tail(30)
    );
    let at_stop = assert_rows_match_offsets(&db, &topic).await;
    eprintln!("stopped at {at_stop} of {N} rows");

    // A restart continues where the first left off and a second SIGTERM is as clean.
    let mut p = Persister::start(&brokers, db.url(), &topic, &group, &args);
    db.wait_rows(N, WAIT, &mut p).await;
    wait_offsets(&db, &topic, N, &mut p).await;
    assert_eq!(p.metric("chat_persister_rows_duplicate_total"), 0.0);
    assert!(p.terminate(WAIT).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_persisters_start_together_share_partitions_and_hand_over() {
    const N: i64 = 60_000;
    let (topic, _cluster, brokers, db) = topic_and_db(6).await;
    produce_async(&brokers, &topic, messages(24, N / 24)).await;

    // Both migrate the same fresh database at once and join the same group.
    let group = unique("g");
    let args = ["--batch-max", "2000"];
    let (brokers2, url2, topic2, group2) = (
        brokers.clone(),
        db.url().to_string(),
        topic.clone(),
        group.clone(),
    );
    let second =
        std::thread::spawn(move || Persister::start(&brokers2, &url2, &topic2, &group2, &args));
    let mut a = Persister::start(&brokers, db.url(), &topic, &group, &args);
    let mut b = second.join().unwrap();

    let deadline = Instant::now() + WAIT;
    while db.try_count().await.unwrap_or(0) < N / 3 {
        assert!(
            Instant::now() < deadline,
            "a:\n{}\nb:\n{}",
            a.log_tail(20),
            b.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One leaves (cleanly); the other gets its partitions and finishes.
    assert!(a.terminate(WAIT).success(), "{}", a.log_tail(30));
    db.wait_rows(N, WAIT, &mut b).await;
    wait_offsets(&db, &topic, N, &mut b).await;
    assert_rows_match_offsets(&db, &topic).await;
    // The group hands `a`'s partitions to `b` (maybe only after `b` wrote what it had).
    let deadline = Instant::now() + WAIT;
    while b.metric("chat_persister_assigned_partitions") != 6.0 {
        assert!(Instant::now() < deadline, "{}", b.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let migrated = [&a, &b]
        .iter()
        .filter(|p| p.log_text().contains("schema migrations applied"))
        .count();
    assert_eq!(migrated, 1, "exactly one of the two applied the migrations");
    let versions = db
        .scalar("SELECT count(*) FROM persister_schema_migrations")
        .await;
    assert_eq!(
        versions,
        i64::from(chat_persister::schema::LATEST_VERSION),
        "every migration, each once"
    );
    assert!(b.terminate(WAIT).success());
}
