//! A sending connection's write side, which outlives each TCP connection: what the schedule
//! makes queues here, the writer task writes it to whichever connection is current and, with
//! `reconnect`, keeps every unanswered message to write again (same cid) on the next one.

use super::state::Shard;
use crate::client::Ws;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A message of the sender's schedule: (role, k) from its cid.
pub(super) type SendKey = (u32, u64);

/// The key of a keep-alive answer queued with the sends (no role has this number).
pub(super) const PONG_KEY: SendKey = (u32::MAX, 0);

/// A send not answered yet (kept only with `reconnect`).
pub(super) struct Pending {
    pub(super) msg: Message,
    /// The connection generation that last carried it (0: waiting to be written).
    pub(super) written: u32,
    /// `unavailable` answers so far (for the retry backoff).
    pub(super) attempts: u32,
}

/// A sending connection's write side, which outlives each TCP connection: the schedule's
/// messages queue here and the [`writer_task`] writes them to the current connection.
pub(super) struct Outbox {
    pub(super) messages: mpsc::UnboundedSender<(SendKey, Message)>,
    /// Write halves of (re)opened connections, with their generation.
    pub(super) sinks: mpsc::UnboundedSender<(u32, SplitSink<Ws, Message>)>,
    pub(super) generation: Cell<u32>,
    /// With `reconnect`: every message not answered yet.
    pub(super) pending: RefCell<HashMap<SendKey, Pending>>,
}

pub(super) type OutboxParts = (
    Rc<Outbox>,
    mpsc::UnboundedReceiver<(SendKey, Message)>,
    mpsc::UnboundedReceiver<(u32, SplitSink<Ws, Message>)>,
);

impl Outbox {
    pub(super) fn new() -> OutboxParts {
        let (messages, messages_rx) = mpsc::unbounded_channel();
        let (sinks, sinks_rx) = mpsc::unbounded_channel();
        let ob = Rc::new(Outbox {
            messages,
            sinks,
            generation: Cell::new(0),
            pending: RefCell::new(HashMap::new()),
        });
        (ob, messages_rx, sinks_rx)
    }
}

/// Retries a send answered `unavailable` with the same cid, after 50 ms doubling per attempt
/// up to 1 s (the server asks for exactly this: "retry with the same cid").
pub(super) fn retry_later(ob: &Rc<Outbox>, key: SendKey) {
    let delay = {
        let mut pending = ob.pending.borrow_mut();
        let Some(p) = pending.get_mut(&key) else {
            return;
        };
        p.attempts += 1;
        p.written = 0;
        Duration::from_millis(50 << p.attempts.min(5).saturating_sub(1)).min(Duration::from_secs(1))
    };
    let ob = ob.clone();
    tokio::task::spawn_local(async move {
        tokio::time::sleep(delay).await;
        let msg = ob.pending.borrow().get(&key).map(|p| p.msg.clone());
        if let Some(msg) = msg {
            let _ = ob.messages.send((key, msg));
        }
    });
}

/// Writes a sending connection's messages to its current connection: everything queued at
/// once as one batch (`feed` each, one `flush`). On a new connection it first re-sends every
/// unanswered message the old one carried (`reconnect`).
pub(super) async fn writer_task(
    sh: Rc<Shard>,
    c: u32,
    ob: Rc<Outbox>,
    mut messages: mpsc::UnboundedReceiver<(SendKey, Message)>,
    mut sinks: mpsc::UnboundedReceiver<(u32, SplitSink<Ws, Message>)>,
) {
    let reconnect = sh.scenario.reconnect;
    let mut current: Option<(u32, SplitSink<Ws, Message>)> = None;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            biased;
            next = sinks.recv() => {
                let Some((generation, mut sink)) = next else { return };
                if reconnect {
                    // In send order: (k, role).
                    let mut again: Vec<(SendKey, Message)> = ob
                        .pending
                        .borrow()
                        .iter()
                        .filter(|(_, p)| p.written != 0 && p.written < generation)
                        .map(|(k, p)| (*k, p.msg.clone()))
                        .collect();
                    again.sort_unstable_by_key(|((role, k), _)| (*k, *role));
                    let mut ok = true;
                    for (key, msg) in again {
                        if let Some(p) = ob.pending.borrow_mut().get_mut(&key) {
                            p.written = generation;
                        }
                        sh.stats.borrow_mut().counters.retries += 1;
                        ok = ok && sink.feed(msg).await.is_ok();
                    }
                    if !(ok && sink.flush().await.is_ok()) {
                        continue; // this connection is gone already; the next one re-sends
                    }
                }
                current = Some((generation, sink));
            }
            first = messages.recv(), if current.is_some() => {
                let Some(first) = first else { return };
                batch.push(first);
                while let Ok(more) = messages.try_recv() {
                    batch.push(more);
                }
                let Some((generation, sink)) = current.as_mut() else { continue };
                let mut result = Ok(());
                for (key, msg) in batch.drain(..) {
                    if reconnect {
                        let mut pending = ob.pending.borrow_mut();
                        match pending.get_mut(&key) {
                            // Answered meanwhile, or already re-sent on this connection.
                            None => continue,
                            Some(p) if p.written == *generation => continue,
                            Some(p) => {
                                if p.attempts > 0 {
                                    sh.stats.borrow_mut().counters.retries += 1;
                                }
                                p.written = *generation;
                            }
                        }
                    }
                    if result.is_ok() {
                        result = sink.feed(msg).await;
                    }
                }
                if result.is_ok() {
                    result = sink.flush().await;
                }
                if let Err(e) = result {
                    if !reconnect && !sh.stopping.get() {
                        sh.error(format!("send on connection {c}: {e}"));
                    }
                    // Wait for the next connection (with `reconnect`; otherwise none comes and
                    // the rest stays unanswered).
                    current = None;
                }
            }
        }
    }
}
