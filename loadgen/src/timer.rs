//! Precise wake-ups for the senders of one shard. tokio's timer has a 1 ms resolution and
//! rounds deadlines up, so a sender woken by it writes 0.5-2 ms after the intended time, and
//! that lag would be added to every latency (which is measured from the intended time). Here
//! one `timerfd` per shard, armed with nanosecond precision for the earliest deadline and
//! polled by the shard's own epoll through `AsyncFd`, wakes the sender tasks instead: no
//! spinning, one syscall pair per wake-up.

use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

struct Entry {
    due: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// A shard-local timer (not `Send`: one per shard thread).
pub struct PreciseTimer {
    fd: Option<AsyncFd<OwnedFd>>,
    heap: RefCell<BinaryHeap<Reverse<Entry>>>,
    seq: Cell<u64>,
    armed: Cell<Option<Instant>>,
    rearm: Notify,
}

impl PreciseTimer {
    /// A timer and the task that drives it (spawn it with `spawn_local`). Where `timerfd` is
    /// unavailable, sleeps fall back to tokio's timer.
    pub fn new() -> (Rc<PreciseTimer>, impl Future<Output = ()>) {
        // SAFETY: plain syscall; the fd is owned below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        let fd = (raw >= 0)
            .then(|| {
                // SAFETY: `raw` is a fresh fd that nothing else owns; the `AsyncFd` owns it
                // for as long as it is registered.
                unsafe { AsyncFd::register(OwnedFd::from_raw_fd(raw)) }.ok()
            })
            .flatten();
        let t = Rc::new(PreciseTimer {
            fd,
            heap: RefCell::new(BinaryHeap::new()),
            seq: Cell::new(0),
            armed: Cell::new(None),
            rearm: Notify::new(),
        });
        let driver = t.clone();
        (t, async move { driver.drive().await })
    }

    /// Resolves at `due` (to within the wake-up latency of the thread).
    pub async fn sleep_until(&self, due: Instant) {
        if self.fd.is_none() {
            tokio::time::sleep_until(due.into()).await;
            return;
        }
        Sleep { timer: self, due }.await
    }

    fn register(&self, due: Instant, waker: Waker) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        self.heap
            .borrow_mut()
            .push(Reverse(Entry { due, seq, waker }));
        if self.armed.get().is_none_or(|a| due < a) {
            self.rearm.notify_one();
        }
    }

    fn arm(&self, after: Option<Duration>) {
        let Some(fd) = &self.fd else { return };
        let ts = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts(Duration::ZERO),
            // A zero value would disarm: at least 1 ns.
            it_value: ts(after.map_or(Duration::ZERO, |d| d.max(Duration::from_nanos(1)))),
        };
        // SAFETY: valid fd and pointers.
        unsafe {
            libc::timerfd_settime(fd.get_ref().as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
    }

    async fn drive(&self) {
        let Some(fd) = &self.fd else { return };
        loop {
            let now = Instant::now();
            let mut wake = Vec::new();
            let next = {
                let mut h = self.heap.borrow_mut();
                while h.peek().is_some_and(|e| e.0.due <= now) {
                    wake.push(h.pop().expect("peeked").0.waker);
                }
                h.peek().map(|e| e.0.due)
            };
            self.armed.set(next);
            self.arm(next.map(|n| n - now));
            for w in wake {
                w.wake();
            }
            tokio::select! {
                guard = fd.readable() => {
                    if let Ok(mut g) = guard {
                        let mut buf = [0u8; 8];
                        // SAFETY: reading 8 bytes into an 8-byte buffer.
                        unsafe { libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
                        g.clear_ready();
                    }
                }
                _ = self.rearm.notified() => {}
            }
        }
    }
}

struct Sleep<'a> {
    timer: &'a PreciseTimer,
    due: Instant,
}

impl Future for Sleep<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.due {
            return Poll::Ready(());
        }
        self.timer.register(self.due, cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_close_to_the_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let (timer, driver) = PreciseTimer::new();
            tokio::task::spawn_local(driver);
            let mut lags = Vec::new();
            for i in 0..50u64 {
                let due = Instant::now() + Duration::from_micros(300 + i * 37);
                timer.sleep_until(due).await;
                lags.push(Instant::now() - due);
            }
            lags.sort();
            // Never early (the future checks the clock); typically tens of microseconds late on
            // an idle machine. The bound leaves room for a loaded CI machine.
            assert!(
                lags[25] < Duration::from_millis(2),
                "median lag {:?}",
                lags[25]
            );
        });
    }
}
