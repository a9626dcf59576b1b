//! `chat-server`: start one monoio runtime per core, each with its own SO_REUSEPORT listener.
//!
//! The path of one message, file by file: [`connection`] reads a frame and decodes the request,
//! [`ops::send`] checks it and hands it to the room's owner core through [`fanout`],
//! [`bus::memory`] assigns its seq, stores it and sends it to every core with members, and
//! [`core`] writes the shared frame to each member's socket.

mod accept;
mod api;
mod auth;
mod bus;
mod compress;
mod config;
mod connection;
mod core;
mod fanout;
mod http;
mod log;
mod members;
mod messages;
mod metrics;
mod node;
mod ops;
mod outbound;
mod per_ip;
mod rate_limit;
mod replies;
mod runtime;
mod store;
mod tls;

use clap::Parser;
use node::Node;
use std::net::SocketAddr;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    chat_process_metrics::logging::init();
    let config = config::Config::parse();
    let threads = match config.validate() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => match tls::Tls::load(cert, key) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        },
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Signals are taken by one thread with sigwait; every other thread inherits the mask.
    let signals = block_signals();

    // Bind the first listener here so that port 0 resolves once; every core then binds the
    // same address with SO_REUSEPORT and the kernel spreads connections among them.
    // Accepted sockets inherit the listener's SO_SNDBUF.
    let sndbuf = config.socket_send_buffer;
    let cluster = cluster_config(&config);
    if cluster.is_none() && config.listen.port() != 0 {
        if let Err(e) = wait_for_free_port(config.listen) {
            eprintln!(
                "error: cannot listen on {}: {e}. Another process serves it (a second standalone chat-server would split the rooms between the two, silently: SO_REUSEPORT lets both bind); stop it or pick another port",
                config.listen
            );
            std::process::exit(1);
        }
    }
    let first = match bind(config.listen, sndbuf) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.listen);
            std::process::exit(1);
        }
    };
    let addr = first.local_addr().expect("local address");
    let node = Node::new(config, threads, cluster.is_some(), tls);
    let bus = cluster.map(|cfg| {
        bus::cluster::start(node.clone(), cfg, std::time::Duration::from_secs(30)).unwrap_or_else(
            |e| {
                eprintln!("error: {e}");
                std::process::exit(1);
            },
        )
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut listeners = vec![Some(first)];
    for _ in 1..threads {
        listeners.push(Some(
            bind(addr, sndbuf).unwrap_or_else(|e| panic!("bind {addr} again: {e}")),
        ));
    }
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(id, listener)| {
            let node = node.clone();
            let ready = ready_tx.clone();
            std::thread::Builder::new()
                .name(format!("core-{id}"))
                .spawn(move || runtime::run(id, node, listener.unwrap(), ready))
                .expect("spawn core thread")
        })
        .collect();
    for _ in 0..threads {
        ready_rx.recv().expect("core started");
    }
    println!("listening on {scheme}://{addr}");
    match &bus {
        Some(_) => {
            tracing::info!(%addr, threads, "chat-server ready (cluster: rooms ordered by Redis)")
        }
        None => {
            tracing::info!(%addr, threads, "chat-server ready (standalone: rooms ordered in memory)")
        }
    }

    let drain_node = node.clone();
    std::thread::spawn(move || {
        let sig = loop {
            match wait_for_signal(&signals) {
                libc::SIGHUP => reload_tls(&drain_node),
                sig => break sig,
            }
        };
        tracing::info!(signal = sig, "draining");
        drain_node.start_draining();
        std::thread::sleep(std::time::Duration::from_secs_f64(
            drain_node.config.drain_grace,
        ));
        for mailbox in drain_node.mailboxes.iter() {
            mailbox.send(vec![messages::CoreMsg::Shutdown]);
        }
    });
    for h in handles {
        let _ = h.join();
    }
    if let Some(bus) = bus {
        // The bus flushes Kafka when it gets Shutdown (up to KAFKA_FLUSH_TIMEOUT) and then
        // ends: wait for it, so that no delivery still on its way is cut off by the exit.
        let deadline = std::time::Instant::now()
            + bus::cluster::KAFKA_FLUSH_TIMEOUT
            + std::time::Duration::from_secs(1);
        while !bus.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if !bus.is_finished() {
            tracing::warn!("the cluster bus did not finish flushing Kafka in time");
        }
    }
    tracing::info!("stopped");
}

fn cluster_config(config: &config::Config) -> Option<bus::cluster::ClusterConfig> {
    if config.redis.is_empty() {
        return None;
    }
    let kafka = config
        .kafka
        .as_ref()
        .map(|brokers| log::kafka::KafkaConfig {
            brokers: brokers.clone(),
            topic: config.kafka_topic.clone(),
            backlog: config.kafka_backlog,
            delivery_timeout_ms: config.kafka_timeout_ms,
            linger_ms: config.kafka_linger_ms,
        });
    Some(bus::cluster::ClusterConfig {
        redis: config.redis.clone(),
        kafka,
        history_len: config.history_len,
        dedupe_ttl_secs: config.dedupe_window,
        postgres: config.postgres.clone(),
        pg_replays: config.pg_replays.max(1),
        pg_replay_wait: std::time::Duration::from_secs_f64(config.pg_replay_wait.max(0.0)),
        replicas: config.redis_replicas,
        wait_ms: config.redis_wait_ms,
        presence_ttl: std::time::Duration::from_secs_f64(config.presence_ttl.clamp(1.0, 3600.0)),
    })
}

/// [`port_is_free`], asked again for up to [`PORT_WAIT`] while it is not: a process that has
/// just ended can hold its listeners a little longer (io_uring tears its pending accepts down
/// after the exit), and a quick restart must not be taken for a second server.
fn wait_for_free_port(addr: SocketAddr) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + PORT_WAIT;
    loop {
        match port_is_free(addr) {
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "listen port busy; asking again");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            done => return done,
        }
    }
}

/// How long a busy listen port is asked again before a standalone start is refused.
const PORT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether `addr` is free, asked with a bind without SO_REUSEPORT: the cores' own binds set it,
/// so they would also succeed next to another process's listeners on the same port, and the
/// kernel would spread clients over both processes. Standalone, each process has its own rooms,
/// so that would split them; in cluster mode two processes on one port are two nodes of the
/// cluster (a restart that overlaps), which is fine.
fn port_is_free(addr: SocketAddr) -> std::io::Result<()> {
    tcp_socket(addr)?.bind(&addr.into())
}

/// A TCP socket for `addr` with SO_REUSEADDR: connections of a process that just ended
/// (TIME_WAIT) do not keep it from binding; a listener does.
fn tcp_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

fn bind(addr: SocketAddr, send_buffer: usize) -> std::io::Result<std::net::TcpListener> {
    let socket = tcp_socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if send_buffer > 0 {
        socket.set_send_buffer_size(send_buffer)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// SIGHUP: reads the TLS certificate and key again; new handshakes use them, open connections
/// keep theirs. A failed reload keeps the current certificate.
fn reload_tls(node: &Node) {
    match &node.tls {
        Some(tls) => match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS reload failed, the current certificate stays")
            }
        },
        None => tracing::info!("SIGHUP ignored: no --tls-cert to reload"),
    }
}

/// Blocks SIGTERM, SIGINT (drain) and SIGHUP (TLS reload) for every thread; one thread takes
/// them with [`wait_for_signal`].
fn block_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
