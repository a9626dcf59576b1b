//! CPU accounting, so that every result says who was busy: this process and each of its load
//! threads (`/proc/self/stat`, `/proc/thread-self/stat`), the whole machine (`/proc/stat`),
//! and every server node (`process_cpu_seconds_total` from its `/metrics`, scraped before and
//! after the run over plain HTTP/1.1).

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime in seconds from a `/proc/.../stat` file.
fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// CPU seconds process `pid` has used (all its threads); `None` when it is gone.
pub fn pid_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// The sum over `pids` (`None` when one is gone).
pub fn pids_seconds(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| pid_seconds(p)).sum()
}

/// CPU seconds this process has used.
pub fn process_seconds() -> f64 {
    stat_cpu_seconds("/proc/self/stat").unwrap_or(0.0)
}

/// CPU seconds the calling thread has used.
pub fn thread_seconds() -> f64 {
    stat_cpu_seconds("/proc/thread-self/stat").unwrap_or(0.0)
}

/// Jiffies of the whole machine: (busy, total).
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    pub fn now() -> MachineCpu {
        let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = s.lines().next() else {
            return MachineCpu::default();
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        MachineCpu {
            busy: total - idle,
            total,
        }
    }

    /// Share of all cores busy since `earlier` (0..1).
    pub fn busy_since(&self, earlier: &MachineCpu) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        (total > 0).then(|| (self.busy - earlier.busy) as f64 / total as f64)
    }
}

/// CPU pressure (`/proc/pressure/cpu`, `some`): microseconds during which at least one runnable
/// task waited for a CPU. Unlike `/proc/stat` (tick-sampled, unreliable for short bursts in
/// VMs) it says directly whether processes competed for cores.
pub fn cpu_pressure_us() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    s.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// A server node's CPU over the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerCpu {
    pub url: String,
    pub before_seconds: Option<f64>,
    pub after_seconds: Option<f64>,
    /// CPU seconds the node used during the run (None when `/metrics` was unreachable).
    pub cpu_seconds: Option<f64>,
    pub error: Option<String>,
}

/// `process_cpu_seconds_total` from `authority`'s `/metrics`.
pub async fn scrape_cpu(authority: &str) -> Result<f64, String> {
    let text = tokio::time::timeout(Duration::from_secs(5), http_get(authority, "/metrics"))
        .await
        .map_err(|_| format!("{authority}/metrics: timeout"))??;
    parse_cpu_seconds(&text)
        .ok_or_else(|| format!("{authority}/metrics: no process_cpu_seconds_total"))
}

pub fn parse_cpu_seconds(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
        .and_then(|v| v.trim().parse().ok())
}

async fn http_get(authority: &str, path: &str) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{authority}{path}: malformed response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "{authority}{path}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_metrics_text() {
        let t0 = process_seconds();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(process_seconds() >= t0);
        assert!(thread_seconds() >= 0.0);
        let a = MachineCpu::now();
        assert!(a.total > 0);
        let text = "# HELP x\nprocess_cpu_seconds_total 12.5\nother 1\n";
        assert_eq!(parse_cpu_seconds(text), Some(12.5));
        assert_eq!(parse_cpu_seconds("nothing"), None);
    }
}
