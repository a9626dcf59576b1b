//! The persistence-latency poller against a real PostgreSQL (127.0.0.1:5432, as
//! `scripts/services.sh` starts it; `SKIPPED:` when it is not there), in a private database:
//! rows that show up are timed from the intended send time, rows that never do count as
//! missing once the timeout passes.

use loadgen::persist::{self, Sample};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[tokio::test]
async fn poller_times_rows_and_counts_missing_ones() {
    let Ok((admin, conn)) = tokio_postgres::connect(ADMIN, NoTls).await else {
        println!("SKIPPED: no PostgreSQL on 127.0.0.1:5432");
        return;
    };
    tokio::spawn(conn);
    let db = format!(
        "loadgen_persist_{}_{}",
        std::process::id(),
        fastrand::u32(..)
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE messages (room text, seq bigint, PRIMARY KEY (room, seq))")
        .await
        .unwrap();

    let (tx, poller) = persist::spawn(url, Duration::from_millis(800));
    let t0 = Instant::now();
    for seq in 1..=3 {
        tx.send(Sample {
            room: "r".into(),
            seq,
            intended: t0,
        })
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .batch_execute("INSERT INTO messages VALUES ('r', 1), ('r', 2)")
        .await
        .unwrap();
    drop(tx);
    let out = poller.await.unwrap();
    assert_eq!(out.error, None);
    assert_eq!((out.found, out.missing), (2, 1));
    let min_ms = out.hist.min() as f64 / 1000.0;
    assert!((200.0..700.0).contains(&min_ms), "{min_ms} ms");

    drop(client);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}
