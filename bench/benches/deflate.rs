//! permessage-deflate on the way out: one room message to 10, 100 and 1,000 recipients who all
//! negotiated it, compressed once and shared (`chat_server::compress`, what the server does)
//! against compressed once per connection (what a server without the shared frame does, even
//! without context takeover). Chat-like bodies of 100 B and 4 KiB: varied words, not random
//! bytes and not one phrase repeated (both would flatter or punish DEFLATE).
//!
//! Each iteration starts from a fresh plain frame, as each new message does, so the shared
//! variant pays its one compression every time; throughput counts deliveries.

use bytes::{BufMut, Bytes, BytesMut};
use chat_bench::size_label;
use chat_server::compress;
use chat_wire::deflate::Deflater;
use chat_wire::frame::{encode_text_with, payload_of};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WORDS: [&str; 24] = [
    "are", "you", "coming", "to", "the", "standup", "today", "yes", "in", "five", "minutes", "I",
    "pushed", "a", "fix", "for", "login", "bug", "can", "someone", "review", "it", "thanks",
    "later",
];

/// A `msg` frame whose body is `len` bytes of words in a varied order.
fn msg_frame(len: usize, salt: u64) -> Bytes {
    let mut x = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut body = String::with_capacity(len + 16);
    while body.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        body.push(if x % 11 == 0 { '.' } else { ' ' });
    }
    body.truncate(len);
    encode_text_with(len + 160, |b: &mut BytesMut| {
        b.put_slice(br#"{"type":"msg","room":"general","seq":4711,"id":"7f3a9c2e41d08b55-3-4711","from":"alice","cid":"c-91","body":""#);
        b.put_slice(body.as_bytes());
        b.put_slice(br#"","ts":1796500000000}"#);
    })
}

fn fanout(c: &mut Criterion) {
    for body in [100, 4096] {
        let mut g = c.benchmark_group(format!("deflate_fanout/{}", size_label(body)));
        g.measurement_time(Duration::from_secs(3));
        let template = msg_frame(body, 7);
        for recipients in [10usize, 100, 1000] {
            g.throughput(Throughput::Elements(recipients as u64));
            g.bench_with_input(
                BenchmarkId::new("compress_once_shared", recipients),
                &recipients,
                |b, &n| {
                    b.iter(|| {
                        let frame = Bytes::copy_from_slice(&template);
                        for _ in 0..n {
                            black_box(compress::for_connection(&frame, 15));
                        }
                    })
                },
            );
            let mut deflater = Deflater::default();
            g.bench_with_input(
                BenchmarkId::new("compress_per_connection", recipients),
                &recipients,
                |b, &n| {
                    b.iter(|| {
                        let frame = Bytes::copy_from_slice(&template);
                        let payload = payload_of(&frame);
                        for _ in 0..n {
                            black_box(deflater.text_frame(&payload, 15));
                        }
                    })
                },
            );
        }
        g.finish();
    }
}

criterion_group!(benches, fanout);
criterion_main!(benches);
