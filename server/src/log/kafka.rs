//! Producing messages to Kafka: idempotent, `acks=all`, key = room, value = the `msg` JSON.
//!
//! librdkafka's broker threads do the network work; what we get back per message is a delivery
//! report once the broker has the record on all in-sync replicas (or failed for good). The
//! server answers `ack` only after a successful one.
//!
//! Delivery reports are served on the bus thread itself ([`KafkaLog::serve_reports`]), not by a
//! polling thread of their own (rdkafka's `FutureProducer`/`ThreadedProducer`): librdkafka
//! writes to an eventfd when its report queue goes from empty to not empty, the bus's event
//! loop sees the eventfd readable, and serves every queued report in that turn. A report then
//! completes its record's [`Delivery`] without waking another thread: at a few hundred messages
//! a second that polling thread woke, and woke the bus, once or twice per record (#14's
//! accounting: 20-24 µs of CPU per message per node in `producer pollin`). While the broker is
//! unreachable librdkafka keeps records queued and retries (idempotence keeps retries from
//! duplicating or reordering them); we bound that backlog with `--kafka-backlog` and answer
//! `unavailable` beyond it, before the message gets a seq.
//!
//! An idempotent producer can also stop for good while the broker is up. A broker that forgot
//! its producer id (restarted on memory storage, a rebuilt cluster) answers every record with
//! `UNKNOWN_PRODUCER_ID`; librdkafka bumps its epoch locally and sends again, forever (seen
//! against tansu: nothing delivered until each record times out). Other sequence errors end
//! in librdkafka's fatal error, after which every record fails at once.
//! [`KafkaLog::renew_if_failed`] (called once per publish batch) replaces the producer with a
//! new one, which asks the broker for a new producer id, in both cases:
//! - librdkafka reports a fatal error, or
//! - records have waited [`STALL_AFTER`] with none delivered, and the broker answers a
//!   metadata request (so it is up, and the producer is what is stuck; during an outage the
//!   records keep waiting, up to `--kafka-timeout-ms`).
//!
//! The records the old producer held fail: their senders get `unavailable` and retry with
//! their cid, which finds their seq and produces them again on the new producer (a record the
//! broker did take is then in the log twice; the persister keeps one row per (room, seq)).

use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;

/// Events served in one go before the bus's other tasks get a turn (a report event can carry
/// many records' reports).
const REPORTS_PER_TURN: usize = 256;

/// What a delivery report tells its record: delivered, or why not.
type Report = Result<(), String>;

/// The producer, its reports completing each record's [`Delivery`] from `poll` on the bus
/// thread.
type Kafka = BaseProducer<Reports>;

/// Hands each delivery report to the record's waiting [`Delivery`].
struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<Report>>;

    fn delivery(&self, result: &DeliveryResult<'_>, to: Self::DeliveryOpaque) {
        let report = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.to_string()),
        };
        // The Delivery may be gone (its ack task ended); nothing waits then.
        let _ = to.send(report);
    }
}

/// How long records may wait with none delivered, the broker up, before the producer is
/// taken for stuck and replaced.
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// Settings of the producer.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    /// Most records waiting for delivery at once.
    pub backlog: usize,
    /// How long a record may wait (broker down included) before it is given up, ms.
    pub delivery_timeout_ms: u64,
    /// How long the producer waits to fill a batch, ms.
    pub linger_ms: u64,
}

/// The producer and what its deliveries tell. Lives on the bus thread.
pub struct KafkaLog {
    /// An `Arc` so that a metadata request can run on a blocking thread.
    producer: RefCell<Arc<Kafka>>,
    /// Written by librdkafka when reports wait (see the module comment).
    reports: AsyncFd<OwnedFd>,
    cfg: KafkaConfig,
    progress: Rc<Progress>,
    /// [`STALL_AFTER`] (shorter in tests).
    stall_after: Duration,
}

/// What the deliveries tell about the producer's health.
struct Progress {
    /// Records produced and not yet confirmed or given up.
    in_flight: Cell<usize>,
    /// When the producer last made progress: a delivery confirmed, its creation, or the
    /// first record produced after none were waiting.
    delivered: Cell<Instant>,
    /// The last time the broker was asked whether it is up because nothing was delivered.
    probed: Cell<Instant>,
}

/// One record on its way: resolves to `Ok` once the broker has it.
pub struct Delivery {
    report: Option<oneshot::Receiver<Report>>,
    produced: Instant,
    progress: Rc<Progress>,
    failed: Option<String>,
}

impl KafkaLog {
    /// Must be called on the runtime that will run [`KafkaLog::serve_reports`].
    pub fn new(cfg: &KafkaConfig) -> Result<KafkaLog, String> {
        // SAFETY: plain syscall; the descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the `OwnedFd` is the AsyncFd's own and stays open as long as it lives.
        let reports = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| format!("eventfd: {e}"))?;
        Ok(KafkaLog {
            producer: RefCell::new(Arc::new(Self::producer(cfg, reports.get_ref())?)),
            reports,
            cfg: cfg.clone(),
            progress: Rc::new(Progress {
                in_flight: Cell::new(0),
                delivered: Cell::new(Instant::now()),
                probed: Cell::new(Instant::now()),
            }),
            stall_after: STALL_AFTER,
        })
    }

    /// A new producer whose report queue signals `reports`.
    fn producer(cfg: &KafkaConfig, reports: &OwnedFd) -> Result<Kafka, String> {
        let producer: Kafka = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", cfg.linger_ms.to_string())
            .set("message.timeout.ms", cfg.delivery_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                (cfg.backlog + 1024).to_string(),
            )
            .set("compression.type", "lz4")
            // librdkafka backs off reconnecting up to 10 s by default: after an outage of
            // that length the broker could be back for 10 s before anything is acked again.
            .set("reconnect.backoff.max.ms", "1000")
            .create_with_context(Reports)
            .map_err(|e| format!("Kafka producer for {}: {e}", cfg.brokers))?;
        // An eventfd takes an 8-byte count; any nonzero value makes it readable.
        let payload = 1u64.to_ne_bytes();
        // SAFETY: a live client handle; `rd_kafka_queue_get_main` returns a new reference to
        // its report queue, which librdkafka keeps (with the io-event setting, payload copied)
        // after ours is destroyed. The descriptor outlives the producer (both are KafkaLog's,
        // and an old producer is only dropped while the KafkaLog lives).
        unsafe {
            let queue = rdsys::rd_kafka_queue_get_main(producer.client().native_ptr());
            rdsys::rd_kafka_queue_io_event_enable(
                queue,
                reports.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
            );
            rdsys::rd_kafka_queue_destroy(queue);
        }
        Ok(producer)
    }

    /// Serves delivery reports (and librdkafka's other events) as they come, on this thread:
    /// runs for the life of the bus. Each report completes its record's [`Delivery`].
    pub async fn serve_reports(&self) {
        loop {
            let Ok(mut ready) = self.reports.readable().await else {
                tracing::error!("the Kafka report eventfd failed; acks wait for flushes");
                return;
            };
            let mut count = [0u8; 8];
            // SAFETY: reads 8 bytes into a local from our own non-blocking eventfd; resets it
            // before the queue is drained, so a report queued meanwhile signals again.
            unsafe { libc::read(self.reports.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
            ready.clear_ready();
            // The eventfd only signals a queue going from empty to not empty: drain it all,
            // letting the bus's other tasks run between batches.
            while self.serve_queued(REPORTS_PER_TURN) {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Serves up to `max` events waiting in the current producer's report queue; whether more
    /// are left.
    fn serve_queued(&self, max: usize) -> bool {
        let producer = self.producer.borrow().clone();
        // SAFETY: as in `producer`: a new reference to the live producer's queue, destroyed below.
        let queue = unsafe { rdsys::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        // SAFETY: `queue` is valid until destroyed.
        let waiting = || unsafe { rdsys::rd_kafka_queue_length(queue) } > 0;
        let mut served = 0;
        while served < max && waiting() {
            producer.poll(Duration::ZERO);
            served += 1;
        }
        let more = waiting();
        // SAFETY: our reference, not used after this.
        unsafe { rdsys::rd_kafka_queue_destroy(queue) };
        more
    }

    /// Replaces the producer when it has failed for good or is stuck (see the module comment);
    /// returns why. The old one is dropped on a thread of its own: its drop purges what it
    /// holds (those deliveries fail) and waits up to 500 ms.
    pub async fn renew_if_failed(&self) -> Option<String> {
        let fatal = self.producer.borrow().client().fatal_error();
        let why = match fatal {
            Some((code, reason)) => format!("fatal error {code:?}: {reason}"),
            None => self.stuck().await?,
        };
        let fresh = match Self::producer(&self.cfg, self.reports.get_ref()) {
            Ok(p) => p,
            Err(e) => return Some(format!("{why}; no new producer: {e}")),
        };
        let old = self.producer.replace(Arc::new(fresh));
        std::thread::spawn(move || drop(old));
        self.progress.delivered.set(Instant::now());
        Some(why)
    }

    /// Why the producer is stuck: records waited [`STALL_AFTER`] with none delivered while
    /// the broker answers. Asks the broker at most once per [`STALL_AFTER`].
    async fn stuck(&self) -> Option<String> {
        let p = &self.progress;
        let waited = p.delivered.get().elapsed();
        let stall = self.stall_after;
        if p.in_flight.get() == 0 || waited < stall || p.probed.get().elapsed() < stall {
            return None;
        }
        p.probed.set(Instant::now());
        let progress_before = p.delivered.get();
        let producer = self.producer.borrow().clone();
        let topic = self.cfg.topic.clone();
        let up = tokio::task::spawn_blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(1));
            md.is_ok_and(|md| md.topics().first().is_some_and(|t| t.error().is_none()))
        })
        .await
        .unwrap_or(false);
        // A delivery while the broker was asked: not stuck.
        let still = p.in_flight.get() > 0 && p.delivered.get() == progress_before;
        (up && still).then(|| {
            format!(
                "{} records waited {waited:.1?} with none delivered while the broker answers",
                p.in_flight.get()
            )
        })
    }

    /// Records produced and not yet confirmed or given up.
    pub fn in_flight(&self) -> usize {
        self.progress.in_flight.get()
    }

    /// Whether `more` records fit in the backlog now.
    pub fn has_room(&self, more: usize) -> bool {
        self.progress.in_flight.get() + more <= self.cfg.backlog
    }

    /// Queues one record. Records of one room keep their order (same key, same partition).
    pub fn produce(&self, room: &str, msg: &[u8]) -> Delivery {
        let (tx, rx) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(&self.cfg.topic, Box::new(tx))
            .key(room)
            .payload(msg);
        let progress = self.progress.clone();
        if progress.in_flight.get() == 0 {
            progress.delivered.set(Instant::now());
        }
        progress.in_flight.set(progress.in_flight.get() + 1);
        let produced = Instant::now();
        let (report, failed) = match self.producer.borrow().send(record) {
            Ok(()) => (Some(rx), None),
            Err((e, _)) => (None, Some(e.to_string())),
        };
        Delivery {
            report,
            produced,
            progress,
            failed,
        }
    }

    /// Waits for queued records (shutdown); their reports are served here.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.borrow().flush(timeout);
    }

    /// Checks that the broker answers and the topic exists.
    pub fn check(&self, timeout: Duration) -> Result<usize, String> {
        let md = self
            .producer
            .borrow()
            .client()
            .fetch_metadata(Some(&self.cfg.topic), timeout)
            .map_err(|e| format!("Kafka metadata: {e}"))?;
        let topic = md.topics().first().ok_or("no topic metadata")?;
        if let Some(e) = topic.error() {
            return Err(format!("topic {}: {e:?}", self.cfg.topic));
        }
        Ok(topic.partitions().len())
    }
}

impl Delivery {
    /// How long the broker took, once it has the record; the error text otherwise.
    pub async fn wait(mut self) -> Result<Duration, String> {
        match self.report.take() {
            None => Err(self.failed.take().unwrap_or_default()),
            Some(report) => match report.await {
                Ok(Ok(())) => {
                    self.progress.delivered.set(Instant::now());
                    Ok(self.produced.elapsed())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err("producer dropped the record".into()),
            },
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let in_flight = &self.progress.in_flight;
        in_flight.set(in_flight.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    const TOPIC: &str = "renewal";

    /// Runs `test` with the log's reports served beside it, as the bus thread does.
    async fn serving<F: std::future::Future>(log: &Rc<KafkaLog>, test: F) -> F::Output {
        let local = tokio::task::LocalSet::new();
        let reports = log.clone();
        local.spawn_local(async move { reports.serve_reports().await });
        local.run_until(test).await
    }

    fn log_on(
        mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    ) -> Rc<KafkaLog> {
        mock.create_topic(TOPIC, 1, 1).expect("topic");
        let mut log = KafkaLog::new(&KafkaConfig {
            brokers: mock.bootstrap_servers(),
            topic: TOPIC.into(),
            backlog: 100,
            delivery_timeout_ms: 60_000,
            linger_ms: 0,
        })
        .expect("producer");
        log.stall_after = Duration::from_millis(1500);
        Rc::new(log)
    }

    /// librdkafka's own test hook puts the producer in the state other sequence errors leave
    /// it in: every record fails at once, for good.
    fn fail_for_good(log: &KafkaLog) {
        let reason = std::ffi::CString::new("test: producer id forgotten").unwrap();
        let code = RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER;
        // SAFETY: a live producer handle and a NUL-terminated string that outlives the call.
        let rc = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                log.producer.borrow().client().native_ptr(),
                code,
                reason.as_ptr(),
            )
        };
        assert_eq!(rc, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
    }

    #[tokio::test]
    async fn a_producer_that_failed_for_good_is_replaced_and_the_next_record_is_delivered() {
        let mock = MockCluster::new(1).expect("librdkafka mock cluster");
        let log = log_on(&mock);
        serving(&log, async {
            assert!(
                log.renew_if_failed().await.is_none(),
                "a healthy producer is kept"
            );
            log.produce("r", b"first").wait().await.expect("delivered");

            fail_for_good(&log);
            let failed = log.produce("r", b"second").wait().await;
            assert!(
                failed.is_err(),
                "the failed producer delivers nothing: {failed:?}"
            );
            let why = log.renew_if_failed().await.expect("replaced");
            assert!(why.contains("producer id forgotten"), "{why}");
            assert!(
                log.renew_if_failed().await.is_none(),
                "the new producer is healthy"
            );
            log.produce("r", b"third")
                .wait()
                .await
                .expect("delivered by the new producer");
            assert_eq!(log.in_flight(), 0);
        })
        .await
    }

    /// What tansu does after a restart on memory storage: every produce answered
    /// `UNKNOWN_PRODUCER_ID`, which librdkafka retries forever with a locally bumped epoch.
    #[tokio::test]
    async fn a_producer_the_broker_keeps_refusing_is_replaced_but_not_during_an_outage() {
        let mock = MockCluster::new(1).expect("librdkafka mock cluster");
        let log = log_on(&mock);
        serving(&log, async {
            log.produce("r", b"first").wait().await.expect("delivered");

            // The broker is down: records wait (for --kafka-timeout-ms), the producer is kept.
            mock.broker_down(1).expect("down");
            let waiting = log.produce("r", b"during the outage");
            tokio::time::sleep(log.stall_after * 2).await;
            assert!(
                log.renew_if_failed().await.is_none(),
                "kept while the broker is down"
            );
            mock.broker_up(1).expect("up");
            waiting
                .wait()
                .await
                .expect("delivered once the broker is back");

            // The broker answers, and refuses every record of this producer.
            let refusals = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID; 100_000];
            mock.request_errors(RDKafkaApiKey::Produce, &refusals);
            let stuck = log.produce("r", b"refused");
            tokio::time::sleep(log.stall_after * 2).await;
            let why = log.renew_if_failed().await.expect("replaced");
            assert!(
                why.contains("none delivered while the broker answers"),
                "{why}"
            );
            let old = stuck.wait().await;
            assert!(old.is_err(), "what the old producer held fails: {old:?}");
            mock.clear_request_errors(RDKafkaApiKey::Produce);
            log.produce("r", b"after")
                .wait()
                .await
                .expect("delivered by the new producer");
            assert_eq!(log.in_flight(), 0);
        })
        .await
    }
}
