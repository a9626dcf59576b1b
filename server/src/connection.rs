//! One client connection: the HTTP request that opens it, then two tasks.
//!
//! * The **reader** reads into one `BytesMut`, takes frames off it without copying
//!   ([`chat_wire::frame::parse_frame`]), reassembles messages, and hands each text message to
//!   the core. When the connection has too many requests in flight it stops reading (TCP
//!   pushes back on the client) instead of queueing without bound.
//! * The **writer** drains the connection's outbound queue ([`ConnIo`], in `outbound.rs`).
//!
//! Every close, by the client or by us, ends the same way: the close frame goes out, the write
//! side is shut, the reader discards input until the client closes, and a connection that
//! does not finish closing within [`CLOSE_TIMEOUT`] is cut.

use crate::core::CoreRef;
use crate::http::{route, Route};
use crate::metrics::{add, inc};
use crate::outbound::{write_loop, ConnIo};
use bytes::BytesMut;
use chat_wire::frame::{
    close_code, encode_close, encode_frame, parse_frame_ext, Message, MessageAssembler, OpCode,
    Role,
};
use chat_wire::handshake::{parse_request, upgrade_response_with};
use chat_wire::protocol::{ErrorCode, RequestError};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split, Splitable};
use monoio::net::TcpStream;
use monoio::time::Instant;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

/// How long a client's close waits for the replies to its earlier requests.
const REPLY_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The least spare room a read is given, and the size of a connection's first buffer. Small on
/// purpose: an idle connection holds its pending read's buffer for as long as it stays idle,
/// so this is most of the memory an idle connection costs.
const READ_MIN: usize = 4 * 1024;
/// The most spare room a read is given, once reads fill what they get (a busy connection).
const READ_MAX: usize = 16 * 1024;

/// Serves one accepted TCP connection to the end: over TLS when the server has a certificate
/// (the handshake, like the request head, within `--head-timeout-ms`).
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
    let deadline = Instant::now() + Duration::from_millis(node.config.head_timeout_ms.max(1));
    let fd = stream.as_raw_fd();
    let Some(tls) = &node.tls else {
        return serve_stream(core, stream, fd, deadline).await;
    };
    match monoio::time::timeout_at(deadline, tls.accept(stream)).await {
        Ok(Some(stream)) => serve_stream(core, stream, fd, deadline).await,
        _ => {
            inc(&counters.tls_handshake_failures);
            counters
                .handshaking
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Serves a connection (plain, or after its TLS handshake) from its request head on; `fd` is
/// its TCP socket's.
async fn serve_stream<S>(core: CoreRef, mut stream: S, fd: RawFd, deadline: Instant)
where
    S: AsyncReadRent + AsyncWriteRent + Split + 'static,
{
    let node = core.borrow().node.clone();
    let core_id = core.borrow().id;
    let counters = &node.metrics.cores[core_id];
    let head = monoio::time::timeout_at(deadline, read_head(&mut stream, &node)).await;
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
    let (accept, user, deflate) = match upgrade {
        Route::Respond(resp) => {
            inc(&node.metrics.cores[core_id].http_requests);
            let _ = stream.write_all(resp).await;
            let _ = stream.shutdown().await;
            return;
        }
        Route::WebSocket {
            accept,
            user,
            deflate,
        } => (accept, user, deflate),
        Route::Api(call) => {
            inc(&node.metrics.cores[core_id].http_requests);
            bytes::Buf::advance(&mut buf, head_len);
            crate::api::serve(&core, stream, buf, call).await;
            return;
        }
    };
    let mut resp = upgrade_response_with(&accept, deflate.as_ref());
    // Which core serves the connection: lets tests and operators see the spread.
    let at = resp.len() - 2;
    resp.splice(at..at, format!("X-Chat-Core: {core_id}\r\n").into_bytes());
    // Registered before the 101 goes out, so that the client's first request finds it.
    let window = deflate.map(|d| d.server_max_window_bits);
    let io = Rc::new(ConnIo::new(fd, node.clone(), core_id, window));
    let conn = core.borrow_mut().add_conn(&user, io.clone());
    if stream.write_all(resp).await.0.is_err() {
        core.borrow_mut().remove_conn(conn);
        return;
    }
    bytes::Buf::advance(&mut buf, head_len);
    let (reader, writer) = stream.into_split();
    monoio::spawn(write_loop(io.clone(), writer));
    read_loop(&core, conn, &io, reader, buf, deflate.is_some()).await;
    core.borrow_mut().remove_conn(conn);
    io.finish();
}

/// Reads the request head and routes it: (head length, route, the buffer with what followed
/// the head). `None` when the client went away or sent a bad head (answered here).
async fn read_head(
    stream: &mut (impl AsyncReadRent + AsyncWriteRent),
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
    deflate: bool,
) {
    let (max_frame, max_inflight) = {
        let c = core.borrow();
        (c.node.config.max_frame, c.node.config.max_inflight)
    };
    // With permessage-deflate a message is inflated whole and bounded by the same limit.
    let mut assembler = if deflate {
        MessageAssembler::with_inflater(max_frame)
    } else {
        MessageAssembler::new(max_frame)
    };
    // Room for the next read: grows while reads fill it, so that only busy connections get
    // big buffers.
    let mut want = READ_MIN;
    loop {
        // Everything already buffered first: frames that came with the upgrade request too.
        while !io.is_closing() {
            let frame = match parse_frame_ext(&mut buf, Role::Server, max_frame, deflate) {
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
                    let _ = monoio::time::timeout(REPLY_FLUSH_TIMEOUT, replies_done(io)).await;
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
            if (io.in_flight() >= max_inflight || io.replay_backlog()) && !io.is_closing() {
                io.park_reader(cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(())
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
async fn replies_done(io: &ConnIo) {
    poll_fn(|cx| {
        if io.in_flight() > 0 {
            io.park_reader(cx.waker());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await
}

fn on_message(core: &CoreRef, conn: u64, io: &Rc<ConnIo>, msg: Message) {
    match msg {
        Message::Text(mut data) => crate::ops::on_text(&mut core.borrow_mut(), conn, &mut data),
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
