//! A connection's outbound side: its queue, the bounds on it, and the writer task.
//!
//! The writer drains the queue with vectored writes: the queued frames are the shared `Bytes`
//! made once per message, written as they are. The queue is bounded in bytes. A client that
//! does not read fills it and is disconnected with close 1008 (it can come back and
//! `resume`); the others never wait for it. Replies (a `resume` backlog, a `history` page) are
//! queued outside that bound and paced by the client's reading instead
//! ([`ConnIo::send_replay`]); the bus thread sees how much of a replay still waits through the
//! connection's [`ReplayGauge`], so that it reads the next page from PostgreSQL only when the
//! client has taken the last one.

use crate::messages::{CoreId, ReplayGauge};
use crate::metrics::{add, inc};
use crate::node::Node;
use bytes::Bytes;
use chat_wire::frame::{close_code, encode_close, encode_frame, OpCode};
use monoio::io::AsyncWriteRent;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Frames handed to one `writev`.
const WRITE_BATCH: usize = 256;

/// Writes the connection's queued frames until it is closed and flushed, or dead.
pub async fn write_loop(io: Rc<ConnIo>, mut writer: impl AsyncWriteRent) {
    // One batch for the connection's lifetime: its two vectors are refilled, not reallocated,
    // for every `writev`.
    let mut batch = FrameBatch::default();
    while let Some(bytes) = poll_fn(|cx| io.poll_batch(cx, &mut batch.frames)).await {
        batch.prepare();
        let (count, bytes) = (batch.frames.len() as u64, bytes as u64);
        let (res, b) = write_batch(&mut writer, batch).await;
        batch = b;
        if res.is_err() {
            io.mark_dead();
            break;
        }
        batch.clear();
        let counters = &io.node.metrics.cores[io.core];
        add(&counters.frames_out, count);
        add(&counters.bytes_out, bytes);
    }
    let _ = writer.shutdown().await;
}

/// Writes a whole batch, resuming after partial writes, and gives the batch back.
///
/// Not `write_vectored_all`: in monoio 0.2.4 it does not advance the iovec after a partial
/// write (`vec_wrapper.rs` drops the moved pointer), which resends bytes and then panics.
async fn write_batch(
    writer: &mut impl AsyncWriteRent,
    mut batch: FrameBatch,
) -> (std::io::Result<()>, FrameBatch) {
    while !batch.is_done() {
        let (res, b) = writer.writev(batch).await;
        batch = b;
        match res {
            Ok(0) => return (Err(std::io::ErrorKind::WriteZero.into()), batch),
            Ok(n) => batch.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), batch),
        }
    }
    (Ok(()), batch)
}

/// Frames for one `writev`, each written from its own shared buffer.
#[derive(Default)]
struct FrameBatch {
    frames: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
    /// The first iovec not completely written.
    first: usize,
}

impl FrameBatch {
    /// Frames kept room for between writes; a burst beyond it gives its memory back.
    const KEEP: usize = 64;

    /// Points one iovec at each frame, for the `writev`s to come.
    fn prepare(&mut self) {
        self.iovecs.clear();
        self.iovecs.extend(self.frames.iter().map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        }));
        self.first = 0;
    }

    /// Drops the written frames, keeping (bounded) room for the next batch.
    fn clear(&mut self) {
        self.iovecs.clear();
        self.frames.clear();
        self.first = 0;
        if self.frames.capacity() > Self::KEEP {
            self.frames.shrink_to(Self::KEEP);
            self.iovecs.shrink_to(Self::KEEP);
        }
    }

    fn is_done(&self) -> bool {
        self.first == self.iovecs.len()
    }

    /// Skips `n` written bytes.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let iov = &mut self.iovecs[self.first];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                self.first += 1;
            } else {
                // SAFETY: `n < iov_len`, so the pointer stays inside the frame's buffer.
                iov.iov_base = unsafe { (iov.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                iov.iov_len -= n;
                n = 0;
            }
        }
    }
}

// SAFETY: from `prepare` to `clear` the iovecs point into the frames' shared buffers (not into
// the `frames` vector), which never move or change while a frame is held; the batch is owned by
// the write operation while the kernel reads them, and only the iovecs' own offsets are
// adjusted, between writes.
unsafe impl monoio::buf::IoVecBuf for FrameBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        debug_assert_eq!(self.frames.len(), self.iovecs.len());
        self.iovecs[self.first..].as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.iovecs.len() - self.first
    }
}

/// A connection's outbound side, shared by its reader, its writer and the core.
pub struct ConnIo {
    fd: RawFd,
    /// The server window negotiated with permessage-deflate: text frames go out compressed.
    deflate: Option<u8>,
    limit: usize,
    close_timeout: Duration,
    node: Arc<Node>,
    core: CoreId,
    state: RefCell<OutState>,
}

struct OutState {
    /// Frames to write, in order; `true` marks a replay frame (see [`ConnIo::send_replay`]).
    queue: VecDeque<(Bytes, bool)>,
    /// Bytes of the queued frames that are not replays: what `--outbound-limit` bounds.
    queued_bytes: usize,
    /// Bytes of the queued replay frames.
    replay_bytes: usize,
    /// Bytes of replay frames the core holds for this connection until the replies before
    /// theirs are out (a `resume` page that came early, see `core::ReplyQueue`).
    replay_held: usize,
    /// `replay_bytes + replay_held`, for the bus thread.
    gauge: Arc<ReplayGauge>,
    /// When the queue last went from empty to not empty: the oldest queued frame's wait starts
    /// no later (read once per burst, not per frame; `chat_outbound_queue_wait_seconds`).
    waiting_since: Option<Instant>,
    writer: Option<Waker>,
    reader: Option<Waker>,
    /// When we started closing: the close frame is queued and nothing else will be.
    closing_since: Option<Instant>,
    /// The connection is gone: drop whatever is queued.
    dead: bool,
    /// The reader is still running, so `fd` is still ours.
    open: bool,
    last_heard: Instant,
    pinged: bool,
    /// Requests of this connection not answered yet (the core's reply queue keeps the count
    /// here, where the reader looks to stop reading at `--max-inflight`).
    in_flight: usize,
}

impl OutState {
    /// Still taking frames: not closing, not gone.
    fn accepts(&self) -> bool {
        self.closing_since.is_none() && !self.dead
    }

    fn sync_gauge(&self) {
        self.gauge.set_waiting(self.replay_bytes + self.replay_held);
    }

    /// Appends a frame (a replay frame or not, see [`ConnIo::send_replay`]) and wakes the writer.
    fn push(&mut self, frame: Bytes, replay: bool) {
        if self.queue.is_empty() {
            self.waiting_since = Some(Instant::now());
        }
        if replay {
            self.replay_bytes += frame.len();
            self.sync_gauge();
        } else {
            self.queued_bytes += frame.len();
        }
        self.queue.push_back((frame, replay));
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

impl ConnIo {
    pub fn new(fd: RawFd, node: Arc<Node>, core: CoreId, deflate: Option<u8>) -> Self {
        ConnIo {
            fd,
            deflate,
            limit: node.config.outbound_limit,
            close_timeout: Duration::from_secs_f64(node.config.close_timeout),
            node,
            core,
            state: RefCell::new(OutState {
                queue: VecDeque::new(),
                queued_bytes: 0,
                replay_bytes: 0,
                replay_held: 0,
                gauge: Arc::new(ReplayGauge::default()),
                waiting_since: None,
                writer: None,
                reader: None,
                closing_since: None,
                dead: false,
                open: true,
                last_heard: Instant::now(),
                pinged: false,
                in_flight: 0,
            }),
        }
    }

    /// The frame as this connection takes it: compressed (once per core) when it negotiated
    /// permessage-deflate.
    fn outgoing(&self, frame: Bytes) -> Bytes {
        let Some(bits) = self.deflate else {
            return frame;
        };
        let (out, compressed) = crate::compress::for_connection(&frame, bits);
        let counters = &self.node.metrics.cores[self.core];
        if compressed {
            inc(&counters.deflate_compressed);
        }
        if out.as_ptr() != frame.as_ptr() {
            inc(&counters.deflate_sent);
        }
        out
    }

    /// Queues a frame. A connection over its outbound limit is closed with 1008 instead.
    pub fn send(&self, frame: Bytes) {
        let mut st = self.state.borrow_mut();
        if !st.accepts() {
            return;
        }
        let frame = self.outgoing(frame);
        if st.queued_bytes + frame.len() > self.limit {
            st.queue.clear();
            st.queued_bytes = 0;
            st.replay_bytes = 0;
            st.sync_gauge();
            drop(st);
            inc(&self.node.metrics.cores[self.core].slow_consumers);
            self.close(
                close_code::POLICY,
                "slow consumer: outbound queue full, reconnect and resume",
            );
            return;
        }
        st.push(frame, false);
    }

    /// Queues a frame of a reply (`resume`'s messages, `history`) outside `--outbound-limit`:
    /// a backlog larger than the limit reaches a client that reads it, at its pace. What bounds
    /// it instead: while more than the limit of replay bytes wait, the reader takes no new
    /// request from the client ([`ConnIo::replay_backlog`]), so a client that stops reading
    /// asks for nothing more, stops answering pings, and is closed as idle.
    pub fn send_replay(&self, frame: Bytes) {
        let mut st = self.state.borrow_mut();
        if !st.accepts() {
            return;
        }
        let frame = self.outgoing(frame);
        st.push(frame, true);
    }

    /// Requests not answered yet.
    pub fn in_flight(&self) -> usize {
        self.state.borrow().in_flight
    }

    pub fn set_in_flight(&self, n: usize) {
        self.state.borrow_mut().in_flight = n;
    }

    /// What the bus thread reads to pace a replay it reads page by page.
    pub fn replay_gauge(&self) -> Arc<ReplayGauge> {
        self.state.borrow().gauge.clone()
    }

    /// Counts replay frames the core holds for this connection (`bytes` more, or fewer when
    /// negative), so that the bus does not read further ahead while they wait.
    pub fn hold_replay(&self, bytes: isize) {
        let mut st = self.state.borrow_mut();
        st.replay_held = st.replay_held.saturating_add_signed(bytes);
        st.sync_gauge();
    }

    /// Whether replay frames beyond `--outbound-limit` wait: the reader then takes no request.
    pub fn replay_backlog(&self) -> bool {
        self.state.borrow().replay_bytes > self.limit
    }

    /// Starts closing with a status code: the frames already queued go first.
    pub fn close(&self, code: u16, reason: &str) {
        self.close_with(encode_close(code, reason));
    }

    pub fn close_with(&self, frame: Bytes) {
        let mut st = self.state.borrow_mut();
        if !st.accepts() {
            return;
        }
        st.queued_bytes += frame.len();
        st.queue.push_back((frame, false));
        st.closing_since = Some(Instant::now());
        if let Some(w) = st.writer.take() {
            w.wake();
        }
        if let Some(w) = st.reader.take() {
            w.wake();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.state.borrow().closing_since.is_some()
    }

    pub fn touch(&self) {
        let mut st = self.state.borrow_mut();
        st.last_heard = Instant::now();
        st.pinged = false;
    }

    pub fn park_reader(&self, waker: &Waker) {
        self.state.borrow_mut().reader = Some(waker.clone());
    }

    pub fn wake_reader(&self) {
        if let Some(w) = self.state.borrow_mut().reader.take() {
            w.wake();
        }
    }

    fn mark_dead(&self) {
        let mut st = self.state.borrow_mut();
        st.dead = true;
        st.queue.clear();
        st.queued_bytes = 0;
        st.replay_bytes = 0;
        st.gauge.set_gone();
    }

    /// The reader has ended: let the writer finish and forget the descriptor.
    pub fn finish(&self) {
        let mut st = self.state.borrow_mut();
        st.open = false;
        st.dead = true;
        st.queue.clear();
        st.gauge.set_gone();
        if let Some(w) = st.writer.take() {
            w.wake();
        }
    }

    /// Moves up to [`WRITE_BATCH`] queued frames into `frames` and gives their total length, or
    /// says that the writer is done (`None`: the connection is dead, or closed and flushed).
    /// The writer task's, or the server API's, whose connections have no socket (`api/mod.rs`).
    pub fn poll_batch(
        &self,
        cx: &mut std::task::Context<'_>,
        frames: &mut Vec<Bytes>,
    ) -> Poll<Option<usize>> {
        let mut st = self.state.borrow_mut();
        if st.dead {
            return Poll::Ready(None);
        }
        if st.queue.is_empty() {
            if st.closing_since.is_some() {
                return Poll::Ready(None);
            }
            st.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = st.queue.len().min(WRITE_BATCH);
        let (mut bytes, mut replayed) = (0, 0);
        for (frame, replay) in st.queue.drain(..n) {
            bytes += frame.len();
            if replay {
                replayed += frame.len();
            }
            frames.push(frame);
        }
        st.queued_bytes -= bytes - replayed;
        let was_backlogged = st.replay_bytes > self.limit;
        st.replay_bytes -= replayed;
        if replayed > 0 {
            st.sync_gauge();
        }
        if was_backlogged && st.replay_bytes <= self.limit {
            // The reader waits for the replay to drain (replay_backlog).
            if let Some(w) = st.reader.take() {
                w.wake();
            }
        }
        // What is left keeps the same start: an upper bound of its oldest frame's wait.
        let since = if st.queue.is_empty() {
            st.waiting_since.take()
        } else {
            st.waiting_since
        };
        if let Some(since) = since {
            let wait = since.elapsed();
            self.node.metrics.cores[self.core]
                .outbound_wait
                .observe(wait);
        }
        Poll::Ready(Some(bytes))
    }

    /// Called once a second: ping a quiet client, close a silent one, cut a stuck close.
    pub fn housekeeping(&self, now: Instant, ping_after: Duration) {
        let (closing, quiet, pinged, open) = {
            let st = self.state.borrow();
            (
                st.closing_since,
                now.saturating_duration_since(st.last_heard),
                st.pinged,
                st.open,
            )
        };
        if !open {
            return;
        }
        if let Some(since) = closing {
            if now.saturating_duration_since(since) > self.close_timeout {
                // SAFETY: `open` means the reader still owns the descriptor.
                unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
            }
            return;
        }
        if quiet >= ping_after * 2 {
            self.close(close_code::GOING_AWAY, "idle timeout");
        } else if quiet >= ping_after && !pinged {
            self.state.borrow_mut().pinged = true;
            self.send(encode_frame(OpCode::Ping, b"idle"));
        }
    }
}
