//! Drill 4: PostgreSQL stops for 10 s under load.
//!
//! The persister's database is a private PostgreSQL (the shared one is never stopped). 6 s
//! into a 26 s run at 300 msg/s it is stopped (`pg_ctl stop -m fast`: connections cut, open
//! transactions rolled back) and 10 s later started again. Sends never wait for PostgreSQL,
//! so every one is acked while it is down; the messages wait in Kafka.
//!
//! Proves: the persister retries the batch it was writing instead of skipping it, and once
//! PostgreSQL is back catches up with every acked message as exactly one row with the acked
//! cid (no loss, no duplicate row, no row that no client sent); the clients notice nothing
//! (loadgen verdict: nothing lost, duplicated or reordered, every send acked).

use chat_drills::{pg, scenario, Cluster, Load, Options, Report};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_10_s_the_persister_catches_up() {
    let mut report = Report::new("postgres-outage");
    let mut opts = Options::new("postgres-outage");
    opts.private_postgres = true;
    let Some(mut cluster) = Cluster::start(opts).await else {
        return;
    };
    let mut load = Load::start(scenario(cluster.drill, cluster.urls()));

    load.at(6.0).await;
    let rows_before = pg::Rows::load(&cluster.db.url).await.map(|r| r.len());
    // Blocking calls are fine here: the test body is not a runtime worker, the load runs on
    // the workers and on loadgen's own threads.
    cluster.pg.as_mut().expect("private PostgreSQL").stop();
    load.mark("postgres stopped");
    load.at(6.0 + 10.0).await;
    let errors_during = cluster.persister.metric("chat_persister_pg_errors_total");
    cluster
        .pg
        .as_mut()
        .expect("private PostgreSQL")
        .start_again();
    load.mark("postgres started");
    let (run, p) = cluster.finish(load, &mut report).await;
    let outage = run.mark("postgres started") - run.mark("postgres stopped");
    report.field("outage_s", format!("{outage:.1}"));
    report.field("pg_errors", errors_during.unwrap_or(-1.0));
    report.check(
        (9.5..15.0).contains(&outage),
        format!("PostgreSQL was down for about 10 s ({outage:.1} s)"),
    );
    report.check(
        matches!(rows_before, Ok(n) if n > 0),
        format!("rows were being written before the outage ({rows_before:?})"),
    );
    report.check(
        errors_during.is_some_and(|e| e > 0.0),
        format!("the persister saw the outage (chat_persister_pg_errors_total {errors_during:?})"),
    );
    report.sends_independent_of("PostgreSQL", &run, &p);
    report.finish();
}
