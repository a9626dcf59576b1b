//! permessage-deflate (RFC 7692) over raw sockets, in the shape of Autobahn's groups 12 and 13:
//! compressed messages of many sizes and fragmentations (12), every parameter combination a
//! client may offer (13), control frames between compressed fragments, the limits (a bomb
//! closes with 1009), and the server's half of the bargain: one compressed frame per message
//! shared by every member on a core.
//!
//! The client side compresses with flate2 as a browser does (context takeover unless it said
//! otherwise); what the server sends is inflated here with flate2 and the window the server
//! promised, not with the server's own inflater.

mod support;

use chat_wire::frame::{parse_frame_ext, Frame, OpCode, Role};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use support::raw_ws::*;
use support::Server;

/// What Chrome and Firefox send.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A client's compressor: a message is DEFLATE with a sync flush, the tail taken off, in
/// masked frames of at most `fragment` payload bytes (0: one frame), RSV1 on the first.
struct ClientDeflate {
    c: Compress,
    takeover: bool,
}

impl ClientDeflate {
    fn new(window_bits: u8, takeover: bool) -> Self {
        let c = Compress::new_with_window_bits(Compression::default(), false, window_bits);
        ClientDeflate { c, takeover }
    }

    fn frames(&mut self, text: &[u8], fragment: usize) -> Vec<Vec<u8>> {
        if !self.takeover {
            self.c.reset();
        }
        let mut out = Vec::with_capacity(text.len() + 128);
        self.c
            .compress_vec(text, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "sync flushed");
        out.truncate(out.len() - 4);
        let size = if fragment == 0 {
            out.len().max(1)
        } else {
            fragment
        };
        let parts: Vec<&[u8]> = out.chunks(size).collect();
        let last = parts.len() - 1;
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let fin = if i == last { FIN } else { 0 };
                let b0 = if i == 0 {
                    fin | RSV1 | TEXT
                } else {
                    fin | CONT
                };
                frame(b0, p)
            })
            .collect()
    }
}

/// A server frame read as it came, for the tests that inflate it themselves.
fn raw_frame(ws: &mut Ws) -> Frame {
    loop {
        match parse_frame_ext(&mut ws.buf, Role::Client, 1 << 24, true) {
            Ok(Some(f)) if f.opcode == OpCode::Ping => continue,
            Ok(Some(f)) => return f,
            Ok(None) => {
                fill(&mut ws.stream, &mut ws.buf).unwrap_or_else(|e| panic!("{}: {e}", ws.case))
            }
            Err(e) => panic!("{}: {e}", ws.case),
        }
    }
}

/// The next compressed frame, skipping the plain events before it (`online` of members who
/// joined after this one, `ack`s): a plain `msg` fails the test.
fn next_compressed(ws: &mut Ws) -> Frame {
    loop {
        let f = raw_frame(ws);
        if f.rsv1 {
            return f;
        }
        let v: Value = serde_json::from_slice(&f.payload).unwrap();
        assert_ne!(v["type"], "msg", "{}: a plain msg: {v}", ws.case);
    }
}

/// The `ack` and the `msg` of one's own send, in whichever order they come, skipping events.
fn ack_and_msg(ws: &mut Ws, body: &str) -> (Value, Value) {
    let (mut ack, mut msg) = (None, None);
    while ack.is_none() || msg.is_none() {
        let v = ws.expect_json("ack and msg");
        match v["type"].as_str() {
            Some("ack") => ack = Some(v),
            Some("msg") => msg = Some(v),
            Some("online" | "offline") => {}
            _ => panic!("{}: unexpected {v}", ws.case),
        }
    }
    let (ack, msg) = (ack.unwrap(), msg.unwrap());
    assert_eq!(msg["body"], body, "{}", ws.case);
    assert_eq!(msg["seq"], ack["seq"], "{}", ws.case);
    (ack, msg)
}

/// Inflates one server message with a window of `bits`: fails if the server used a larger one.
fn inflate(d: &mut Decompress, payload: &[u8]) -> Vec<u8> {
    let mut data = payload.to_vec();
    data.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(64 * 1024);
    d.decompress_vec(&data, &mut out, FlushDecompress::Sync)
        .expect("the server's frame inflates within the window it promised");
    out
}

/// Chat-like text of about `len` bytes.
fn body(len: usize, salt: usize) -> String {
    let words = [
        "hello", "are", "you", "coming", "to", "the", "standup", "today", "yes", "in", "five",
        "minutes", "room", "link", "thanks", "see", "you", "there", "ok", "great",
    ];
    let mut s = format!("#{salt} ");
    let mut i = salt;
    while s.len() < len {
        s.push_str(words[(i * 7 + i / 5) % words.len()]);
        s.push(' ');
        i += 1;
    }
    s.truncate(len);
    s
}

fn send_json(room: &str, cid: &str, body: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "send", "room": room, "cid": cid, "body": body})).unwrap()
}

fn connect(server: &Server, user: &str, offer: Option<&str>) -> Ws {
    Ws::connect_offering(server.addr, user, user, &[], offer)
}

fn expect_msg(ws: &mut Ws, body: &str) -> Value {
    let mut m = ws.expect_json("msg");
    while m["type"] == "online" || m["type"] == "offline" {
        m = ws.expect_json("msg");
    }
    assert_eq!(m["type"], "msg", "{}: {m}", ws.case);
    assert_eq!(m["body"], body, "{}", ws.case);
    m
}

fn metric(server: &Server, name: &str) -> u64 {
    let resp = http(server.addr, &http_request("/metrics", &[]));
    support::client::series_sum(&String::from_utf8(resp.body).unwrap(), name)
}

#[test]
fn group_12_compressed_sends_of_every_size_and_fragmentation() {
    let server = Server::start(&[]);
    let mut alice = connect(&server, "alice", Some(BROWSER_OFFER));
    let mut bob = connect(&server, "bob", Some(BROWSER_OFFER));
    let mut carol = connect(&server, "carol", None);
    assert_eq!(
        alice.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );
    assert_eq!(carol.extensions, None);
    for ws in [&mut alice, &mut bob, &mut carol] {
        ws.send(&text(&join("r12")));
        ws.expect_joined("r12");
    }
    let mut deflate = ClientDeflate::new(15, true);
    let mut n = 0;
    for size in [16, 64, 256, 1024, 4096, 16_000] {
        for fragment in [0, 64, 1024] {
            n += 1;
            let b = body(size, n);
            alice.step(format!("12: body {size} B, fragments of {fragment}"));
            for f in deflate.frames(&send_json("r12", &format!("c{n}"), &b), fragment) {
                alice.send(&f);
            }
            let (_, m) = ack_and_msg(&mut alice, &b);
            let compressed_before = bob.compressed_frames;
            bob.step(alice.case.clone());
            expect_msg(&mut bob, &b);
            // Under 128 bytes of payload the server sends plain frames (it may, per message).
            let big = m.to_string().len() >= 128;
            assert_eq!(
                bob.compressed_frames,
                compressed_before + big as usize,
                "{}",
                bob.case
            );
            carol.step(alice.case.clone());
            expect_msg(&mut carol, &b);
        }
    }
    assert_eq!(
        carol.compressed_frames, 0,
        "no compressed frame to a plain client"
    );
    assert!(bob.compressed_bytes > 0);
}

#[test]
fn group_13_every_parameter_combination() {
    let server = Server::start(&[]);
    // (offer, the server window the response must name, client window, client takeover)
    let cases: &[(&str, Option<u8>, u8, bool)] = &[
        ("permessage-deflate", None, 15, true),
        ("permessage-deflate; client_no_context_takeover", None, 15, false),
        ("permessage-deflate; server_no_context_takeover", None, 15, true),
        ("permessage-deflate; client_max_window_bits", None, 15, true),
        ("permessage-deflate; client_max_window_bits=9", None, 9, true),
        ("permessage-deflate; server_max_window_bits=9", Some(9), 15, true),
        ("permessage-deflate; server_max_window_bits=12; client_max_window_bits=10", Some(12), 10, true),
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=9",
            Some(9),
            9,
            false,
        ),
        // The first offer is declined (8 cannot be kept to), the second taken.
        ("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=10", Some(10), 15, true),
    ];
    for (i, (offer, server_bits, client_bits, takeover)) in cases.iter().enumerate() {
        let user = format!("u{i}");
        let mut ws = connect(&server, &user, Some(offer));
        ws.step(format!("13: {offer}"));
        let ext = ws
            .extensions
            .clone()
            .unwrap_or_else(|| panic!("{}: declined", ws.case));
        assert!(
            ext.starts_with("permessage-deflate; server_no_context_takeover"),
            "{ext}"
        );
        assert_eq!(
            ext.contains("client_no_context_takeover"),
            !takeover,
            "{}: {ext}",
            ws.case
        );
        let named = ext
            .split("server_max_window_bits=")
            .nth(1)
            .map(|v| v.parse::<u8>().unwrap());
        assert_eq!(named, *server_bits, "{}: {ext}", ws.case);
        let room = format!("r13-{i}");
        ws.send(&text(&join(&room)));
        ws.expect_joined(&room);
        let mut deflate = ClientDeflate::new(*client_bits, *takeover);
        let mut d = Decompress::new_with_window_bits(false, server_bits.unwrap_or(15));
        for (k, size) in [32, 300, 2000, 8000, 300, 16_000].into_iter().enumerate() {
            let b = body(size, k);
            for f in deflate.frames(&send_json(&room, &format!("c{k}"), &b), 0) {
                ws.send(&f);
            }
            // The ack is small and goes plain; the msg comes compressed with the promised window.
            let msg = next_compressed(&mut ws);
            assert!(msg.fin, "{}: msg of {size} B in one frame", ws.case);
            let v: Value = serde_json::from_slice(&inflate(&mut d, &msg.payload)).unwrap();
            assert_eq!(v["body"], b, "{}", ws.case);
        }
    }
    // Offers the server must decline: the connection opens uncompressed.
    for offer in [
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "x-webkit-deflate-frame",
    ] {
        let ws = connect(&server, "declined", Some(offer));
        assert_eq!(ws.extensions, None, "{offer}");
    }
}

#[test]
fn control_frames_between_compressed_fragments() {
    let server = Server::start(&[]);
    let mut ws = connect(&server, "alice", Some(BROWSER_OFFER));
    ws.send(&text(&join("ctl")));
    ws.expect_joined("ctl");
    let b = body(3000, 1);
    let frames = ClientDeflate::new(15, true).frames(&send_json("ctl", "c1", &b), 40);
    assert!(frames.len() >= 3, "{} fragments", frames.len());
    for (i, f) in frames.iter().enumerate() {
        ws.send(f);
        if i + 1 < frames.len() {
            ws.send(&frame(FIN | PING, format!("p{i}").as_bytes()));
        }
    }
    for i in 0..frames.len() - 1 {
        ws.expect_pong(format!("p{i}").as_bytes());
    }
    ack_and_msg(&mut ws, &b);
}

#[test]
fn limits_bombs_and_malformed_compression_close_the_connection() {
    let server = Server::start(&[]);
    // 10 MiB of spaces in a JSON string compress to about 10 KiB: far past the 64 KiB limit.
    let bomb = send_json("r", "c", &" ".repeat(10 << 20));
    for fragment in [0, 1000] {
        let mut ws = connect(&server, "alice", Some(BROWSER_OFFER));
        ws.step(format!("bomb in fragments of {fragment}"));
        let frames = ClientDeflate::new(15, true).frames(&bomb, fragment);
        let wire: usize = frames.iter().map(Vec::len).sum();
        assert!(wire < LIMIT, "the bomb is small on the wire: {wire} B");
        for f in &frames {
            ws.send(f);
        }
        ws.expect_fail(1009);
    }
    // Compressed bytes alone over the limit (random text hardly compresses).
    let mut ws = connect(&server, "alice", Some(BROWSER_OFFER));
    ws.step("compressed size over the limit");
    let noise: String = (0..200_000u32)
        .map(|i| char::from(b'!' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 90))
        .collect();
    for f in ClientDeflate::new(15, true).frames(noise.as_bytes(), 16 * 1024) {
        if ws.stream.peer_addr().is_ok() {
            let _ = std::io::Write::write_all(&mut ws.stream, &f);
        }
    }
    ws.expect_fail(1009);
    // Not DEFLATE at all: invalid payload (1007).
    let mut ws = connect(&server, "alice", Some(BROWSER_OFFER));
    ws.step("garbage with RSV1");
    ws.send(&frame(FIN | RSV1 | TEXT, &[0xff, 0xfe, 0xfd, 0xfc]));
    ws.expect_fail(1007);
    // RSV1 on a control frame and on a continuation: protocol errors (1002).
    for (case, frames) in [
        ("compressed ping", vec![frame(FIN | RSV1 | PING, b"x")]),
        (
            "RSV1 on a continuation",
            vec![frame(TEXT, b"{\"ty"), frame(FIN | RSV1 | CONT, b"pe\":1}")],
        ),
    ] {
        let mut ws = connect(&server, "alice", Some(BROWSER_OFFER));
        ws.step(case);
        for f in &frames {
            ws.send(f);
        }
        ws.expect_fail(1002);
    }
    // And the server still serves.
    let mut ws = connect(&server, "alice", Some(BROWSER_OFFER));
    ws.send(&text(&join("after")));
    ws.expect_joined("after");
}

#[test]
fn one_compression_per_message_shared_by_every_member_on_a_core() {
    let server = Server::start_with_args(&["--listen", "127.0.0.1:0", "--threads", "1"]);
    let mut members: Vec<Ws> = (0..10)
        .map(|i| connect(&server, &format!("m{i}"), Some(BROWSER_OFFER)))
        .collect();
    let mut sender = connect(&server, "sender", None);
    for ws in members.iter_mut().chain(std::iter::once(&mut sender)) {
        ws.send(&text(&join("once")));
        ws.expect_joined("once");
    }
    let (made, sent) = (
        metric(&server, "chat_deflate_compressed_total"),
        metric(&server, "chat_deflate_frames_sent_total"),
    );
    let b = body(600, 7);
    sender.send(&text(&send_json("once", "c1", &b)));
    ack_and_msg(&mut sender, &b);
    let payloads: Vec<_> = members
        .iter_mut()
        .map(|ws| next_compressed(ws).payload)
        .collect();
    assert!(
        payloads.windows(2).all(|w| w[0] == w[1]),
        "the same bytes to everyone"
    );
    let v: Value =
        serde_json::from_slice(&inflate(&mut Decompress::new(false), &payloads[0])).unwrap();
    assert_eq!(v["body"], b);
    assert!(
        payloads[0].len() < b.len() / 2,
        "{} B for a {} B body",
        payloads[0].len(),
        b.len()
    );
    assert_eq!(metric(&server, "chat_deflate_compressed_total") - made, 1);
    assert_eq!(metric(&server, "chat_deflate_frames_sent_total") - sent, 10);
}

#[test]
fn deflate_off_answers_offers_uncompressed() {
    let server = Server::start(&["--deflate", "false"]);
    let mut ws = connect(&server, "alice", Some(BROWSER_OFFER));
    assert_eq!(ws.extensions, None);
    ws.send(&text(&join("off")));
    ws.expect_joined("off");
    let b = body(2000, 3);
    ws.send(&text(&send_json("off", "c1", &b)));
    ack_and_msg(&mut ws, &b);
    assert_eq!(ws.compressed_frames, 0);
    ws.send(&frame(FIN | RSV1 | TEXT, b"x"));
    ws.expect_fail(1002);
}
