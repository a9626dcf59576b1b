//! RFC 6455 conformance, limits and throughput (sections 5.2 and 10.4): messages at and over
//! the 64 KiB limit, huge length headers, pipelined requests, many round trips and small writes
//! (Autobahn group 9). Shared notes on the suite: `rfc6455_handshake.rs`; the raw-TCP client:
//! `support/raw_ws.rs`.

mod support;

use std::io::Write;
use support::raw_ws::*;
use support::Server;

// ---------------------------------------------------------------------------------------------
// Group 9: limits and throughput
// ---------------------------------------------------------------------------------------------

/// 9.1/9.3: a message of exactly the limit, in one frame and in fragments of 64 B to 64 KiB.
#[test]
fn g9_message_at_the_limit_is_accepted() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.1 64 KiB in one frame");
    ws.send(&text(&join_len("max", LIMIT)));
    ws.expect_joined("max");
    // 1300 bytes: Autobahn 10.1.1's auto-fragmentation size.
    for size in [64, 256, 1024, 1300, 4096, 16384, LIMIT] {
        ws.step(format!(
            "9.3/10.1.1 64 KiB message in fragments of {size} bytes"
        ));
        let room = format!("frag{size}");
        ws.send(&fragments_of(&join_len(&room, LIMIT), size).concat());
        ws.expect_joined(&room);
    }
    ws.close_normally();
}

/// A single frame over the limit closes with 1009; the same for a frame header announcing 1 GiB
/// with no payload behind it (the frame is refused from its header, not buffered).
#[test]
fn g9_frame_over_the_limit_closes_1009() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.x text frame of 65537 bytes");
    write_expecting_close(&mut ws, text(&join_len("too-big", LIMIT + 1)), 1009);

    let mut ws = Ws::connect(&server, "9.x header of a 1 GiB text frame, no payload");
    ws.send(&text_header_of_length(1 << 30));
    ws.expect_fail(1009);

    let mut ws = Ws::connect(&server, "9.x fragment over the limit");
    ws.send(&frame(TEXT, b"{\"type\":"));
    write_expecting_close(&mut ws, frame(FIN | CONT, &vec![b' '; LIMIT + 1]), 1009);

    // A 64-bit length with the most significant bit set is invalid (RFC 6455 5.2), and huge.
    let mut ws = Ws::connect(&server, "9.x 64-bit length with the top bit set");
    ws.send(&text_header_of_length(1 << 63));
    ws.expect_fail_one_of(&[1002, 1009], &[]);
}

/// Writes `bytes` while expecting the close `code`: from another thread, ignoring errors, as
/// the server may close before reading them all.
fn write_expecting_close(ws: &mut Ws, bytes: Vec<u8>, code: u16) {
    let mut writer = ws.stream.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    });
    ws.expect_fail(code);
    t.join().unwrap();
}

/// The header of a masked text frame announcing `len` bytes (64-bit length), no payload.
fn text_header_of_length(len: u64) -> Vec<u8> {
    let mut header = vec![FIN | TEXT, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&next_mask());
    header
}

/// A fragmented message over the limit whose frames are each under it is answered with a
/// `too_large` error; the connection stays usable.
#[test]
fn g9_fragmented_message_over_the_limit_is_too_large() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.x fragmented message of 65537 bytes");
    let msg = join_len("over", LIMIT + 1);
    ws.send(&fragments_at(&msg, &[LIMIT / 2, LIMIT]).concat());
    ws.expect_error("too_large");

    ws.step("9.x request after a too_large message");
    ws.send(&text(&join("after-too-large")));
    ws.expect_joined("after-too-large");

    ws.step("9.x fragmented message of 200 KiB with a ping in between");
    let msg = join_len("way-over", 200 * 1024);
    let mut frames = fragments_of(&msg, 50_000);
    frames.insert(2, frame(FIN | PING, b"still alive"));
    ws.send(&frames.concat());
    ws.expect_pong(b"still alive");
    ws.expect_error("too_large");

    ws.step("9.x fragmented message at the limit after too_large messages");
    ws.send(&fragments_at(&join_len("at-limit", LIMIT), &[1000]).concat());
    ws.expect_joined("at-limit");
    ws.close_normally();
}

/// Accepts a reply to one of the bulk requests: `joined`, or `rate_limited` if the server limits
/// this connection's request rate. Returns the room of a `joined`.
fn bulk_reply(ws: &mut Ws) -> Option<String> {
    let v = ws.expect_json("a reply");
    match v["type"].as_str() {
        Some("joined") => Some(v["room"].as_str().expect("room").to_owned()),
        Some("error") if v["code"] == "rate_limited" => None,
        _ => panic!("{}: unexpected reply {v}", ws.case),
    }
}

/// 1000 requests pipelined in one write all get a reply.
#[test]
fn g9_pipelined_requests_all_answered() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.x 1000 requests in one write");
    let n = 1000;
    let batch: Vec<u8> = (0..n)
        .flat_map(|i| text(&join(&format!("pipe{i}"))))
        .collect();
    ws.send(&batch);
    let mut joined = std::collections::HashSet::new();
    let mut limited = 0;
    for _ in 0..n {
        match bulk_reply(&mut ws) {
            Some(room) => assert!(
                joined.insert(room.clone()),
                "{}: two replies for {room}",
                ws.case
            ),
            None => limited += 1,
        }
    }
    assert!(joined.iter().all(|r| r.starts_with("pipe")), "{}", ws.case);
    assert_eq!(joined.len() + limited, n, "{}", ws.case);
    ws.close_normally();
}

/// 9.7-like: 1000 round trips of requests of varying size on one connection.
#[test]
fn g9_thousand_round_trips() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.7 1000 round trips");
    for i in 0..1000usize {
        let room = format!("rt{i}");
        let len = 40 + (i * 61) % 4000;
        ws.send(&text(&join_len(&room, len)));
        if let Some(got) = bulk_reply(&mut ws) {
            assert_eq!(got, room, "{}: round trip {i}", ws.case);
        }
    }
    ws.close_normally();
}

/// 9.5-like: one message written in many small TCP writes.
#[test]
fn g9_message_in_many_small_writes() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "9.5 small request in 1-byte writes");
    ws.send_chopped(&text(&join_len("bytes", 300)), 1, 1);
    ws.expect_joined("bytes");
    for chop in [64, 128, 256, 1024] {
        ws.step(format!("9.5 64 KiB message in {chop}-byte writes"));
        let room = format!("chop{chop}");
        ws.send_chopped(&text(&join_len(&room, LIMIT)), chop, 32);
        ws.expect_joined(&room);
    }
    ws.close_normally();
}
