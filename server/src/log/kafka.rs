//! Producing messages to Kafka: idempotent, `acks=all`, key = room, value = the `msg` JSON.
//!
//! `rdkafka`'s producer runs its own threads; what we get back per message is a delivery
//! future that resolves once the broker has the record on all in-sync replicas (or failed for
//! good). The server answers `ack` only after it resolves successfully. While the broker is
//! unreachable librdkafka keeps records queued and retries (idempotence keeps retries from
//! duplicating or reordering them); we bound that backlog with `--kafka-backlog` and answer
//! `unavailable` beyond it, before the message gets a seq.

use rdkafka::config::ClientConfig;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

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

/// The producer and its count of records not yet delivered. Lives on the bus thread.
pub struct KafkaLog {
    producer: FutureProducer,
    topic: String,
    backlog: usize,
    in_flight: Rc<Cell<usize>>,
}

/// One record on its way: resolves to `Ok` once the broker has it.
pub struct Delivery {
    future: Option<DeliveryFuture>,
    produced: Instant,
    in_flight: Rc<Cell<usize>>,
    failed: Option<String>,
}

impl KafkaLog {
    pub fn new(cfg: &KafkaConfig) -> Result<KafkaLog, String> {
        let producer: FutureProducer = ClientConfig::new()
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
            .create()
            .map_err(|e| format!("Kafka producer for {}: {e}", cfg.brokers))?;
        Ok(KafkaLog {
            producer,
            topic: cfg.topic.clone(),
            backlog: cfg.backlog,
            in_flight: Rc::new(Cell::new(0)),
        })
    }

    /// Records produced and not yet confirmed or given up.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Whether `more` records fit in the backlog now.
    pub fn has_room(&self, more: usize) -> bool {
        self.in_flight.get() + more <= self.backlog
    }

    /// Queues one record. Records of one room keep their order (same key, same partition).
    pub fn produce(&self, room: &str, msg: &[u8]) -> Delivery {
        let record = FutureRecord::to(&self.topic).key(room).payload(msg);
        self.in_flight.set(self.in_flight.get() + 1);
        let produced = Instant::now();
        match self.producer.send_result(record) {
            Ok(future) => Delivery {
                future: Some(future),
                produced,
                in_flight: self.in_flight.clone(),
                failed: None,
            },
            Err((e, _)) => Delivery {
                future: None,
                produced,
                in_flight: self.in_flight.clone(),
                failed: Some(e.to_string()),
            },
        }
    }

    /// Waits for queued records (shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }

    /// Checks that the broker answers and the topic exists.
    pub fn check(&self, timeout: Duration) -> Result<usize, String> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| format!("Kafka metadata: {e}"))?;
        let topic = md.topics().first().ok_or("no topic metadata")?;
        if let Some(e) = topic.error() {
            return Err(format!("topic {}: {e:?}", self.topic));
        }
        Ok(topic.partitions().len())
    }
}

impl Delivery {
    /// How long the broker took, once it has the record; the error text otherwise.
    pub async fn wait(mut self) -> Result<Duration, String> {
        let result = match self.future.take() {
            None => Err(self.failed.take().unwrap_or_default()),
            Some(f) => match f.await {
                Ok(Ok(_)) => Ok(self.produced.elapsed()),
                Ok(Err((e, _))) => Err(e.to_string()),
                Err(_) => Err("producer dropped the record".into()),
            },
        };
        result
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.in_flight.set(self.in_flight.get() - 1);
    }
}
