//! How cores talk to each other: batched, lock-free, one-way queues.
//!
//! Every core has one [`Mailbox`] (a lock-free `SegQueue` of batches plus an `AtomicWaker`) and
//! one [`Outbox`]. While a core handles a turn of work (a socket read, a batch of mail), whatever
//! it has for other cores goes into the outbox, grouped by destination; a flusher task that runs
//! after the turn sends each group as one batch: one queue push and at most one wake-up per
//! destination per turn, however many messages. A core's mail from one sender arrives in the
//! order it was sent, which is what keeps per-room order: a room's owner core sees a
//! connection's sends in the order the connection made them.
//!
//! Encoded frames travel as `Bytes`: fanning a message out to a thousand sockets on eight cores
//! clones a reference count, never the payload.

use crate::messages::{CoreId, CoreMsg};
use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// One core's inbox.
pub struct Mailbox {
    queue: SegQueue<Vec<CoreMsg>>,
    waker: AtomicWaker,
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox {
            queue: SegQueue::new(),
            waker: AtomicWaker::new(),
        }
    }
}

impl Mailbox {
    pub fn send(&self, batch: Vec<CoreMsg>) {
        self.queue.push(batch);
        self.waker.wake();
    }

    /// Takes the next batch if there is one.
    #[cfg(test)]
    pub fn try_recv(&self) -> Option<Vec<CoreMsg>> {
        self.queue.pop()
    }

    /// Waits for the next batch. Only the owning core calls this.
    pub async fn recv(&self) -> Vec<CoreMsg> {
        poll_fn(|cx| {
            if let Some(batch) = self.queue.pop() {
                return Poll::Ready(batch);
            }
            self.waker.register(cx.waker());
            // A batch pushed between the pop and the register would not wake us: look again.
            match self.queue.pop() {
                Some(batch) => Poll::Ready(batch),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// Messages a core has for other cores in the current turn, grouped by destination.
pub struct Outbox {
    mailboxes: Arc<[Mailbox]>,
    pending: RefCell<Vec<Vec<CoreMsg>>>,
    scheduled: Cell<bool>,
    flusher: RefCell<Option<Waker>>,
}

impl Outbox {
    pub fn new(mailboxes: Arc<[Mailbox]>) -> Self {
        let pending = (0..mailboxes.len()).map(|_| Vec::new()).collect();
        Outbox {
            mailboxes,
            pending: RefCell::new(pending),
            scheduled: Cell::new(false),
            flusher: RefCell::new(None),
        }
    }

    /// Queues `msg` for core `to`; it leaves at the end of this turn.
    pub fn push(&self, to: CoreId, msg: CoreMsg) {
        self.pending.borrow_mut()[to].push(msg);
        if !self.scheduled.replace(true) {
            if let Some(w) = self.flusher.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    /// Sends every queued group as one batch.
    pub fn flush(&self) {
        self.scheduled.set(false);
        let mut pending = self.pending.borrow_mut();
        for (to, msgs) in pending.iter_mut().enumerate() {
            if !msgs.is_empty() {
                self.mailboxes[to].send(std::mem::take(msgs));
            }
        }
    }

    /// The flusher task: waits until something was queued, yields once so the rest of the
    /// turn's ready tasks add to the batch, then flushes. Runs for the life of the core.
    pub async fn run_flusher(&self) {
        loop {
            poll_fn(|cx| {
                if self.scheduled.get() {
                    Poll::Ready(())
                } else {
                    *self.flusher.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            yield_now().await;
            self.flush();
        }
    }
}

/// Lets every other ready task of this core run once.
pub async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Which core owns a room or user channel: a fixed hash of its name, so every core agrees.
pub fn owner_of(name: &str, cores: usize) -> CoreId {
    // FNV-1a: stable across processes and cheap for short names.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % cores as u64) as usize
}

/// The owner of a user's direct-message channel (kept apart from a room of the same name).
pub fn user_owner(user: &str, cores: usize) -> CoreId {
    owner_of(user, cores.max(1)).wrapping_add(1) % cores.max(1)
}
