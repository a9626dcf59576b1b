//! The drill's Kafka: the real tansu broker (durable `sqlite://` storage for the drill that
//! kills and restarts it), or, where tansu is not installed and nothing requires it,
//! librdkafka's mock cluster in this process (the nodes and the persister reach it over TCP).

use chat_testkit::Broker;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub enum Kafka {
    Tansu(Broker),
    Mock(MockCluster<'static, DefaultProducerContext>),
}

impl Kafka {
    /// tansu when installed; otherwise the mock cluster, unless `CHAT_REQUIRE_BROKER=1`
    /// (then missing tansu is an error).
    pub fn start(durable: bool) -> Kafka {
        if chat_testkit::tansu_binary().is_some()
            || std::env::var("CHAT_REQUIRE_BROKER").as_deref() == Ok("1")
        {
            return Kafka::Tansu(Broker::start(durable).expect("tansu is installed"));
        }
        eprintln!(
            "NOTE: tansu is not installed (scripts/broker.sh install): this drill uses \
             librdkafka's mock cluster as its broker"
        );
        Kafka::Mock(MockCluster::new(3).expect("librdkafka mock cluster"))
    }

    /// tansu only (a drill that stops the broker): `None`, after `SKIPPED: ...`, when it is
    /// not installed, unless `CHAT_REQUIRE_BROKER=1` (then it panics).
    pub fn tansu(durable: bool) -> Option<Kafka> {
        Broker::start(durable).map(Kafka::Tansu)
    }

    /// Bootstrap servers for `--kafka`.
    pub fn addr(&self) -> String {
        match self {
            Kafka::Tansu(b) => b.addr(),
            Kafka::Mock(m) => m.bootstrap_servers(),
        }
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        match self {
            Kafka::Tansu(b) => b.create_topic(topic, partitions),
            Kafka::Mock(m) => m
                .create_topic(topic, partitions as i32, 3)
                .unwrap_or_else(|e| panic!("mock cluster: create topic {topic}: {e}")),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Kafka::Tansu(_) => "tansu",
            Kafka::Mock(_) => "mock",
        }
    }

    /// The tansu broker (panics for the mock cluster).
    pub fn broker(&mut self) -> &mut Broker {
        match self {
            Kafka::Tansu(b) => b,
            Kafka::Mock(_) => panic!("this drill needs tansu, not the mock cluster"),
        }
    }
}
