//! Drill 5: the persister is SIGKILLed mid-batch, twice, under load.
//!
//! 1. **Pinned mid-batch.** 6 s into a 26 s run at 300 msg/s the drill holds a SHARE lock on
//!    `persister_offsets`. The persister's next batch transaction COPYs its rows into
//!    `messages` and then blocks on the offsets upsert: rows written, not committed. The drill
//!    waits until `pg_stat_activity` shows exactly that (the persister's backend waiting on a
//!    lock, with a transaction id: it has written), SIGKILLs the persister, releases the lock
//!    and starts it again 3 s later (same consumer group, same database).
//! 2. **Anywhere.** At 15 s it is SIGKILLed again without looking, and restarted at 17 s.
//!
//! Proves: the open transaction dies with the process (its rows are gone with it), and the
//! restarts read from the offsets committed with the rows, so after catching up every acked
//! message is exactly one row with the acked cid: none lost, none written twice.

use chat_drills::{pg, scenario, Cluster, Load, Options, Report};
use std::time::{Duration, Instant};

/// The persister's backend, blocked inside its batch transaction after writing rows:
/// (pid, xid, query). `db` must not be inside a transaction: pg_stat_activity is read once
/// per transaction.
async fn blocked_batch(db: &tokio_postgres::Client, name: &str) -> Option<(i32, String, String)> {
    let rows = match db
        .query(
            "SELECT pid, backend_xid::text, query FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' \
             AND backend_xid IS NOT NULL",
            &[&name],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("pg_stat_activity: {e:?}");
            return None;
        }
    };
    rows.first().map(|r| {
        let query: String = r.get(2);
        (r.get(0), r.get(1), query.chars().take(40).collect())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persister_sigkilled_mid_batch_exactly_once_after_restart() {
    let mut report = Report::new("persister-kill");
    let Some(mut cluster) = Cluster::start(Options::new("persister-kill")).await else {
        return;
    };
    let mut load = Load::start(scenario(cluster.drill, cluster.urls()));

    // 1. Pin a batch between its COPY and its offsets, then kill.
    load.at(6.0).await;
    let locker = pg::connect(&cluster.db.url).await.expect("connect");
    locker
        .batch_execute("BEGIN; LOCK TABLE persister_offsets IN SHARE MODE")
        .await
        .expect("lock persister_offsets");
    let watcher = pg::connect(&cluster.db.url).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pinned = loop {
        if let Some(b) = blocked_batch(&watcher, &cluster.db.name).await {
            break Some(b);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let committed_before_kill = pg::Rows::load(&cluster.db.url).await.map(|r| r.len());
    cluster.persister.kill();
    load.mark("persister killed mid-batch");
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    // The killed persister's transaction must be gone (rolled back), not committed late.
    let mut gone = false;
    for _ in 0..100 {
        if blocked_batch(&watcher, &cluster.db.name).await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.at(9.0).await;
    cluster.persister.restart();
    load.mark("persister restarted");

    // 2. Kill it again, wherever it is.
    load.at(15.0).await;
    cluster.persister.kill();
    load.mark("persister killed");
    load.at(17.0).await;
    cluster.persister.restart();
    load.mark("persister restarted again");
    let (run, p) = cluster.finish(load, &mut report).await;
    report.field("kills", 2);
    // A restart inside the dead member's session can be left without partitions by the broker;
    // the persister's idle watchdog rejoins then (persister/src/idle_watch.rs).
    report.field(
        "group_rejoins_after_last_start",
        cluster
            .persister
            .metric("chat_persister_group_rejoins_total")
            .unwrap_or(-1.0),
    );
    report.field(
        "committed_at_kill",
        committed_before_kill.as_ref().map_or(-1, |n| *n as i64),
    );
    report.check(
        pinned.is_some(),
        format!(
            "the first kill hit a batch transaction that had written rows and waited for its \
             offsets (backend pid, xid, statement: {pinned:?})"
        ),
    );
    report.check(
        gone,
        "the killed persister's transaction ended with it (rolled back)",
    );
    report.sends_independent_of("the persister", &run, &p);
    report.finish();
}
