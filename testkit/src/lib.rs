//! Real backing services for the workspace's integration tests and drills: a private
//! `redis-server` or Redis Cluster, the tansu Kafka-protocol broker and a private PostgreSQL,
//! each on its own free loopback port and in its own temporary directory, killed and removed
//! when dropped. A dev-dependency only; nothing here is mocked.
//!
//! Everything is blocking and std-only. From a tokio test, call it before the runtime work
//! starts or through `tokio::task::spawn_blocking`.
//!
//! The shared Redis (6379) and PostgreSQL (5432) are never stopped, killed or wiped: a test
//! that needs to do that to a service starts its own here.

pub mod broker;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod service;

pub use broker::{tansu_binary, Broker};
pub use postgres::{PrivatePostgres, ScratchDb};
pub use process::{free_port, log_tail, print_log_if_panicking, send_signal, TempDir};
pub use redis::{redis_cli, RedisCluster, RedisServer};
pub use service::Service;
