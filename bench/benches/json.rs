//! JSON: decoding client requests with `chat_wire::protocol::Decoder` (simd-json into a reused
//! tape, strings unescaped in place and borrowed) against `serde_json` with derive structs that
//! borrow what they can (`Cow<str>`: borrowed unless the string has escapes), doing the same
//! checks afterwards (room name, cid and body length, history limit); and encoding a `msg`
//! with `Msg::encode` against `serde_json::to_writer` of an equivalent struct (bodies with
//! escapes, about one character in six, and a plain one: accents and emoji, nothing to escape);
//! and reading a `msg` back with `MsgView` (one strict pass over `chat_wire::protocol::scan`)
//! against the `serde_json` derives it stands in for: the cluster bus's routing head (room,
//! seq, id, ts) and the persister's whole row, plus the load generator's lenient `scan::walk`.

use bytes::BytesMut;
use chat_bench::{chat_text, size_label};
use chat_wire::protocol::scan::{self, Val};
use chat_wire::protocol::{
    validate_room, validate_user, ClientOp, Decoder, Field, Msg, MsgView, MAX_BODY, MAX_CID_BYTES,
    MAX_HISTORY_LIMIT,
};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// serde's internally tagged enum (`#[serde(tag = "type")]`): the idiomatic derive. serde
/// buffers the object to find the tag first.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Tagged<'a> {
    Join {
        #[serde(borrow)]
        room: Cow<'a, str>,
    },
    Leave {
        #[serde(borrow)]
        room: Cow<'a, str>,
    },
    Send {
        #[serde(borrow)]
        room: Cow<'a, str>,
        #[serde(borrow)]
        cid: Cow<'a, str>,
        #[serde(borrow)]
        body: Cow<'a, str>,
    },
    Dm {
        #[serde(borrow)]
        to: Cow<'a, str>,
        #[serde(borrow)]
        cid: Cow<'a, str>,
        #[serde(borrow)]
        body: Cow<'a, str>,
    },
    History {
        #[serde(borrow)]
        room: Cow<'a, str>,
        before: Option<u64>,
        limit: Option<u64>,
    },
    Resume {
        #[serde(borrow)]
        room: Cow<'a, str>,
        after: u64,
    },
}

/// The faster serde shape: one flat struct, `type` as a field, every other field optional.
#[derive(Debug, Deserialize)]
struct Flat<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    body: Option<Cow<'a, str>>,
    before: Option<u64>,
    limit: Option<u64>,
    after: Option<u64>,
}

fn check_cid(cid: &str) -> Result<(), &'static str> {
    (!cid.is_empty() && cid.len() <= MAX_CID_BYTES)
        .then_some(())
        .ok_or("cid")
}

fn check_body(body: &str) -> Result<(), &'static str> {
    (body.len() <= MAX_BODY).then_some(()).ok_or("too large")
}

fn check_limit(limit: Option<u64>) -> Result<(), &'static str> {
    match limit {
        Some(l) if !(1..=MAX_HISTORY_LIMIT as u64).contains(&l) => Err("limit"),
        _ => Ok(()),
    }
}

/// The checks `Decoder` makes, on the serde results.
fn check_tagged(t: &Tagged) -> Result<(), &'static str> {
    match t {
        Tagged::Join { room } | Tagged::Leave { room } => validate_room(room),
        Tagged::Resume { room, after } => {
            black_box(after);
            validate_room(room)
        }
        Tagged::Send { room, cid, body } => {
            validate_room(room)?;
            check_cid(cid)?;
            check_body(body)
        }
        Tagged::Dm { to, cid, body } => {
            validate_user(to)?;
            check_cid(cid)?;
            check_body(body)
        }
        Tagged::History {
            room,
            before,
            limit,
        } => {
            black_box(before);
            validate_room(room)?;
            check_limit(*limit)
        }
    }
}

fn check_flat(f: &Flat) -> Result<(), &'static str> {
    let room = || f.room.as_deref().ok_or("room").and_then(validate_room);
    match &*f.ty {
        "join" | "leave" => room(),
        "send" => {
            room()?;
            check_cid(f.cid.as_deref().ok_or("cid")?)?;
            check_body(f.body.as_deref().ok_or("body")?)
        }
        "dm" => {
            validate_user(f.to.as_deref().ok_or("to")?)?;
            check_cid(f.cid.as_deref().ok_or("cid")?)?;
            check_body(f.body.as_deref().ok_or("body")?)
        }
        "history" => {
            room()?;
            black_box(f.before);
            check_limit(f.limit)
        }
        "resume" => {
            room()?;
            f.after.map(|_| ()).ok_or("after")
        }
        _ => Err("type"),
    }
}

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let send = |body: String| serde_json::json!({"type": "send", "room": "general", "cid": "c-000123", "body": body});
    vec![
        (
            "join",
            serde_json::json!({"type": "join", "room": "general"}),
        ),
        ("send_100B", send(chat_text(100, true))),
        ("send_4KiB", send(chat_text(4096, true))),
        (
            "history",
            serde_json::json!({"type": "history", "room": "general", "before": 1234, "limit": 50}),
        ),
        (
            "resume",
            serde_json::json!({"type": "resume", "room": "general", "after": 98765}),
        ),
    ]
    .into_iter()
    .map(|(name, v)| (name, serde_json::to_vec(&v).unwrap()))
    .collect()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("json/decode");
    let mut decoder = Decoder::default();
    for (name, input) in inputs() {
        group.throughput(Throughput::Bytes(input.len() as u64));
        // All three agree on the input.
        let mut copy = input.clone();
        let op = decoder.decode(&mut copy).unwrap();
        let tagged: Tagged = serde_json::from_slice(&input).unwrap();
        check_tagged(&tagged).unwrap();
        let flat: Flat = serde_json::from_slice(&input).unwrap();
        check_flat(&flat).unwrap();
        if let (ClientOp::Send { body, .. }, Some(b)) = (&op, &flat.body) {
            assert_eq!(*body, &**b);
        }

        // simd-json unescapes in place, so each run needs its own copy of the input (made
        // outside the timing; in the server the frame payload is that copy).
        group.bench_function(BenchmarkId::new("ours_simd_json", name), |b| {
            b.iter_batched_ref(
                || input.clone(),
                |buf| {
                    black_box(decoder.decode(buf).unwrap());
                },
                BatchSize::NumIterations(256),
            )
        });
        group.bench_function(BenchmarkId::new("serde_json_tagged_enum", name), |b| {
            b.iter(|| {
                let t: Tagged = serde_json::from_slice(black_box(&input)).unwrap();
                check_tagged(&t).unwrap();
                black_box(t)
            })
        });
        group.bench_function(BenchmarkId::new("serde_json_flat_struct", name), |b| {
            b.iter(|| {
                let f: Flat = serde_json::from_slice(black_box(&input)).unwrap();
                check_flat(&f).unwrap();
                black_box(f)
            })
        });
    }
    group.finish();
}

#[derive(Serialize)]
struct MsgOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
    seq: u64,
    id: &'a str,
    from: &'a str,
    ts: u64,
    body: &'a str,
    cid: &'a str,
}

/// The `msg` both the encode and the decode cases use, around `body`.
fn sample_msg(body: &str) -> Msg<'_> {
    Msg {
        room: "general",
        seq: 123_456,
        id: "5f3a9c0e12d4b6a8-1-1e240",
        from: "alice",
        ts: 1_764_000_000_000,
        body,
        cid: "c-000123",
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("json/encode_msg");
    for (size, escapes) in [(100, true), (4096, true), (4096, false)] {
        let body = chat_text(size, escapes);
        let msg = sample_msg(&body);
        let out = MsgOut {
            ty: "msg",
            room: msg.room,
            seq: msg.seq,
            id: msg.id,
            from: msg.from,
            ts: msg.ts,
            body: msg.body,
            cid: msg.cid,
        };
        let mut ours = BytesMut::new();
        msg.encode(&mut ours);
        let theirs = serde_json::to_vec(&out).unwrap();
        let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
        assert_eq!(parse(&ours), parse(&theirs), "same JSON value");
        group.throughput(Throughput::Bytes(ours.len() as u64));
        let label = format!(
            "body_{}_{}",
            size_label(size),
            if escapes { "escapes" } else { "plain" }
        );

        group.bench_function(BenchmarkId::new("ours_msg_encode", &label), |b| {
            b.iter(|| {
                ours.clear();
                black_box(&msg).encode(&mut ours);
                black_box(&ours);
            })
        });
        let mut buf = Vec::new();
        group.bench_function(BenchmarkId::new("serde_json_to_writer", &label), |b| {
            b.iter(|| {
                buf.clear();
                serde_json::to_writer(&mut buf, black_box(&out)).unwrap();
                black_box(&buf);
            })
        });
    }
    group.finish();
}

/// `SerdeHead` (the cluster bus's routing head) and `SerdeRow` (the persister's row): the
/// `serde_json` derives `MsgView` stands in for, shared with wire's test of it.
#[path = "../../wire/tests/support/serde_msg.rs"]
mod serde_msg;
use serde_msg::{SerdeHead, SerdeRow};

type Head<'a> = (Cow<'a, str>, u64, Cow<'a, str>, u64);

fn view_head(json: &[u8]) -> Option<Head<'_>> {
    let m = MsgView::parse(json).ok()?;
    Some((
        m.text(Field::Room).ok()?,
        m.u64(Field::Seq).ok()?,
        m.text(Field::Id).ok()?,
        m.u64_or(Field::Ts, 0).ok()?,
    ))
}

fn view_row(json: &[u8]) -> Option<(Head<'_>, Cow<'_, str>, Cow<'_, str>)> {
    let m = MsgView::parse(json).ok()?;
    m.text(Field::Type).ok()?;
    m.opt_text(Field::Cid).ok()?;
    let head = (
        m.text(Field::Room).ok()?,
        m.i64(Field::Seq).ok()? as u64,
        m.text(Field::Id).ok()?,
        m.i64(Field::Ts).ok()? as u64,
    );
    Some((head, m.text(Field::From).ok()?, m.text(Field::Body).ok()?))
}

/// What the load generator takes from a server message: type, room, seq, cid (raw).
type Fields<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8]);

fn walk_fields(json: &[u8]) -> Option<Fields<'_>> {
    let mut got: Fields = (b"", b"", b"", b"");
    scan::walk(json, |k, v| match (k, v) {
        (b"type", Val::Str(v)) => got.0 = v,
        (b"room", Val::Str(v)) => got.1 = v,
        (b"seq", Val::Raw(v)) => got.2 = v,
        (b"cid", Val::Str(v)) => got.3 = v,
        _ => {}
    })?;
    Some(got)
}

fn decode_msg(c: &mut Criterion) {
    let mut group = c.benchmark_group("json/decode_msg");
    for size in [100, 4096] {
        let body = chat_text(size, true);
        let msg = sample_msg(&body);
        let mut json = BytesMut::new();
        msg.encode(&mut json);
        let json = json.to_vec();
        // Both read the same values.
        let ours = view_head(&json).unwrap();
        let theirs: SerdeHead = serde_json::from_slice(&json).unwrap();
        assert_eq!(ours, (theirs.room, theirs.seq, theirs.id, theirs.ts));
        let row = view_row(&json).unwrap();
        let theirs: SerdeRow = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            (&*row.2, &*theirs.body, &*theirs.kind),
            (&*body, &*body, "msg")
        );
        assert_eq!(walk_fields(&json).unwrap().2, b"123456");
        group.throughput(Throughput::Bytes(json.len() as u64));
        let label = format!("body_{}_escapes", size_label(size));

        group.bench_function(BenchmarkId::new("ours_msg_view_head", &label), |b| {
            b.iter(|| black_box(view_head(black_box(&json)).unwrap()))
        });
        group.bench_function(BenchmarkId::new("serde_json_head", &label), |b| {
            b.iter(|| {
                let h: SerdeHead = serde_json::from_slice(black_box(&json)).unwrap();
                black_box((h.room, h.seq, h.id, h.ts))
            })
        });
        group.bench_function(BenchmarkId::new("ours_msg_view_row", &label), |b| {
            b.iter(|| black_box(view_row(black_box(&json)).unwrap()))
        });
        group.bench_function(BenchmarkId::new("serde_json_row", &label), |b| {
            b.iter(|| {
                let r: SerdeRow = serde_json::from_slice(black_box(&json)).unwrap();
                black_box((r.kind, r.room, r.seq, r.id, r.from, r.ts, r.body, r.cid))
            })
        });
        group.bench_function(BenchmarkId::new("ours_scan_walk_lenient", &label), |b| {
            b.iter(|| black_box(walk_fields(black_box(&json)).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode, decode_msg);
criterion_main!(benches);
