//! The cost of one latency observation on the hot path (`chat_histogram::Histogram`, one per
//! core, merged at scrape) against the persister's former mutex-guarded histogram, and the
//! clock read that every measured request pays besides.
//!
//! * `histogram/observe/atomic`: one bucket search + two relaxed `fetch_add`s (one writer).
//! * `histogram/observe/mutex`: the same bounds behind a `Mutex` (uncontended lock + unlock).
//! * `histogram/instant_now`: `Instant::now()`, read once per `send` and per write burst.
//! * `histogram/observe_4_cores`: four threads observing into their own histograms at once
//!   (no shared cache line), thread start included.
//! * `histogram/scrape/16_cores`: merging and rendering 16 cores' histograms (once a scrape).

use chat_histogram::{Histogram, Merged, LATENCY_SECONDS};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The design the atomics replaced: counts, sum and count behind one lock.
struct MutexHistogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl MutexHistogram {
    fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        let mut h = self.inner.lock().unwrap();
        h.0[i] += 1;
        h.1 += v;
        h.2 += 1;
    }
}

/// Latencies spread over the buckets the way a busy node sees them (0.05 ms - 40 ms).
fn samples() -> Vec<Duration> {
    (0..1024u64)
        .map(|i| Duration::from_nanos(50_000 + (i * i * 37_813) % 40_000_000))
        .collect()
}

fn observe(c: &mut Criterion) {
    let mut g = c.benchmark_group("histogram");
    let samples = samples();
    g.throughput(Throughput::Elements(samples.len() as u64));
    let h = Histogram::latency();
    g.bench_function("observe/atomic", |b| {
        b.iter(|| samples.iter().for_each(|&d| h.observe(black_box(d))))
    });
    let m = MutexHistogram {
        bounds: LATENCY_SECONDS,
        inner: Mutex::new((vec![0; LATENCY_SECONDS.len() + 1], 0.0, 0)),
    };
    g.bench_function("observe/mutex", |b| {
        b.iter(|| {
            samples
                .iter()
                .for_each(|d| m.observe(black_box(d.as_secs_f64())))
        })
    });
    g.throughput(Throughput::Elements(4 * 64 * samples.len() as u64));
    g.bench_function("observe_4_cores", |b| {
        let cores: Vec<Histogram> = (0..4).map(|_| Histogram::latency()).collect();
        b.iter(|| {
            std::thread::scope(|s| {
                for h in &cores {
                    let samples = &samples;
                    s.spawn(move || {
                        for _ in 0..64 {
                            samples.iter().for_each(|&d| h.observe(black_box(d)));
                        }
                    });
                }
            })
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("instant_now", |b| b.iter(|| black_box(Instant::now())));
    let cores: Vec<Histogram> = (0..16).map(|_| Histogram::latency()).collect();
    cores
        .iter()
        .for_each(|h| h.observe(Duration::from_millis(1)));
    g.bench_function("scrape/16_cores", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(2048);
            Merged::of(&cores)
                .unwrap()
                .render(&mut out, "chat_ack_latency_seconds", "help");
            black_box(out)
        })
    });
    g.finish();
}

criterion_group!(benches, observe);
criterion_main!(benches);
