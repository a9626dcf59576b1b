//! One client connection: the HTTP request that opens it, then two tasks.
//!
//! * The **reader** reads into one `BytesMut`, takes frames off it without copying
//!   ([`chat_wire::frame::parse_frame`]), reassembles messages, and hands each text message to
//!   the core. When the connection has too many requests in flight it stops reading (TCP
//!   pushes back on the client) instead of queueing without bound.
//! * The **writer** drains the connection's outbound queue ([`ConnIo`]) with vectored writes:
//!   the queued frames are the shared `Bytes` made once per message, written as they are.
//!
//! The outbound queue is bounded in bytes. A client that does not read fills it and is
//! disconnected with close 1008 (it can come back and `resume`); the others never wait for it.
//! Every close, by the client or by us, ends the same way: the close frame goes out, the write
//! side is shut, the reader discards input until the client closes, and a connection that
//! does not finish closing within [`CLOSE_TIMEOUT`] is cut.

use crate::core::CoreRef;
use crate::fanout::CoreId;
use crate::http::{route, Route};
use crate::metrics::{add, inc};
use crate::node::Node;
use bytes::{Bytes, BytesMut};
use chat_wire::frame::{
    close_code, encode_close, encode_frame, parse_frame, Message, MessageAssembler, OpCode, Role,
};
use chat_wire::handshake::{parse_request, upgrade_response};
use chat_wire::protocol::{ErrorCode, RequestError};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How long a client's close waits for the replies to its earlier requests.
const REPLY_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames handed to one `writev`.
const WRITE_BATCH: usize = 256;
/// The least spare room a read is given, and the size of a connection's first buffer. Small on
/// purpose: an idle connection holds its pending read's buffer for as long as it stays idle,
/// so this is most of the memory an idle connection costs.
const READ_MIN: usize = 4 * 1024;
/// The most spare room a read is given, once reads fill what they get (a busy connection).
const READ_MAX: usize = 16 * 1024;

/// Serves one accepted TCP connection to the end.
pub async fn serve(core: CoreRef, mut stream: TcpStream, peer: std::net::IpAddr) {
    let _ = stream.set_nodelay(true);
    let node = core.borrow().node.clone();
    let core_id = core.borrow().id;
    let counters = &node.metrics.cores[core_id];
    // Sockets still sending their head count against the limit too: a client that never
    // finishes one cannot lock real users out by holding descriptors.
    if node.open_connections() + node.handshaking() >= node.config.max_connections {
        let resp =
            chat_wire::handshake::http_response(503, "text/plain", b"connection limit reached\n");
        let _ = stream.write_all(resp).await;
        return;
    }
    // Held until the connection ends: its place in its address's count.
    let Some(_per_ip) = node.per_ip.take(peer) else {
        let resp = chat_wire::handshake::http_response(
            429,
            "text/plain",
            b"too many connections from this address\n",
        );
        let _ = stream.write_all(resp).await;
        return;
    };
    counters
        .handshaking
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let head_timeout = Duration::from_millis(node.config.head_timeout_ms.max(1));
    let head = monoio::time::timeout(head_timeout, read_head(&mut stream, &node)).await;
    counters
        .handshaking
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let (head_len, upgrade, mut buf) = match head {
        Ok(Some(head)) => head,
        Ok(None) => return,
        Err(_) => {
            inc(&counters.head_timeouts);
            let resp = chat_wire::handshake::http_response(
                408,
                "text/plain",
                b"request head not finished in time\n",
            );
            let _ = stream.write_all(resp).await;
            return;
        }
    };
    let (accept, user) = match upgrade {
        Route::Respond(resp) => {
            inc(&node.metrics.cores[core_id].http_requests);
            let _ = stream.write_all(resp).await;
            let _ = stream.shutdown().await;
            return;
        }
        Route::WebSocket { accept, user } => (accept, user),
    };
    let mut resp = upgrade_response(&accept);
    // Which core serves the connection: lets tests and operators see the spread.
    let at = resp.len() - 2;
    resp.splice(at..at, format!("X-Chat-Core: {core_id}\r\n").into_bytes());
    // Registered before the 101 goes out, so that the client's first request finds it.
    let io = Rc::new(ConnIo::new(stream.as_raw_fd(), node.clone(), core_id));
    let conn = core.borrow_mut().add_conn(&user, io.clone());
    if stream.write_all(resp).await.0.is_err() {
        core.borrow_mut().remove_conn(conn);
        return;
    }
    bytes::Buf::advance(&mut buf, head_len);
    let (reader, writer) = stream.into_split();
    monoio::spawn(write_loop(core.clone(), io.clone(), writer));
    read_loop(&core, conn, &io, reader, buf).await;
    core.borrow_mut().remove_conn(conn);
    io.finish();
}

/// Reads the request head and routes it: (head length, route, the buffer with what followed
/// the head). `None` when the client went away or sent a bad head (answered here).
async fn read_head(
    stream: &mut TcpStream,
    node: &crate::node::Node,
) -> Option<(usize, Route, BytesMut)> {
    let mut buf = BytesMut::with_capacity(READ_MIN);
    loop {
        match parse_request(&buf) {
            Ok(Some((req, len))) => {
                let route = route(&req, node);
                return Some((len, route, buf));
            }
            Ok(None) => {}
            Err(e) => {
                let body = format!("{e:?}\n");
                let resp =
                    chat_wire::handshake::http_response(e.status(), "text/plain", body.as_bytes());
                let _ = stream.write_all(resp).await;
                return None;
            }
        }
        match read_more(stream, buf, READ_MIN).await {
            (Some(_), b) => buf = b,
            (None, _) => return None,
        }
    }
}

/// Reads into the spare capacity of `buf`, first making room for `want` bytes when less than a
/// quarter of that is free. The bytes read and whether they filled the room given; `None` at
/// end of stream or on error.
async fn read_more<R: AsyncReadRent>(
    r: &mut R,
    mut buf: BytesMut,
    want: usize,
) -> (Option<(usize, bool)>, BytesMut) {
    if buf.capacity() - buf.len() < want / 4 {
        buf.reserve(want);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = r.read(buf.slice_mut(len..cap)).await;
    let buf = slice.into_inner();
    match res {
        Ok(0) | Err(_) => (None, buf),
        Ok(n) => (Some((n, n == cap - len)), buf),
    }
}

async fn read_loop(
    core: &CoreRef,
    conn: u64,
    io: &Rc<ConnIo>,
    mut reader: impl AsyncReadRent,
    mut buf: BytesMut,
) {
    let (max_frame, max_inflight) = {
        let c = core.borrow();
        (c.node.config.max_frame, c.node.config.max_inflight)
    };
    let mut assembler = MessageAssembler::new(max_frame);
    // Room for the next read: grows while reads fill it, so that only busy connections get
    // big buffers.
    let mut want = READ_MIN;
    loop {
        // Everything already buffered first: frames that came with the upgrade request too.
        while !io.is_closing() {
            let frame = match parse_frame(&mut buf, Role::Server, max_frame) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    protocol_close(core, io, e.code, e.reason);
                    break;
                }
            };
            match assembler.push(frame) {
                Ok(Some(Message::Close(status))) => {
                    // Answer what the client asked before it said goodbye, then echo its close.
                    let _ =
                        monoio::time::timeout(REPLY_FLUSH_TIMEOUT, replies_done(core, conn, io))
                            .await;
                    on_message(core, conn, io, Message::Close(status));
                }
                Ok(Some(msg)) => on_message(core, conn, io, msg),
                Ok(None) => {}
                Err(e) => protocol_close(core, io, e.code, e.reason),
            }
        }
        if io.is_closing() {
            buf.clear();
        }
        // Back-pressure: stop reading while too many requests are unanswered, or while a
        // replay larger than the outbound limit waits to be read by the client.
        poll_fn(|cx| {
            let c = core.borrow();
            match c.conns.get(&conn) {
                Some(state)
                    if (state.replies.in_flight() >= max_inflight || io.replay_backlog())
                        && !io.is_closing() =>
                {
                    io.park_reader(cx.waker());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        })
        .await;
        let (n, b) = read_more(&mut reader, buf, want).await;
        buf = b;
        match n {
            Some((n, filled)) => {
                if filled {
                    want = (want * 2).min(READ_MAX);
                }
                io.touch();
                add(&core.borrow().counters().bytes_in, n as u64);
            }
            None => return,
        }
    }
}

/// Waits until every request of `conn` has been answered.
async fn replies_done(core: &CoreRef, conn: u64, io: &ConnIo) {
    poll_fn(|cx| match core.borrow().conns.get(&conn) {
        Some(state) if state.replies.in_flight() > 0 => {
            io.park_reader(cx.waker());
            Poll::Pending
        }
        _ => Poll::Ready(()),
    })
    .await
}

fn on_message(core: &CoreRef, conn: u64, io: &Rc<ConnIo>, msg: Message) {
    match msg {
        Message::Text(mut data) => core.borrow_mut().on_text(conn, &mut data),
        Message::Binary(_) => protocol_close(
            core,
            io,
            close_code::UNSUPPORTED,
            "binary messages are not part of chat v1",
        ),
        Message::Ping(payload) => io.send(encode_frame(OpCode::Pong, &payload)),
        Message::Pong(_) => {}
        Message::Close(status) => {
            // Echo the client's status (RFC 6455 section 5.5.1), then finish closing.
            let frame = match status {
                Some((code, _)) => encode_close(code, ""),
                None => encode_frame(OpCode::Close, &[]),
            };
            io.close_with(frame);
        }
        Message::TooLarge => {
            let max = core.borrow().node.config.max_frame;
            let e = RequestError::new(ErrorCode::TooLarge, format!("message over {max} bytes"));
            core.borrow_mut().reply_error(conn, e);
        }
    }
}

fn protocol_close(core: &CoreRef, io: &ConnIo, code: u16, reason: &str) {
    inc(&core.borrow().counters().frames_rejected);
    io.close(code, reason);
}

async fn write_loop(core: CoreRef, io: Rc<ConnIo>, mut writer: impl AsyncWriteRent) {
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
        let c = core.borrow();
        add(&c.counters().frames_out, count);
        add(&c.counters().bytes_out, bytes);
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
}

impl OutState {
    /// Appends a frame (a replay frame or not, see [`ConnIo::send_replay`]) and wakes the writer.
    fn push(&mut self, frame: Bytes, replay: bool) {
        if self.queue.is_empty() {
            self.waiting_since = Some(Instant::now());
        }
        if replay {
            self.replay_bytes += frame.len();
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
    fn new(fd: RawFd, node: Arc<Node>, core: CoreId) -> Self {
        ConnIo {
            fd,
            limit: node.config.outbound_limit,
            close_timeout: Duration::from_secs_f64(node.config.close_timeout),
            node,
            core,
            state: RefCell::new(OutState {
                queue: VecDeque::new(),
                queued_bytes: 0,
                replay_bytes: 0,
                waiting_since: None,
                writer: None,
                reader: None,
                closing_since: None,
                dead: false,
                open: true,
                last_heard: Instant::now(),
                pinged: false,
            }),
        }
    }

    /// Queues a frame. A connection over its outbound limit is closed with 1008 instead.
    pub fn send(&self, frame: Bytes) {
        let mut st = self.state.borrow_mut();
        if st.closing_since.is_some() || st.dead {
            return;
        }
        if st.queued_bytes + frame.len() > self.limit {
            st.queue.clear();
            st.queued_bytes = 0;
            st.replay_bytes = 0;
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
        if st.closing_since.is_some() || st.dead {
            return;
        }
        st.push(frame, true);
    }

    /// Whether replay frames beyond `--outbound-limit` wait: the reader then takes no request.
    pub fn replay_backlog(&self) -> bool {
        self.state.borrow().replay_bytes > self.limit
    }

    /// Starts closing with a status code: the frames already queued go first.
    pub fn close(&self, code: u16, reason: &str) {
        self.close_with(encode_close(code, reason));
    }

    fn close_with(&self, frame: Bytes) {
        let mut st = self.state.borrow_mut();
        if st.closing_since.is_some() || st.dead {
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

    fn touch(&self) {
        let mut st = self.state.borrow_mut();
        st.last_heard = Instant::now();
        st.pinged = false;
    }

    fn park_reader(&self, waker: &Waker) {
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
    }

    /// The reader has ended: let the writer finish and forget the descriptor.
    fn finish(&self) {
        let mut st = self.state.borrow_mut();
        st.open = false;
        st.dead = true;
        st.queue.clear();
        if let Some(w) = st.writer.take() {
            w.wake();
        }
    }

    /// Moves up to [`WRITE_BATCH`] queued frames into `frames` and gives their total length, or
    /// says that the writer is done (`None`: the connection is dead, or closed and flushed).
    fn poll_batch(
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
