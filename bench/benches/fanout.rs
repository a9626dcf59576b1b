//! Cross-core fan-out in one process, with the server's own primitives (`chat_server::fanout`:
//! `Outbox` batching per destination per turn, `Mailbox` = `SegQueue` of batches +
//! `AtomicWaker`), against the "global queue, one message at a time" alternative: one
//! `crossbeam-channel` / `std::sync::mpsc` channel per consumer core, one `send` per message.
//!
//! One producer thread (a room's owner core) sends `CoreMsg::Deliver` of pre-encoded `msg`
//! frames to 1 or 2 consumer threads (cores with members). Each consumer looks the channel up
//! in its members map and queues the frame (`Bytes` clone) on each of its S subscribers'
//! outbound queues, which are written out (dropped) every 32 frames, as a writer task would.
//! Consumers park when idle and are woken by the mailbox's `AtomicWaker` or by the channel.
//! The producer stops when it is more than `WINDOW` messages ahead of a consumer (the same
//! rule for every variant), so memory stays bounded. Throughput: deliveries (message x
//! subscriber) per second.

use ahash::AHashMap;
use bytes::Bytes;
use chat_server::fanout::{Mailbox, Outbox};
use chat_server::messages::{Channel, CoreMsg, Name};
use chat_wire::protocol::Msg;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages a producer may be ahead of the slowest consumer.
const WINDOW: u64 = 8192;
/// How often (in messages) consumers publish progress and the producer checks the window.
const PROGRESS_EVERY: u64 = 64;
/// Subscriber outbound queues are written out (emptied) at this many frames.
const WRITE_EVERY: usize = 32;

#[repr(align(128))]
#[derive(Default)]
struct Progress(AtomicU64);

/// One consumer core's members of the room: S connections with outbound queues.
struct Subscribers {
    members: AHashMap<Channel, Vec<usize>>,
    queues: Vec<Vec<Bytes>>,
}

impl Subscribers {
    fn new(channel: &Channel, n: usize) -> Self {
        let mut members = AHashMap::new();
        members.insert(channel.clone(), (0..n).collect());
        Subscribers {
            members,
            queues: (0..n).map(|_| Vec::with_capacity(WRITE_EVERY)).collect(),
        }
    }

    /// What `core.rs` does with a `Deliver`: every local member gets the same `Bytes`.
    #[inline]
    fn deliver(&mut self, channel: &Channel, frame: &Bytes) -> u64 {
        let Some(members) = self.members.get(channel) else {
            return 0;
        };
        for &conn in members {
            let q = &mut self.queues[conn];
            q.push(frame.clone());
            if q.len() == WRITE_EVERY {
                q.clear();
            }
        }
        members.len() as u64
    }
}

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A consumer core's loop on its mailbox: `recv().await`, parking the thread while pending.
fn mailbox_consumer(mailbox: &Mailbox, mut subs: Subscribers, progress: &Progress) -> u64 {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let (mut done, mut delivered) = (0u64, 0u64);
    loop {
        let batch = {
            let mut recv = pin!(mailbox.recv());
            loop {
                match recv.as_mut().poll(&mut cx) {
                    Poll::Ready(batch) => break batch,
                    Poll::Pending => thread::park(),
                }
            }
        };
        for msg in batch {
            match msg {
                CoreMsg::Deliver { channel, frame, .. } => {
                    delivered += subs.deliver(&channel, &frame);
                    done += 1;
                }
                CoreMsg::Shutdown => {
                    progress.0.store(done, Ordering::Release);
                    return delivered;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        progress.0.store(done, Ordering::Release);
    }
}

/// A consumer of a per-message channel: one `recv` per message.
fn channel_consumer(
    mut recv: impl FnMut() -> CoreMsg,
    mut subs: Subscribers,
    progress: &Progress,
) -> u64 {
    let (mut done, mut delivered) = (0u64, 0u64);
    loop {
        match recv() {
            CoreMsg::Deliver { channel, frame, .. } => {
                delivered += subs.deliver(&channel, &frame);
                done += 1;
                if done % PROGRESS_EVERY == 0 {
                    progress.0.store(done, Ordering::Release);
                }
            }
            CoreMsg::Shutdown => {
                progress.0.store(done, Ordering::Release);
                return delivered;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    /// `Outbox` + `Mailbox`, flushing every `turn` messages (one batch per consumer per turn).
    Mailbox {
        turn: u64,
    },
    Crossbeam,
    StdMpsc,
}

struct Scenario {
    consumers: usize,
    subscribers: usize,
    /// Messages per criterion iteration.
    messages: u64,
    channel: Channel,
    room: Name,
    frames: Vec<Bytes>,
}

impl Scenario {
    fn new(consumers: usize, subscribers: usize) -> Self {
        let room: Name = "lobby".into();
        let body = chat_bench::chat_text(100, false);
        let frames = (0..64u64)
            .map(|i| {
                Msg {
                    room: &room,
                    seq: i + 1,
                    id: "5f3a9c0e12d4b6a8-1-1e240",
                    from: "alice",
                    ts: 1_764_000_000_000,
                    body: &body,
                    cid: "c-1",
                }
                .frame()
            })
            .collect();
        Scenario {
            consumers,
            subscribers,
            // About 20k deliveries per consumer per iteration.
            messages: (20_000 / subscribers as u64).max(20),
            channel: Channel::Room(room.clone()),
            room,
            frames,
        }
    }

    fn deliver_msg(&self, seq: u64) -> CoreMsg {
        CoreMsg::Deliver {
            channel: self.channel.clone(),
            room: self.room.clone(),
            seq,
            frame: self.frames[seq as usize % self.frames.len()].clone(),
        }
    }

    /// Waits while the slowest consumer is more than `WINDOW` messages behind.
    fn wait_window(progress: &[Progress], sent: u64) {
        while progress
            .iter()
            .any(|p| sent - p.0.load(Ordering::Acquire) > WINDOW)
        {
            // Sleep rather than spin: on a 2-core machine a spinning producer would take a
            // core from the consumers. The window is milliseconds of their work.
            thread::sleep(Duration::from_micros(50));
        }
    }

    /// The per-message channel variants: a channel per consumer made by `channel`, one `send`
    /// per message per consumer, then a `Shutdown` each. Returns when the producer started and
    /// the consumers' threads.
    fn run_channels<'scope, 'env, Tx, Rx>(
        &'env self,
        s: &'scope thread::Scope<'scope, 'env>,
        progress: &'env [Progress],
        total: u64,
        channel: impl Fn() -> (Tx, Rx),
        send: impl Fn(&Tx, CoreMsg),
        recv: impl Fn(&Rx) -> CoreMsg + Copy + Send + 'scope,
    ) -> (Instant, Vec<thread::ScopedJoinHandle<'scope, u64>>)
    where
        Rx: Send + 'scope,
    {
        let (senders, receivers): (Vec<Tx>, Vec<Rx>) =
            (0..self.consumers).map(|_| channel()).unzip();
        let handles = receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                let subs = Subscribers::new(&self.channel, self.subscribers);
                s.spawn(move || channel_consumer(|| recv(&rx), subs, &progress[i]))
            })
            .collect();
        let started = Instant::now();
        for seq in 0..total {
            for tx in &senders {
                send(tx, self.deliver_msg(seq));
            }
            if (seq + 1) % PROGRESS_EVERY == 0 {
                Self::wait_window(progress, seq + 1);
            }
        }
        for tx in &senders {
            send(tx, CoreMsg::Shutdown);
        }
        (started, handles)
    }

    /// Sends `iters * messages` messages to every consumer and waits until all are delivered.
    fn run(&self, transport: Transport, iters: u64) -> Duration {
        let total = iters * self.messages;
        let progress: Vec<Progress> = (0..self.consumers).map(|_| Progress::default()).collect();
        let expected = total * self.subscribers as u64;
        thread::scope(|s| {
            let progress = &progress;
            let started;
            let handles: Vec<_>;
            match transport {
                Transport::Mailbox { turn } => {
                    // Core 0 produces; cores 1..=consumers consume.
                    let mailboxes: Arc<[Mailbox]> =
                        (0..=self.consumers).map(|_| Mailbox::default()).collect();
                    handles = (1..=self.consumers)
                        .map(|core| {
                            let mailboxes = mailboxes.clone();
                            let subs = Subscribers::new(&self.channel, self.subscribers);
                            s.spawn(move || {
                                mailbox_consumer(&mailboxes[core], subs, &progress[core - 1])
                            })
                        })
                        .collect();
                    let outbox = Outbox::new(mailboxes);
                    started = Instant::now();
                    for seq in 0..total {
                        for core in 1..=self.consumers {
                            outbox.push(core, self.deliver_msg(seq));
                        }
                        let sent = seq + 1;
                        if sent % turn == 0 {
                            outbox.flush();
                        }
                        if sent % PROGRESS_EVERY == 0 {
                            outbox.flush();
                            Self::wait_window(progress, sent);
                        }
                    }
                    for core in 1..=self.consumers {
                        outbox.push(core, CoreMsg::Shutdown);
                    }
                    outbox.flush();
                }
                Transport::Crossbeam => {
                    (started, handles) = self.run_channels(
                        s,
                        progress,
                        total,
                        crossbeam_channel::unbounded::<CoreMsg>,
                        |tx, m| tx.send(m).unwrap(),
                        |rx| rx.recv().unwrap(),
                    );
                }
                Transport::StdMpsc => {
                    (started, handles) = self.run_channels(
                        s,
                        progress,
                        total,
                        std::sync::mpsc::channel::<CoreMsg>,
                        |tx, m| tx.send(m).unwrap(),
                        |rx| rx.recv().unwrap(),
                    );
                }
            }
            for h in handles {
                assert_eq!(h.join().unwrap(), expected, "every message delivered");
            }
            started.elapsed()
        })
    }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for consumers in [1, 2] {
        for subscribers in [1, 100, 1000] {
            let scenario = Scenario::new(consumers, subscribers);
            group.throughput(Throughput::Elements(
                scenario.messages * (consumers * subscribers) as u64,
            ));
            let param = format!("c{consumers}_s{subscribers}");
            for (name, transport) in [
                ("ours_mailbox_turn64", Transport::Mailbox { turn: 64 }),
                ("ours_mailbox_turn1", Transport::Mailbox { turn: 1 }),
                ("crossbeam_channel_per_msg", Transport::Crossbeam),
                ("std_mpsc_per_msg", Transport::StdMpsc),
            ] {
                group.bench_function(BenchmarkId::new(name, &param), |b| {
                    b.iter_custom(|iters| scenario.run(transport, iters))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
