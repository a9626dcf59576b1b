//! RFC 6455 framing: reading masked client frames (parse + unmask + UTF-8 check, single-frame
//! and fragmented messages) and encoding server frames, `chat-wire` against `tungstenite` and
//! `fastwebsockets` on identical bytes.
//!
//! Every reader is a long-lived object fed the same bytes again and again, as a connection
//! would be: ours a `BytesMut` read buffer (one `extend_from_slice` per pass stands for the
//! socket read), the others their `WebSocket` over [`MemStream`], whose reads copy into the
//! library's own buffer. Each pass reads every message of the input; throughput counts payload
//! bytes.

use bytes::{BufMut, Bytes, BytesMut};
use chat_bench::{chat_text, ready, size_label, MemStream};
use chat_wire::frame::{
    encode_frame, encode_masked_frame, encode_text_with, parse_frame, Message, MessageAssembler,
    OpCode, Role,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const MAX: usize = 1 << 20;
const SIZES: [usize; 4] = [32, 256, 4096, 65536];

/// `count` masked text frames, each a whole message of `payload`.
fn masked_messages(payload: &[u8], count: usize) -> Bytes {
    let mut out = BytesMut::new();
    for _ in 0..count {
        out.put_slice(&encode_masked_frame(true, OpCode::Text, payload, MASK));
    }
    out.freeze()
}

/// One masked text message of `payload` cut into `fragments` frames (cuts may fall inside a
/// multi-byte character, as they may on the wire).
fn fragmented_message(payload: &[u8], fragments: usize) -> Bytes {
    let step = payload.len().div_ceil(fragments);
    let mut out = BytesMut::new();
    for (i, chunk) in payload.chunks(step).enumerate() {
        let op = if i == 0 {
            OpCode::Text
        } else {
            OpCode::Continuation
        };
        let fin = (i + 1) * step >= payload.len();
        out.put_slice(&encode_masked_frame(fin, op, chunk, MASK));
    }
    out.freeze()
}

/// Ours: the server's read path. Returns the payload bytes read (checked by the caller once).
struct Ours {
    buf: BytesMut,
    asm: MessageAssembler,
}

impl Ours {
    fn new() -> Self {
        Ours {
            buf: BytesMut::with_capacity(8192),
            asm: MessageAssembler::new(MAX),
        }
    }

    /// Parse + unmask + reassemble + UTF-8 check, as `connection.rs` does.
    fn read_messages(&mut self, input: &[u8], messages: usize) -> usize {
        self.buf.extend_from_slice(input);
        let mut got = 0;
        let mut bytes = 0;
        while got < messages {
            let frame = parse_frame(&mut self.buf, Role::Server, MAX)
                .unwrap()
                .expect("whole frames");
            if let Some(msg) = self.asm.push(frame).unwrap() {
                match msg {
                    Message::Text(t) => bytes += black_box(t).len(),
                    other => panic!("{other:?}"),
                }
                got += 1;
            }
        }
        bytes
    }

    /// Parse + unmask only: no reassembly, no UTF-8 check.
    fn parse_frames(&mut self, input: &[u8], frames: usize) -> usize {
        self.buf.extend_from_slice(input);
        let mut bytes = 0;
        for _ in 0..frames {
            let frame = parse_frame(&mut self.buf, Role::Server, MAX)
                .unwrap()
                .expect("whole frames");
            bytes += black_box(frame).payload.len();
        }
        bytes
    }
}

fn tungstenite_socket(input: &Bytes) -> tungstenite::WebSocket<MemStream> {
    tungstenite::WebSocket::from_raw_socket(
        MemStream::new(input.clone()),
        tungstenite::protocol::Role::Server,
        None,
    )
}

fn tungstenite_read(ws: &mut tungstenite::WebSocket<MemStream>, messages: usize) -> usize {
    let mut bytes = 0;
    for _ in 0..messages {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => bytes += black_box(t).len(),
            other => panic!("{other:?}"),
        }
    }
    bytes
}

fn fastwebsockets_socket(input: &Bytes) -> fastwebsockets::WebSocket<MemStream> {
    let mut ws = fastwebsockets::WebSocket::after_handshake(
        MemStream::new(input.clone()),
        fastwebsockets::Role::Server,
    );
    ws.set_max_message_size(MAX);
    ws
}

fn fastwebsockets_read(ws: &mut fastwebsockets::WebSocket<MemStream>, frames: usize) -> usize {
    let mut bytes = 0;
    for _ in 0..frames {
        let frame = ready(ws.read_frame()).unwrap();
        assert_eq!(frame.opcode, fastwebsockets::OpCode::Text);
        bytes += black_box(frame).payload.len();
    }
    bytes
}

fn fastwebsockets_collect(
    ws: &mut fastwebsockets::FragmentCollector<MemStream>,
    messages: usize,
) -> usize {
    let mut bytes = 0;
    for _ in 0..messages {
        let frame = ready(ws.read_frame()).unwrap();
        assert_eq!(frame.opcode, fastwebsockets::OpCode::Text);
        bytes += black_box(frame).payload.len();
    }
    bytes
}

fn read_single_frame_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing/read_masked");
    for size in SIZES {
        // About 64 KiB of frames per pass.
        let count = (65536 / size).max(1);
        let payload = chat_text(size, false);
        let input = masked_messages(payload.as_bytes(), count);
        let expected = size * count;
        group.throughput(Throughput::Bytes(expected as u64));
        let label = size_label(size);

        let mut ours = Ours::new();
        assert_eq!(ours.read_messages(&input, count), expected);
        group.bench_function(BenchmarkId::new("ours", &label), |b| {
            b.iter(|| ours.read_messages(&input, count))
        });
        let mut ours = Ours::new();
        assert_eq!(ours.parse_frames(&input, count), expected);
        group.bench_function(BenchmarkId::new("ours_parse_only", &label), |b| {
            b.iter(|| ours.parse_frames(&input, count))
        });
        let mut ws = tungstenite_socket(&input);
        assert_eq!(tungstenite_read(&mut ws, count), expected);
        group.bench_function(BenchmarkId::new("tungstenite", &label), |b| {
            b.iter(|| tungstenite_read(&mut ws, count))
        });
        let mut ws = fastwebsockets_socket(&input);
        assert_eq!(fastwebsockets_read(&mut ws, count), expected);
        group.bench_function(BenchmarkId::new("fastwebsockets", &label), |b| {
            b.iter(|| fastwebsockets_read(&mut ws, count))
        });
    }
    group.finish();
}

fn read_fragmented_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing/read_fragmented");
    for (size, fragments) in [(65536, 16), (4096, 16)] {
        let payload = chat_text(size, false);
        let input = fragmented_message(payload.as_bytes(), fragments);
        group.throughput(Throughput::Bytes(size as u64));
        let label = format!("{}x{fragments}", size_label(size));

        let mut ours = Ours::new();
        assert_eq!(ours.read_messages(&input, 1), size);
        group.bench_function(BenchmarkId::new("ours", &label), |b| {
            b.iter(|| ours.read_messages(&input, 1))
        });
        let mut ws = tungstenite_socket(&input);
        assert_eq!(tungstenite_read(&mut ws, 1), size);
        group.bench_function(BenchmarkId::new("tungstenite", &label), |b| {
            b.iter(|| tungstenite_read(&mut ws, 1))
        });
        let mut ws = fastwebsockets::FragmentCollector::new(fastwebsockets_socket(&input));
        assert_eq!(fastwebsockets_collect(&mut ws, 1), size);
        group.bench_function(BenchmarkId::new("fastwebsockets", &label), |b| {
            b.iter(|| fastwebsockets_collect(&mut ws, 1))
        });
    }
    group.finish();
}

/// Server frames (unmasked text), one fresh output buffer per frame for everyone.
fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing/encode");
    for size in SIZES {
        let payload = Bytes::from(chat_text(size, false));
        let reference = encode_frame(OpCode::Text, &payload);
        group.throughput(Throughput::Bytes(size as u64));
        let label = size_label(size);

        group.bench_function(BenchmarkId::new("ours_encode_frame", &label), |b| {
            b.iter(|| encode_frame(OpCode::Text, black_box(&payload)))
        });
        let with = |p: &[u8]| encode_text_with(p.len(), |out| out.put_slice(p));
        assert_eq!(with(&payload), reference);
        group.bench_function(BenchmarkId::new("ours_encode_text_with", &label), |b| {
            b.iter(|| with(black_box(&payload)))
        });
        let tung = |p: &Bytes| {
            let mut out = Vec::with_capacity(p.len() + 14);
            tungstenite::protocol::frame::Frame::message(
                p.clone(),
                tungstenite::protocol::frame::coding::OpCode::Data(
                    tungstenite::protocol::frame::coding::Data::Text,
                ),
                true,
            )
            .format(&mut out)
            .unwrap();
            out
        };
        assert_eq!(tung(&payload), reference);
        group.bench_function(BenchmarkId::new("tungstenite", &label), |b| {
            b.iter(|| tung(black_box(&payload)))
        });
        let fast = |p: &[u8]| {
            let mut out = Vec::with_capacity(p.len() + 16);
            let n = fastwebsockets::Frame::text(fastwebsockets::Payload::Borrowed(p))
                .write(&mut out)
                .len();
            out.truncate(n);
            out
        };
        assert_eq!(fast(&payload), reference);
        group.bench_function(BenchmarkId::new("fastwebsockets", &label), |b| {
            b.iter(|| fast(black_box(&payload)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    read_single_frame_messages,
    read_fragmented_messages,
    encode
);
criterion_main!(benches);
