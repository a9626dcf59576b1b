//! One core's thread: its monoio runtime, its accept loop on the shared port (SO_REUSEPORT), the
//! loop that takes its mail from other cores, and the once-a-second housekeeping.

use crate::accept::{out_of_descriptors, Acceptor};
use crate::config::IoDriver;
use crate::connection;
use crate::core::{Core, CoreRef};
use crate::fanout::Outbox;
use crate::messages::{CoreId, CoreMsg};
use crate::metrics::inc;
use crate::node::Node;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts the core's runtime on the current thread and runs it until shutdown.
pub fn run(
    id: CoreId,
    node: Arc<Node>,
    listener: std::net::TcpListener,
    ready: std::sync::mpsc::Sender<()>,
) {
    let mut rt = match node.config.io_driver {
        IoDriver::Auto => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .with_entries(4096)
            .build(),
        IoDriver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(monoio::FusionRuntime::Legacy),
    }
    .expect("build monoio runtime");
    let driver = match &rt {
        monoio::FusionRuntime::Uring(_) => "io_uring",
        monoio::FusionRuntime::Legacy(_) => "epoll",
    };
    let uring = matches!(rt, monoio::FusionRuntime::Uring(_));
    node.metrics.cores[id]
        .io_uring
        .store(u64::from(uring), std::sync::atomic::Ordering::Relaxed);
    tracing::info!(core = id, driver, "core started");
    rt.block_on(serve(id, node, listener, ready));
}

async fn serve(
    id: CoreId,
    node: Arc<Node>,
    listener: std::net::TcpListener,
    ready: std::sync::mpsc::Sender<()>,
) {
    let listener = monoio::net::TcpListener::from_std(listener).expect("register listener");
    let out = Rc::new(Outbox::new(node.mailboxes.clone()));
    let core: CoreRef = Rc::new(RefCell::new(Core::new(id, node.clone(), out.clone())));
    monoio::spawn({
        let out = out.clone();
        async move { out.run_flusher().await }
    });
    let (stop_tx, stop_rx) = local_sync::oneshot::channel::<()>();
    monoio::spawn(mail_loop(core.clone(), stop_tx));
    monoio::spawn(housekeeping(core.clone()));
    let _ = ready.send(());

    let mut stop = std::pin::pin!(stop_rx);
    let mut acceptor = Acceptor::new();
    loop {
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    acceptor.accepted();
                    monoio::spawn(connection::serve(core.clone(), stream, peer.ip()));
                }
                Err(e) if out_of_descriptors(&e) => {
                    inc(&node.metrics.cores[id].accept_fd_exhausted);
                    acceptor.out_of_descriptors(id, &listener, &e).await;
                }
                Err(e) => {
                    // The peer gave up before its connection was taken (ECONNABORTED) or the
                    // like: nothing to wait for.
                    tracing::debug!(core = id, error = %e, "accept failed");
                }
            },
            _ = &mut stop => break,
        }
    }
    drop(listener);
    // Connections were asked to close with 1001; give them a moment to say goodbye.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !core.borrow().conns.is_empty() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    out.flush();
}

async fn mail_loop(core: CoreRef, stop: local_sync::oneshot::Sender<()>) {
    let node = core.borrow().node.clone();
    let id = core.borrow().id;
    let mut stop = Some(stop);
    loop {
        let batch = node.mailboxes[id].recv().await;
        let mut c = core.borrow_mut();
        inc(&c.counters().mail_batches);
        crate::metrics::add(&c.counters().mail_messages, batch.len() as u64);
        for msg in batch {
            if let CoreMsg::Shutdown = msg {
                c.close_all(
                    chat_wire::frame::close_code::GOING_AWAY,
                    "server shutting down",
                );
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
                continue;
            }
            c.handle_mail(msg);
        }
    }
}

/// Once a second: ping quiet connections, close silent ones, cut connections whose close
/// handshake has taken too long, and send the coalesced presence of large rooms.
/// Also gives memory back to the system once the core let go of much state (see
/// [`give_back_memory`]).
async fn housekeeping(core: CoreRef) {
    let ping_after = Duration::from_secs(core.borrow().node.config.idle_ping);
    let mut tick = monoio::time::interval(Duration::from_secs(1));
    let mut held = 0;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let c = core.borrow();
        for conn in c.conns.values() {
            conn.io.housekeeping(now, ping_after);
        }
        let now_held = c.conns.len() + c.rooms.len() + c.shard.rooms();
        if now_held + GIVE_BACK_AFTER <= held {
            give_back_memory();
        }
        held = now_held;
        drop(c);
        // Large rooms' coalesced presence, and old typing marks (bus/memory/presence.rs).
        core.borrow_mut().shard.tick(crate::messages::now_ms());
    }
}

/// Connections and rooms a core must have let go of within a second before it returns the
/// freed memory to the system.
const GIVE_BACK_AFTER: usize = 10_000;

/// Returns this thread's free memory to the system. mimalloc keeps freed pages for reuse, and
/// memory freed by another core waits in this thread's delayed-free lists until it allocates
/// again: after a connection that touched a million rooms is gone, an idle core would keep
/// hundreds of MB resident. A forced collection costs milliseconds, and runs only after such
/// a drop.
fn give_back_memory() {
    // SAFETY: mi_collect has no preconditions; it only walks the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
