//! One connection of `loadgen transport`: TCP with its bytes counted (under TLS too, so the
//! count is ciphertext), the opening handshake with or without a permessage-deflate offer, and
//! a loop that reads frames through chat-wire (inflating RSV1 messages) while the room's sender
//! writes its open-loop schedule.

use super::{chat_body, Setup, Shared, Window, MAX_MESSAGE};
use crate::client::{self, Kind};
use base64::Engine;
use bytes::{BufMut, BytesMut};
use chat_wire::frame::{encode_masked_frame, parse_frame_ext, Message, MessageAssembler};
use chat_wire::frame::{OpCode, Role};
use chat_wire::handshake::client_request;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

/// A TCP stream that counts the bytes read from and written to the socket.
struct Counted {
    inner: TcpStream,
    shared: Arc<Shared>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.shared.read_bytes.fetch_add(n, Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.shared.written_bytes.fetch_add(n as u64, Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client that trusts the certificates of `ca`, offering ALPN `http/1.1`.
#[allow(deprecated)] // ring has no post-quantum key exchange; the server uses ring too.
pub(super) fn tls_connector(ca: &Path) -> Result<TlsConnector, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    for c in certs {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One connection from connect to the stop signal.
pub(super) async fn connection(
    i: usize,
    setup: Arc<Setup>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    start: watch::Receiver<Option<Window>>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(setup.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", setup.addr))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let counted = Counted {
        inner: tcp,
        shared: shared.clone(),
    };
    let Some((tls, name)) = &setup.tls else {
        return Conn::open(counted, i, &setup, shared, permit)
            .await?
            .run(start, stop)
            .await;
    };
    let stream = tls
        .connect(name.clone(), counted)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Conn::open(stream, i, &setup, shared, permit)
        .await?
        .run(start, stop)
        .await
}

/// An open WebSocket of one room's member.
struct Conn<'a, S> {
    s: S,
    buf: BytesMut,
    asm: MessageAssembler,
    deflate: bool,
    shared: Arc<Shared>,
    setup: &'a Setup,
    room: usize,
    sender: bool,
    pongs: Vec<BytesMut>,
}

fn io_err(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Conn<'a, S> {
    /// The opening handshake (offering permessage-deflate if asked), then `join`, waiting for
    /// `joined`.
    async fn open(
        mut s: S,
        i: usize,
        setup: &'a Setup,
        shared: Arc<Shared>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Self, String> {
        let user = format!("tp{}u{i}", setup.run);
        let key =
            base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_ne_bytes());
        let mut req = client_request(&setup.authority, &client::chat_path(&user), &key);
        if setup.deflate {
            req.truncate(req.len() - 2);
            req.push_str(
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
            );
        }
        s.write_all(req.as_bytes())
            .await
            .map_err(io_err("upgrade"))?;
        s.flush().await.map_err(io_err("upgrade"))?;
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let (head_len, deflate) = loop {
            if s.read_buf(&mut buf).await.map_err(io_err("upgrade"))? == 0 {
                return Err("upgrade: connection closed".into());
            }
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = resp.parse(&buf).map_err(|e| e.to_string())? {
                if resp.code != Some(101) {
                    return Err(format!("upgrade refused: {:?}", resp.code));
                }
                let deflate = resp.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("sec-websocket-extensions")
                        && String::from_utf8_lossy(h.value).contains("permessage-deflate")
                });
                break (n, deflate);
            }
        };
        let _ = buf.split_to(head_len);
        drop(permit);
        if deflate {
            shared.negotiated.fetch_add(1, Relaxed);
        }
        let room = i / setup.room_size;
        let mut c = Conn {
            s,
            buf,
            asm: if deflate {
                MessageAssembler::with_inflater(MAX_MESSAGE)
            } else {
                MessageAssembler::new(MAX_MESSAGE)
            },
            deflate,
            shared,
            setup,
            room,
            sender: room * setup.room_size == i,
            pongs: Vec::new(),
        };
        let join = client::room_request("join", &c.room_name(), None).into_data();
        c.send(OpCode::Text, &join).await?;
        loop {
            c.fill().await?;
            if c.process(true).await? {
                return Ok(c);
            }
        }
    }

    fn room_name(&self) -> String {
        format!("tp-{}-r{}", self.setup.run, self.room)
    }

    async fn send(&mut self, op: OpCode, payload: &[u8]) -> Result<(), String> {
        let frame = encode_masked_frame(true, op, payload, fastrand::u32(..).to_ne_bytes());
        self.s.write_all(&frame).await.map_err(io_err("write"))?;
        self.s.flush().await.map_err(io_err("write"))
    }

    /// One read into the buffer (cancel-safe).
    async fn fill(&mut self) -> Result<(), String> {
        match self
            .s
            .read_buf(&mut self.buf)
            .await
            .map_err(io_err("read"))?
        {
            0 => Err("server closed the connection".into()),
            _ => Ok(()),
        }
    }

    /// Handles every complete message in the buffer; with `joining`, returns whether this
    /// connection's `joined` arrived.
    async fn process(&mut self, joining: bool) -> Result<bool, String> {
        let mut joined = false;
        while let Some(f) = parse_frame_ext(&mut self.buf, Role::Client, MAX_MESSAGE, self.deflate)
            .map_err(|e| format!("frame: {e}"))?
        {
            match self.asm.push(f).map_err(|e| format!("message: {e}"))? {
                Some(Message::Text(t)) => joined |= self.on_text(&t, joining),
                Some(Message::Ping(p)) => self.pongs.push(p),
                Some(Message::Close(c)) => return Err(format!("closed by the server: {c:?}")),
                _ => {}
            }
        }
        for p in std::mem::take(&mut self.pongs) {
            self.send(OpCode::Pong, &p).await?;
        }
        Ok(joined)
    }

    /// Counts one server message; true for `joined`.
    fn on_text(&mut self, t: &[u8], joining: bool) -> bool {
        let sh = &self.shared;
        let Some(m) = client::parse(t) else {
            sh.errors.fetch_add(1, Relaxed);
            return false;
        };
        match m.kind {
            Kind::Msg => {
                sh.received[self.room].fetch_add(1, Relaxed);
                sh.delivered.fetch_add(1, Relaxed);
                sh.app_bytes.fetch_add(t.len() as u64, Relaxed);
                // cid: "<k>-<µs since start of run when written>-<1 after the warm-up>".
                let mut parts = m.cid.split(|&b| b == b'-').skip(1);
                let sent_us = parts.next().and_then(crate::schedule::parse_u64);
                if let (Some(us), Some(b"1")) = (sent_us, parts.next()) {
                    let d = sh.now_us().saturating_sub(us).max(1);
                    let _ = sh.latency.lock().expect("latency").record(d);
                }
            }
            Kind::Ack => {
                sh.acks.fetch_add(1, Relaxed);
            }
            Kind::Joined if joining => {
                sh.joined.fetch_add(1, Relaxed);
                return true;
            }
            Kind::Error => {
                let earlier = sh.errors.fetch_add(1, Relaxed);
                if earlier < 5 {
                    eprintln!("loadgen transport: {}", String::from_utf8_lossy(t));
                }
            }
            _ => {}
        }
        false
    }

    /// Waits for the window, sends on its room's schedule (if the sender), reads until stopped.
    async fn run(
        mut self,
        mut start: watch::Receiver<Option<Window>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let w = *start
            .wait_for(Option::is_some)
            .await
            .map_err(|e| e.to_string())?;
        let w = w.expect("some");
        let interval = Duration::from_secs_f64(self.setup.interval);
        let phase = interval.mul_f64(self.room as f64 / self.setup.rooms as f64);
        let mut next = w.start + phase;
        let mut k = 0u64;
        let head = client::send_head(&self.room_name());
        let mut msg = BytesMut::new();
        loop {
            let sending = self.sender && next < w.end;
            tokio::select! {
                r = self.fill() => {
                    r?;
                    self.process(false).await?;
                }
                _ = tokio::time::sleep_until(next.into()), if sending => {
                    let now = Instant::now();
                    let warm = u8::from(now >= w.warm_end);
                    let seed = (self.room as u64) << 32 | k;
                    msg.clear();
                    msg.put_slice(&head);
                    msg.put_slice(format!("{k}-{}-{warm}\"", self.shared.now_us()).as_bytes());
                    msg.put_slice(b",\"body\":\"");
                    msg.put_slice(chat_body(self.setup.body, seed).as_bytes());
                    msg.put_slice(b"\"}");
                    let payload = msg.split().freeze();
                    self.send(OpCode::Text, &payload).await?;
                    self.shared.sent[self.room].fetch_add(1, Relaxed);
                    self.shared.sent_total.fetch_add(1, Relaxed);
                    k += 1;
                    next += interval;
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }
}
