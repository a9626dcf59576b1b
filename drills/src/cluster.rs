//! One drill's cluster, all private to it: a `redis-server`, the broker with a topic of the
//! drill's own (created explicitly), a fresh database, two `chat-server` nodes in cluster mode
//! and the `chat-persister` on that topic and database. Dropped in that order, backwards:
//! processes first, then the services. The logs stay in `<target>/drill-results/<drill>/logs/`.

use crate::kafka::Kafka;
use crate::load::{Finished, Load};
use crate::pg::{Db, Persisted, SHARED_PG};
use crate::procs::{Node, Persister};
use crate::report::Report;
use chat_testkit::{PrivatePostgres, RedisCluster, RedisServer};
use loadgen::report::AckRecord;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Options {
    /// The drill's name (`node-kill`): logs, topic, database and group names derive from it.
    pub drill: &'static str,
    /// The broker must be tansu on durable storage (the drill stops it); without tansu the
    /// drill is skipped (`SKIPPED:`), or fails with `CHAT_REQUIRE_BROKER=1`.
    pub durable_broker: bool,
    /// The broker must be tansu on memory storage (the drill restarts it empty); skipped
    /// without tansu like `durable_broker`.
    pub memory_broker: bool,
    /// A private PostgreSQL that the drill may stop, instead of a database on the shared one.
    pub private_postgres: bool,
    /// Extra flags for every node.
    pub node_args: Vec<String>,
    pub nodes: usize,
    pub partitions: u32,
    /// Extra `redis-server` flags (say `--appendonly no` where the drill never restarts it:
    /// fsyncing every write adds latency spikes).
    pub redis_args: Vec<&'static str>,
    /// A Redis Cluster of 3 masters with this many replicas each and this
    /// `cluster-node-timeout` (ms) for the nodes, instead of the single `redis-server`.
    pub redis_cluster: Option<(usize, u64)>,
}

impl Options {
    pub fn new(drill: &'static str) -> Options {
        Options {
            drill,
            durable_broker: false,
            memory_broker: false,
            private_postgres: false,
            node_args: Vec::new(),
            nodes: 2,
            partitions: 4,
            redis_args: Vec::new(),
            redis_cluster: None,
        }
    }
}

/// How long PostgreSQL may take to hold every acked message after the load ends.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub persister: Persister,
    pub kafka: Kafka,
    pub redis: RedisServer,
    /// With [`Options::redis_cluster`]: the Redis Cluster the nodes use (then `redis` is idle).
    pub redis_cluster: Option<RedisCluster>,
    pub db: Db,
    pub pg: Option<PrivatePostgres>,
    pub topic: String,
    pub drill: &'static str,
    node_args: Vec<String>,
    /// The processes' logs: `<target>/drill-results/<drill>/logs/`, emptied at the start and
    /// kept afterwards.
    dir: PathBuf,
}

/// `drill_<name>_<pid>_<random>`: a PostgreSQL identifier and Kafka topic name nobody else uses.
fn unique(drill: &str) -> String {
    format!(
        "drill_{}_{}_{:08x}",
        drill.replace('-', "_"),
        std::process::id(),
        chat_testkit::process::random_u64() as u32
    )
}

impl Cluster {
    /// Starts everything; `None` when the drill needs tansu and it is not installed.
    pub async fn start(opts: Options) -> Option<Cluster> {
        let dir = crate::load::results_dir().join(opts.drill).join("logs");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let kafka = if opts.durable_broker {
            Kafka::tansu(true)?
        } else if opts.memory_broker {
            Kafka::tansu(false)?
        } else {
            Kafka::start(false)
        };
        let name = unique(opts.drill);
        let topic = name.clone();
        kafka.create_topic(&topic, opts.partitions);
        let redis = RedisServer::start_with_args(&opts.redis_args);
        let redis_cluster = opts
            .redis_cluster
            .map(|(replicas, timeout)| RedisCluster::start_with_replicas(replicas, timeout));
        let redis_urls = match &redis_cluster {
            Some(c) => c.urls().join(","),
            None => redis.url(),
        };
        let pg = opts.private_postgres.then(PrivatePostgres::start);
        let admin = pg.as_ref().map_or(SHARED_PG.to_string(), |p| p.url());
        let db = Db::create(&admin, &name);
        let persister = Persister::start(&kafka.addr(), &db.url, &topic, &name, &dir);
        let mut node_args: Vec<String> = [
            "--threads",
            "2",
            "--rate-limit",
            "0",
            "--redis",
            &redis_urls,
            "--kafka",
            &kafka.addr(),
            "--kafka-topic",
            &topic,
            "--postgres",
            &db.url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        node_args.extend(opts.node_args.iter().cloned());
        let nodes = (0..opts.nodes)
            .map(|i| Node::start(&format!("node{i}"), &node_args, &dir))
            .collect();
        let cluster = Cluster {
            nodes,
            persister,
            kafka,
            redis,
            redis_cluster,
            db,
            pg,
            topic,
            drill: opts.drill,
            node_args,
            dir,
        };
        eprintln!(
            "drill {}: nodes {}, redis {}, broker {} ({}), topic {}, database {}, logs in {}",
            cluster.drill,
            cluster.urls().join(" "),
            cluster.redis.url(),
            cluster.kafka.addr(),
            cluster.kafka.kind(),
            cluster.topic,
            cluster.db.url,
            cluster.dir.display()
        );
        Some(cluster)
    }

    /// The directory with the processes' logs.
    pub fn log_dir(&self) -> &Path {
        &self.dir
    }

    /// Waits (up to 90 s) until PostgreSQL holds every acked message, then compares the rows
    /// with the acks.
    pub async fn wait_persisted(&mut self, acks: &[AckRecord]) -> Persisted {
        crate::pg::wait_persisted(&self.db.url, acks, &mut self.persister, PERSIST_TIMEOUT).await
    }

    /// The end of every drill's run: the load finishes, PostgreSQL catches up, and the report
    /// gets the broker and the standard counts.
    pub async fn finish(&mut self, load: Load, report: &mut Report) -> (Finished, Persisted) {
        let run = load.finish().await;
        let p = self.wait_persisted(&run.result.acks).await;
        report.cluster(self);
        report.standard(&run, &p);
        (run, p)
    }

    /// The persister's stored next offsets of the drill's topic, (partition, offset) sorted.
    pub async fn db_offsets(&self) -> Vec<(i32, i64)> {
        let client = crate::pg::connect(&self.db.url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client
            .query(
                "SELECT partition, next_offset FROM persister_offsets WHERE topic = $1 ORDER BY partition",
                &[&self.topic],
            )
            .await
            .expect("persister_offsets")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// `ws://ADDR` of every node, for the scenario.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Starts one more node with the same flags (say after one was killed).
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let node = Node::start(&format!("node{i}"), &self.node_args, &self.dir);
        self.nodes.push(node);
        i
    }

    /// A metric of node `i` (summed over its series); `None` when the node does not answer.
    pub fn metric_of(&self, i: usize, name: &str) -> Option<f64> {
        let (status, text) =
            crate::procs::http_get(&self.nodes[i].addr.to_string(), "/metrics").ok()?;
        (status == 200).then(|| crate::procs::metric_sum(&text, name))
    }

    /// The sum of a metric over every node that still answers.
    pub fn node_metric(&self, name: &str) -> f64 {
        self.node_metrics(name).iter().sum()
    }

    /// A metric's value on each node, in node order (0 for a node that does not answer).
    pub fn node_metrics(&self, name: &str) -> Vec<f64> {
        self.nodes
            .iter()
            .map(
                |n| match crate::procs::http_get(&n.addr.to_string(), "/metrics") {
                    Ok((_, text)) => crate::procs::metric_sum(&text, name),
                    Err(_) => 0.0,
                },
            )
            .collect()
    }
}
