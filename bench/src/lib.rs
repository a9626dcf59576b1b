//! What the criterion suites in `benches/` share: inputs, in-memory streams, and the service
//! addresses (see `bench/README.md`).

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

/// Redis for `redis_batch`: `CHAT_BENCH_REDIS`, or the local default.
pub fn redis_url() -> String {
    std::env::var("CHAT_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// PostgreSQL for `pg_copy`: `CHAT_BENCH_POSTGRES`, or the local default.
pub fn postgres_url() -> String {
    std::env::var("CHAT_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Chat-like text: mostly ASCII, some accented letters and emoji (valid UTF-8, multi-byte
/// sequences), and, with `escapes`, quotes, backslashes, newlines and tabs that JSON must escape.
const PLAIN: &str = "Hello everyone, the deploy is done — café at 3? Tickets: ✓ 😀 ";
const ESCAPED: &str = "He said \"ship it\"\n\tpath C:\\tmp\\x — café ✓ 😀 ok. ";

/// A string of exactly `len` bytes (valid UTF-8) made of repetitions of the chat text.
pub fn chat_text(len: usize, escapes: bool) -> String {
    let unit = if escapes { ESCAPED } else { PLAIN };
    let mut s = String::with_capacity(len + unit.len());
    while s.len() + unit.len() <= len {
        s.push_str(unit);
    }
    for c in unit.chars() {
        if s.len() + c.len_utf8() > len {
            break;
        }
        s.push(c);
    }
    while s.len() < len {
        s.push('x');
    }
    s
}

/// Human size label: `32B`, `4KiB`, `64KiB`.
pub fn size_label(n: usize) -> String {
    if n >= 1024 && n % 1024 == 0 {
        format!("{}KiB", n / 1024)
    } else {
        format!("{n}B")
    }
}

/// Polls a future once with a no-op waker. For futures over [`MemStream`], which is always
/// ready, that completes them; anything else is a bug in the bench.
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory stream never waits"),
    }
}

/// A connection in memory that never runs dry: reads hand out `data` over and over (like a
/// socket whose bytes have arrived, one `read` copying them into the library's own buffer, as
/// the kernel would), writes are discarded. `data` holds whole frames, so every pass ends on a
/// frame boundary and a reader that takes N messages per pass stays aligned. Implements both
/// `std::io` (tungstenite) and tokio's traits (fastwebsockets).
pub struct MemStream {
    data: bytes::Bytes,
    pos: usize,
}

impl MemStream {
    pub fn new(data: bytes::Bytes) -> Self {
        assert!(!data.is_empty());
        MemStream { data, pos: 0 }
    }

    /// Copies up to the end of `data` (one "read"), then starts over on the next call.
    fn read_into(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.data.len() - self.pos);
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.data.len();
        n
    }
}

impl io::Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.read_into(buf))
    }
}

impl io::Write for MemStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl tokio::io::AsyncRead for MemStream {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // `put_slice`, not `initialize_unfilled`: no zeroing of the reader's spare capacity.
        let this = self.get_mut();
        let n = buf.remaining().min(this.data.len() - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos = (this.pos + n) % this.data.len();
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for MemStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_text_has_the_exact_length() {
        for len in [0, 1, 31, 32, 100, 256, 4096, 65536] {
            for esc in [false, true] {
                assert_eq!(chat_text(len, esc).len(), len);
            }
        }
    }
}
