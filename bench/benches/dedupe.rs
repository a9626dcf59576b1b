//! The standalone `cid` dedupe window (`chat_server::bus::dedupe::DedupeWindow`, 256 small
//! tables) against the plain `AHashMap` + arrival-order `VecDeque` it replaced,
//! growing from empty to 250,000 pairs with the server's key shape (`room\0from\0cid`) and
//! value size (room, seq, id).
//!
//! * `dedupe/slowest_insert/<impl>/250k`: the slowest single insert on the way (each
//!   iteration grows a fresh table and reports only its slowest insert; the plain map's is the
//!   one that rehashes 229,376 pairs at once). This is the stall a core's rooms saw.
//! * `dedupe/grow/<impl>/250k`: all 250,000 inserts (throughput: pairs), for the price of
//!   hashing each key twice (shard, then bucket).

use ahash::AHashMap;
use chat_server::bus::dedupe::DedupeWindow;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::collections::VecDeque;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PAIRS: usize = 250_000;

/// What the server remembers per pair (`Remembered`: room, seq, id).
type Value = (Rc<str>, u64, Rc<str>);

/// The code the window replaced: one map, keys in arrival order for expiry.
#[derive(Default)]
struct PlainMap {
    map: AHashMap<Rc<str>, Value>,
    order: VecDeque<(u64, Rc<str>)>,
}

impl PlainMap {
    fn insert(&mut self, ts: u64, key: Rc<str>, value: Value) {
        self.map.insert(key.clone(), value);
        self.order.push_back((ts, key));
    }
}

trait Window {
    fn new() -> Self;
    fn put(&mut self, ts: u64, key: &Rc<str>, value: Value);
}

impl Window for PlainMap {
    fn new() -> Self {
        PlainMap::default()
    }
    fn put(&mut self, ts: u64, key: &Rc<str>, value: Value) {
        self.insert(ts, key.clone(), value);
    }
}

impl Window for DedupeWindow<Value> {
    fn new() -> Self {
        DedupeWindow::new(u64::MAX, 1_000_000)
    }
    fn put(&mut self, ts: u64, key: &Rc<str>, value: Value) {
        self.insert(ts, key.clone(), value);
    }
}

struct Input {
    keys: Vec<Rc<str>>,
    room: Rc<str>,
    id: Rc<str>,
}

impl Input {
    fn new() -> Self {
        Input {
            keys: (0..PAIRS)
                .map(|i| format!("room-{}\0user-{}\0cid-{i:08}", i % 100, i % 1000).into())
                .collect(),
            room: "room-1".into(),
            id: "00000000deadbeef-0-1a2b".into(),
        }
    }

    fn value(&self, i: usize) -> Value {
        (self.room.clone(), i as u64, self.id.clone())
    }

    /// Grows a fresh table; the slowest single insert.
    fn slowest_insert<W: Window>(&self) -> Duration {
        let mut w = W::new();
        let mut slowest = Duration::ZERO;
        for (i, key) in self.keys.iter().enumerate() {
            let value = self.value(i);
            let t = Instant::now();
            w.put(i as u64, key, value);
            slowest = slowest.max(t.elapsed());
        }
        black_box(&w);
        slowest
    }

    fn grow<W: Window>(&self) -> W {
        let mut w = W::new();
        for (i, key) in self.keys.iter().enumerate() {
            w.put(i as u64, key, self.value(i));
        }
        w
    }
}

fn dedupe(c: &mut Criterion) {
    let input = Input::new();

    // Each iteration grows a whole table (~tens of ms) but reports one insert's time, so
    // criterion's usual sampling (iterations to fill the measurement time) would run for hours:
    // flat sampling, a token target time, 10 iterations.
    let mut g = c.benchmark_group("dedupe/slowest_insert");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    g.bench_function(BenchmarkId::new("ours_sharded", "250k"), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| input.slowest_insert::<DedupeWindow<Value>>())
                .sum()
        })
    });
    g.bench_function(BenchmarkId::new("ahashmap", "250k"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| input.slowest_insert::<PlainMap>()).sum())
    });
    g.finish();

    let mut g = c.benchmark_group("dedupe/grow");
    g.sample_size(10)
        .throughput(Throughput::Elements(PAIRS as u64));
    g.bench_function(BenchmarkId::new("ours_sharded", "250k"), |b| {
        b.iter_batched(
            || (),
            |()| input.grow::<DedupeWindow<Value>>(),
            BatchSize::PerIteration,
        )
    });
    g.bench_function(BenchmarkId::new("ahashmap", "250k"), |b| {
        b.iter_batched(
            || (),
            |()| input.grow::<PlainMap>(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, dedupe);
criterion_main!(benches);
