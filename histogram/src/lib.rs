//! Prometheus histograms cheap enough for the hot path, shared by the server and the persister.
//!
//! Every writer (a server core, the bus thread, the persister's batch loop) owns its own
//! [`Histogram`]: one relaxed `fetch_add` on a bucket and one on the sum, no lock, no shared
//! cache line with another core. A scrape adds the writers' buckets together ([`Merged`]) and
//! prints one `histogram` series, so the cost of having many cores is paid by the scraper only.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds in seconds for latencies: 0.1 ms to 10 s, about three per decade.
pub const LATENCY_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Observed values are integers in `1 / scale` of the rendered unit: nanoseconds for
/// [`Histogram::latency`], plain counts with `scale = 1`.
pub struct Histogram {
    /// Upper bounds in observed units, ascending.
    bounds: Box<[u64]>,
    /// The bounds as rendered (`le` labels).
    labels: &'static [f64],
    scale: f64,
    /// One count per bound, not cumulative, plus `+Inf` last.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds` (rendered units); observations are `bound * scale` units.
    pub fn new(bounds: &'static [f64], scale: f64) -> Histogram {
        Histogram {
            bounds: bounds.iter().map(|b| (b * scale).round() as u64).collect(),
            labels: bounds,
            scale,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Durations over [`LATENCY_SECONDS`], rendered in seconds.
    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_SECONDS, 1e9)
    }

    /// Counts `value` (observed units) once.
    #[inline]
    pub fn observe_units(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// Counts one duration (a latency histogram).
    #[inline]
    pub fn observe(&self, d: Duration) {
        self.observe_units(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::latency()
    }
}

/// The sum of several writers' histograms (same bounds), as one scrape sees them.
pub struct Merged {
    labels: &'static [f64],
    scale: f64,
    buckets: Vec<u64>,
    sum: u64,
}

impl Merged {
    /// Adds every histogram of `parts`; `None` if there are none.
    pub fn of<'a>(parts: impl IntoIterator<Item = &'a Histogram>) -> Option<Merged> {
        let mut merged: Option<Merged> = None;
        for h in parts {
            let m = merged.get_or_insert_with(|| Merged {
                labels: h.labels,
                scale: h.scale,
                buckets: vec![0; h.buckets.len()],
                sum: 0,
            });
            debug_assert_eq!(m.labels, h.labels, "merging histograms of different bounds");
            for (total, b) in m.buckets.iter_mut().zip(h.buckets.iter()) {
                *total += b.load(Relaxed);
            }
            m.sum += h.sum.load(Relaxed);
        }
        merged
    }

    /// Appends the exposition text: `HELP`, `TYPE`, cumulative buckets, `_sum`, `_count`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (le, n) in self.labels.iter().zip(&self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum as f64 / self.scale);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Renders the merge of `parts` as one series named `name` (nothing if `parts` is empty).
pub fn render<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    parts: impl IntoIterator<Item = &'a Histogram>,
) {
    if let Some(m) = Merged::of(parts) {
        m.render(out, name, help);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let h = Histogram::latency();
        h.observe(Duration::from_micros(100)); // exactly 0.0001: in le="0.0001"
        h.observe(Duration::from_micros(101)); // just over: le="0.00025"
        h.observe(Duration::from_secs(11)); // over every bound: +Inf only
        let mut out = String::new();
        render(&mut out, "t_seconds", "test", [&h]);
        assert_eq!(line(&out, "t_seconds_bucket{le=\"0.0001\"} "), "1");
        assert_eq!(line(&out, "t_seconds_bucket{le=\"0.00025\"} "), "2");
        assert_eq!(line(&out, "t_seconds_bucket{le=\"10\"} "), "2");
        assert_eq!(line(&out, "t_seconds_bucket{le=\"+Inf\"} "), "3");
        assert_eq!(line(&out, "t_seconds_count "), "3");
        let sum: f64 = line(&out, "t_seconds_sum ").parse().unwrap();
        assert!((sum - 11.000201).abs() < 1e-9, "{sum}");
        assert!(out.contains("# TYPE t_seconds histogram\n"));
    }

    #[test]
    fn a_scrape_merges_every_writer() {
        let cores: Vec<Histogram> = (0..4).map(|_| Histogram::latency()).collect();
        std::thread::scope(|s| {
            for (i, h) in cores.iter().enumerate() {
                s.spawn(move || {
                    for _ in 0..1000 {
                        h.observe(Duration::from_millis(i as u64 * 3));
                    }
                });
            }
        });
        let m = Merged::of(&cores).unwrap();
        let mut out = String::new();
        m.render(&mut out, "x", "merged");
        // 0 ms and 3 ms and 6 ms and 9 ms: 1000 in le=0.0001, 3000 by le=0.01.
        assert_eq!(line(&out, "x_bucket{le=\"0.0001\"} "), "1000");
        assert_eq!(line(&out, "x_bucket{le=\"0.0025\"} "), "1000");
        assert_eq!(line(&out, "x_bucket{le=\"0.005\"} "), "2000");
        assert_eq!(line(&out, "x_bucket{le=\"0.01\"} "), "4000");
        assert_eq!(line(&out, "x_count "), "4000");
        assert!(Merged::of(std::iter::empty()).is_none());
    }

    #[test]
    fn counts_with_their_own_bounds() {
        static SIZES: &[f64] = &[1.0, 10.0, 100.0];
        let h = Histogram::new(SIZES, 1.0);
        for v in [1, 2, 10, 11, 1000] {
            h.observe_units(v);
        }
        let mut out = String::new();
        render(&mut out, "n", "sizes", [&h]);
        assert_eq!(line(&out, "n_bucket{le=\"1\"} "), "1");
        assert_eq!(line(&out, "n_bucket{le=\"10\"} "), "3");
        assert_eq!(line(&out, "n_bucket{le=\"100\"} "), "4");
        assert_eq!(line(&out, "n_bucket{le=\"+Inf\"} "), "5");
        assert_eq!(line(&out, "n_sum "), "1024");
        assert_eq!(h.count(), 5);
    }
}
