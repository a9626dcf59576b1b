//! The persister as a library. The binary (`main.rs`) is the flags, logging, the runtime and
//! the exit status around [`run`]; its top tells the path of a record through these modules,
//! and README.md ("Modules") where a change goes. Other crates use [`schema`]: whoever needs
//! the persister's tables (the server's store tests, the benches) creates them with
//! [`schema::migrate`], so that there is one DDL. Every module is public for the binary and for
//! these docs; only [`schema`] and [`config`] are meant for use outside.
//!
//! No module uses one above it in this list:
//! - [`run`] (here): the wiring, from the metrics listener to leaving the consumer group;
//! - [`consumer`]: the polling thread, over [`idle_watch`] and [`position`] (the rebalance
//!   callback);
//! - [`copy`]: a batch's transaction, over [`batch`] (records into rows) and [`schema`];
//! - [`status`]: `/metrics`, `/healthz`, the progress line;
//! - [`pg`]: connections, backoff, the stored offsets;
//! - [`start_offset`], [`dead_letter`], [`partitions`], [`metrics`], [`config`]: each needs
//!   nothing else of the crate.

pub mod batch;
pub mod config;
pub mod consumer;
pub mod copy;
pub mod dead_letter;
pub mod idle_watch;
pub mod metrics;
pub mod partitions;
pub mod pg;
pub mod position;
pub mod schema;
pub mod start_offset;
pub mod status;

use batch::Gather;
use config::Config;
use idle_watch::IdleWatch;
use metrics::Metrics;
use partitions::Partitions;
use rdkafka::consumer::Consumer;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

/// How long leaving the consumer group may take at exit.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The persister, from the metrics listener to leaving the consumer group; returns the exit
/// status (0, 1 when it cannot start, [`start_offset::REFUSED_EXIT`]). `config` is validated.
pub async fn run(config: Config) -> i32 {
    let metrics = Arc::new(Metrics::default());
    let partitions = Arc::new(Partitions::new(&config.topic));

    let listener = match tokio::net::TcpListener::bind(config.metrics_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: --metrics-listen {}: {e}", config.metrics_listen);
            return 1;
        }
    };
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    println!("metrics on http://{addr}");
    let _ = std::io::stdout().flush();
    tokio::spawn(status::serve(listener, metrics.clone(), partitions.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(signals(stop.clone()));

    let pg = pg::pg_config(&config.postgres).expect("validated");
    let mut writer = copy::Writer::new(
        pg.clone(),
        config.topic.clone(),
        config.retry_max(),
        config.write_timeout(),
        config.copy_mode,
        metrics.clone(),
    );
    match writer.migrate(|| stop.load(Ordering::Relaxed)).await {
        Ok(applied) if applied.is_empty() => tracing::info!("schema is up to date"),
        Ok(applied) => tracing::info!(?applied, "schema migrations applied"),
        Err(e) if stop.load(Ordering::Relaxed) => {
            tracing::info!("{e}");
            return 0;
        }
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    }

    let context = position::Context::new(
        &config,
        pg,
        tokio::runtime::Handle::current(),
        partitions.clone(),
        stop.clone(),
        metrics.clone(),
    );
    let kafka = match consumer::create(&config, context) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!("Kafka consumer: {e}");
            return 1;
        }
    };
    if let Err(e) = kafka.subscribe(&[&config.topic]) {
        tracing::error!("subscribe to {}: {e}", config.topic);
        return 1;
    }
    tracing::info!(topic = %config.topic, group = %config.group, brokers = %config.kafka, "consuming");

    // One slot: the writer takes a batch when it starts writing it, so one more can wait
    // while a third fills up.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let poller = {
        let (kafka, stop, metrics) = (kafka.clone(), stop.clone(), metrics.clone());
        let partitions = partitions.clone();
        let gather = Gather::new(config.batch_max, config.batch_wait());
        let idle = IdleWatch::new(Duration::from_millis(config.session_timeout_ms.max(1)));
        std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || consumer::run(kafka, partitions, gather, tx, stop, metrics, idle))
            .expect("spawn the polling thread")
    };
    let watermarks = tokio::spawn(consumer::refresh_watermarks(
        kafka.clone(),
        partitions.clone(),
        stop.clone(),
        Duration::from_millis(config.lag_interval_ms.max(1)),
    ));
    let progress = (config.log_interval > 0).then(|| {
        tokio::spawn(status::log_progress(
            metrics.clone(),
            partitions.clone(),
            Duration::from_secs(config.log_interval),
        ))
    });

    while let Some(batch) = rx.recv().await {
        let written = writer.write(&batch).await;
        metrics.inc(&metrics.batches);
        metrics.add(&metrics.rows_written, written.inserted);
        metrics.add(
            &metrics.rows_duplicate,
            written.conflicts + batch.duplicates as u64,
        );
        metrics.add(&metrics.dead_letters, written.dead_letters);
        if written.fell_back {
            metrics.inc(&metrics.copy_fallbacks);
        }
        metrics.batch_records.observe_units(batch.records as u64);
        if !batch.rows.is_empty() {
            metrics.copy_seconds.observe(written.copy);
        }
        metrics.transaction_seconds.observe(written.transaction);
        metrics.observe_lag(&batch.timestamps_ms, SystemTime::now());
        if written.dead_letters > 0 {
            tracing::warn!(
                count = written.dead_letters,
                "poison records stored in persister_dead_letters"
            );
        }
        partitions.stored(&batch.offsets);
        consumer::commit_to_kafka(&kafka, &partitions, &batch.offsets);
    }

    // The channel closed: the poller saw the stop request and handed over its last batch.
    let _ = tokio::task::spawn_blocking(move || poller.join()).await;
    if let Some(p) = progress {
        p.abort();
    }
    watermarks.abort();
    let _ = watermarks.await;
    tracing::info!(
        rows = metrics
            .rows_written
            .load(std::sync::atomic::Ordering::Relaxed),
        "every batch committed; leaving the consumer group"
    );
    let _ = tokio::task::spawn_blocking(move || consumer::close(kafka, CLOSE_TIMEOUT)).await;
    if start_offset::REFUSED.load(std::sync::atomic::Ordering::Relaxed) {
        return start_offset::REFUSED_EXIT;
    }
    0
}

/// First SIGTERM/SIGINT: stop after the batch in flight. Second: exit now.
async fn signals(stop: Arc<AtomicBool>) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        seen += 1;
        if seen == 1 {
            tracing::info!("stopping: finishing the batch in flight");
            stop.store(true, Ordering::Relaxed);
        } else {
            tracing::warn!("second signal: exiting now; uncommitted records will be read again");
            std::process::exit(1);
        }
    }
}
