//! Accepting connections when the process runs out of file descriptors.
//!
//! `accept` fails with EMFILE (the process's limit) or ENFILE (the system's) while the
//! connection stays queued in the listen backlog. Retrying at once spins, and the queued
//! clients wait in silence until they give up. Instead, each core keeps one descriptor in
//! reserve (`/dev/null`): on EMFILE/ENFILE it frees it, takes the waiting connection, answers it
//! `503` with `Retry-After` and closes it, then takes the reserve back, and waits before
//! accepting again (10 ms, doubling to 1 s while descriptors stay short; reset by the next
//! accept that works). One log line per [`LOG_EVERY`] says how many were refused meanwhile;
//! `chat_accept_fd_exhausted_total` counts every such failure.

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpListener;
use std::time::{Duration, Instant};

/// Most one log line per this interval while descriptors are short.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 37\r\n\r\nthe server is out of file descriptors";

/// One core's accept state.
pub struct Acceptor {
    reserve: Option<std::fs::File>,
    pause: Duration,
    logged: Option<Instant>,
    refused_since_log: u64,
}

/// Whether an accept error means no descriptor was left.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

impl Acceptor {
    pub fn new() -> Acceptor {
        Acceptor {
            reserve: std::fs::File::open("/dev/null").ok(),
            pause: FIRST_PAUSE,
            logged: None,
            refused_since_log: 0,
        }
    }

    /// An accept worked: descriptors are back.
    pub fn accepted(&mut self) {
        self.pause = FIRST_PAUSE;
        if self.reserve.is_none() {
            self.reserve = std::fs::File::open("/dev/null").ok();
        }
    }

    /// Handles an EMFILE/ENFILE: refuses the waiting connection with a 503 using the reserve
    /// descriptor, logs (at most once per [`LOG_EVERY`]), then waits before the next accept.
    pub async fn out_of_descriptors(
        &mut self,
        core: usize,
        listener: &TcpListener,
        e: &std::io::Error,
    ) {
        if let Some(reserve) = self.reserve.take() {
            drop(reserve);
            let waiting =
                monoio::time::timeout(Duration::from_millis(100), listener.accept()).await;
            if let Ok(Ok((mut stream, _))) = waiting {
                let _ =
                    monoio::time::timeout(Duration::from_secs(1), stream.write_all(REFUSAL)).await;
                drop(stream);
                self.refused_since_log += 1;
            }
            self.reserve = std::fs::File::open("/dev/null").ok();
        }
        if self.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::error!(
                core,
                error = %e,
                refused_with_503 = self.refused_since_log,
                "out of file descriptors: new connections are refused until some close (raise `ulimit -n` or lower --max-connections)"
            );
            self.logged = Some(Instant::now());
            self.refused_since_log = 0;
        }
        monoio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
    }
}
