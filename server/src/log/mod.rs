//! The durable log every accepted message goes to before its sender hears `ack`.
//!
//! * [`kafka`]: Apache Kafka (or any Kafka-protocol broker), produced with `rdkafka`.

pub mod kafka;
