//! The standard Prometheus `process_*` metrics, read from `/proc/self/stat`: one place for the
//! `/proc` reading and the exposition text that `chat-server` and `chat-persister` both serve
//! on `/metrics` (the server also reports its thread count, the persister does not); and
//! [`logging`], the log setup both start with.

pub mod logging;

use std::fmt::Write as _;

/// This process's CPU time, resident memory, start time and threads; zeros where `/proc`
/// cannot be read.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
}

impl ProcessStats {
    /// Reads them now.
    pub fn read() -> ProcessStats {
        use procfs::prelude::*;
        let Ok(stat) = procfs::process::Process::myself().and_then(|p| p.stat()) else {
            return ProcessStats::default();
        };
        let ticks = procfs::ticks_per_second().max(1) as f64;
        let boot = procfs::boot_time_secs().unwrap_or(0) as f64;
        ProcessStats {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            rss_bytes: stat.rss_bytes().get(),
            start_time_seconds: boot + stat.starttime as f64 / ticks,
            threads: stat.num_threads.max(0) as u64,
        }
    }

    /// Appends `process_cpu_seconds_total`, `process_resident_memory_bytes` and
    /// `process_start_time_seconds` (HELP, TYPE and the sample, each line ending in `\n`).
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}", self.cpu_seconds);
        let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}", self.rss_bytes);
        let _ = writeln!(out, "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}", self.start_time_seconds);
    }

    /// Appends `process_threads` the same way.
    pub fn render_threads(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP process_threads Number of OS threads in the process.\n# TYPE process_threads gauge\nprocess_threads {}", self.threads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_are_read() {
        let p = ProcessStats::read();
        assert!(p.rss_bytes > 0);
        assert!(p.start_time_seconds > 0.0);
    }

    #[test]
    fn renders_the_standard_text() {
        let p = ProcessStats {
            cpu_seconds: 1.5,
            rss_bytes: 4096,
            start_time_seconds: 1700000000.25,
            threads: 7,
        };
        let mut out = String::new();
        p.render(&mut out);
        p.render_threads(&mut out);
        assert_eq!(
            out,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total 1.5\n\
             # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes 4096\n\
             # HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
             # TYPE process_start_time_seconds gauge\n\
             process_start_time_seconds 1700000000.25\n\
             # HELP process_threads Number of OS threads in the process.\n\
             # TYPE process_threads gauge\n\
             process_threads 7\n"
        );
    }
}
