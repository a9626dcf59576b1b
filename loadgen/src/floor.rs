//! `loadgen floor`: what the kernel alone charges for the deliveries a run asked of a server, so
//! that a server's CPU per delivery can be read as a multiple of it.
//!
//! The same shape of work as a server's delivery, without any protocol: `conns` loopback TCP
//! connections, a writer thread that wakes `rate / fanout` times a second and writes one
//! frame of `frame` bytes to each of `fanout` connections (round-robin over all of them, as a
//! room's message goes to its members), `batch` frames per `write` syscall, and a reader
//! thread (epoll, through a current-thread tokio runtime) that drains the other ends. The
//! figure is the writer thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) per frame: the syscall,
//! loopback TCP and the receive softirq that loopback charges to the sender, plus the
//! writer's wake-ups (`us_per_frame`). A second pass writes the same frames back to back, with
//! no sleep between bursts: the writes alone (`write_us_per_frame`), what is left when a server
//! never sleeps. The reader's CPU is the client's, not counted (a server's is not charged for
//! its clients either).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

#[derive(clap::Args, Clone, Debug)]
pub struct FloorArgs {
    /// Loopback connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Bytes per frame (default: the `msg` frame of a 100 B body, as `--floor` uses).
    #[arg(long, default_value_t = msg_frame_len(100))]
    pub frame: usize,
    /// Frames written per second, over all connections.
    #[arg(long, default_value_t = 4000.0)]
    pub rate: f64,
    /// Frames written per wake-up, each to another connection (a room's members).
    #[arg(long, default_value_t = 10)]
    pub fanout: usize,
    /// Frames per write syscall to one connection.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
}

/// What the floor measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Floor {
    pub conns: usize,
    pub frame: usize,
    pub fanout: usize,
    pub batch: usize,
    /// Frames written, and per second.
    pub frames: u64,
    pub frames_per_s: f64,
    /// `write` syscalls made.
    pub syscalls: u64,
    /// The writer thread's CPU seconds, and microseconds per frame (paced: wake-ups included).
    pub cpu_seconds: f64,
    pub us_per_frame: f64,
    /// Microseconds per frame of the same writes back to back (no wake-ups).
    pub write_us_per_frame: f64,
}

fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the calling thread's CPU clock.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Bytes of the WebSocket frame of a `msg` with a `body`-byte body and a load generator's
/// names (`{"type":"msg","room":"lg1a2b3c4d-a0-r12","seq":1234,...}`, 2-byte header).
pub fn msg_frame_len(body: usize) -> usize {
    let json = r#"{"type":"msg","room":"lg1a2b3c4d-a0-r12","seq":1234,"id":"1a2b3c4d5e6f-0-1a2b","from":"lg1a2b3c4d-a0-u123","ts":1764950400000,"body":"","cid":"12-1234-12345678901"}"#;
    let len = json.len() + body;
    len + if len < 126 { 2 } else { 4 }
}

/// Opens the connections, runs the writer for `duration` seconds and returns its cost.
pub fn measure(a: &FloorArgs) -> Result<Floor, String> {
    if a.conns == 0 || a.frame == 0 || a.fanout == 0 || a.batch == 0 {
        return Err("conns, frame, fanout and batch must be positive".into());
    }
    if !(a.rate > 0.0 && a.duration > 0.0) {
        return Err("rate and duration must be positive".into());
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut clients = Vec::with_capacity(a.conns);
    let mut servers = Vec::with_capacity(a.conns);
    for _ in 0..a.conns {
        let c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let (s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        c.set_nonblocking(true).map_err(|e| e.to_string())?;
        clients.push(c);
        servers.push(s);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reader = std::thread::spawn(move || drain(clients, stop_rx));
    let frame = vec![b'x'; a.frame * a.batch];
    let wakes_per_s = a.rate / a.fanout as f64;
    let per_wake = Duration::from_secs_f64(1.0 / wakes_per_s);
    let (mut frames, mut syscalls, mut next_conn) = (0u64, 0u64, 0usize);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let cpu0 = thread_cpu();
    let mut at = start;
    while at < end {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let writes = burst(&mut servers, &mut next_conn, &frame, a)?;
        syscalls += writes;
        frames += writes * a.batch as u64;
        at += per_wake;
    }
    let cpu_seconds = thread_cpu() - cpu0;
    let wall = start.elapsed().as_secs_f64();
    // The same writes back to back (at most 20,000 frames): no wake-ups.
    let bursts = (frames / a.fanout as u64).clamp(1, 20_000 / a.fanout as u64 + 1);
    let (mut back_to_back, cpu1) = (0u64, thread_cpu());
    for _ in 0..bursts {
        back_to_back += burst(&mut servers, &mut next_conn, &frame, a)? * a.batch as u64;
    }
    let write_us_per_frame = (thread_cpu() - cpu1) * 1e6 / back_to_back as f64;
    let _ = stop_tx.send(true);
    drop(servers);
    let _ = reader.join();
    Ok(Floor {
        conns: a.conns,
        frame: a.frame,
        fanout: a.fanout,
        batch: a.batch,
        frames,
        frames_per_s: frames as f64 / wall,
        syscalls,
        cpu_seconds,
        us_per_frame: cpu_seconds * 1e6 / frames.max(1) as f64,
        write_us_per_frame,
    })
}

/// One wake-up's writes: `fanout` frames, `batch` per `write` of `frame`, each write to the next
/// connection in turn; returns the writes made.
fn burst(
    servers: &mut [TcpStream],
    next: &mut usize,
    frame: &[u8],
    a: &FloorArgs,
) -> Result<u64, String> {
    let writes = a.fanout.div_ceil(a.batch);
    for _ in 0..writes {
        servers[*next]
            .write_all(frame)
            .map_err(|e| format!("write: {e}"))?;
        *next = (*next + 1) % servers.len();
    }
    Ok(writes as u64)
}

/// The clients' side: read everything until `stop` (or every connection is closed).
fn drain(clients: Vec<TcpStream>, stop: tokio::sync::watch::Receiver<bool>) {
    crate::local::block_on_local("floor reader", async move {
        let mut tasks = Vec::new();
        for c in clients {
            let Ok(mut c) = tokio::net::TcpStream::from_std(c) else {
                continue;
            };
            let mut stop = stop.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        n = c.read(&mut buf) => if !matches!(n, Ok(n) if n > 0) { break },
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_frames_and_syscalls() {
        let f = measure(&FloorArgs {
            conns: 20,
            frame: 200,
            rate: 2000.0,
            fanout: 10,
            batch: 2,
            duration: 0.5,
        })
        .unwrap();
        // 200 wake-ups a second for 0.5 s, 5 writes of 2 frames each.
        assert!((90..=110).contains(&(f.syscalls / 5)), "{f:?}");
        assert_eq!(f.frames, f.syscalls * 2);
        assert!(f.cpu_seconds > 0.0 && f.us_per_frame > 0.0, "{f:?}");
        assert!(f.write_us_per_frame > 0.0, "{f:?}");
        assert!(measure(&FloorArgs {
            conns: 0,
            ..FloorArgs::from_defaults()
        })
        .is_err());
    }

    impl FloorArgs {
        fn from_defaults() -> FloorArgs {
            FloorArgs {
                conns: 1000,
                frame: msg_frame_len(100),
                rate: 4000.0,
                fanout: 10,
                batch: 1,
                duration: 5.0,
            }
        }
    }
}
