//! RFC 6455 conformance, base framing (section 5.2-5.6): payload length encodings, binary
//! messages (not part of chat v1), ping and pong, reserved bits, reserved opcodes, the client's
//! mask, and bad requests in valid frames (Autobahn groups 1-4 and 10). Shared notes on the
//! suite: `rfc6455_handshake.rs`; the raw-TCP client: `support/raw_ws.rs`.

mod support;

use std::time::Duration;
use support::raw_ws::*;
use support::Server;

// ---------------------------------------------------------------------------------------------
// Group 1: framing
// ---------------------------------------------------------------------------------------------

/// 1.1.1-1.1.6: text messages with every length encoding boundary, up to the 64 KiB limit.
#[test]
fn g1_text_payload_lengths() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "1.1.1 empty text");
    // An empty text message is valid WebSocket but not a JSON request.
    ws.send(&text(b""));
    ws.expect_error("bad_request");
    for len in [125, 126, 127, 128, 65535, LIMIT] {
        ws.step(format!("1.1.x text of {len} bytes"));
        let room = format!("len{len}");
        ws.send(&text(&join_len(&room, len)));
        ws.expect_joined(&room);
    }
    ws.close_normally();
}

/// 1.1.7-1.1.8: 65535- and 65536-byte text messages written in 997-byte pieces.
#[test]
fn g1_text_written_in_chops() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "1.1.7");
    for len in [65535, LIMIT] {
        ws.step(format!("1.1.7/8 text of {len} bytes in 997-byte writes"));
        let room = format!("chop{len}");
        ws.send_chopped(&text(&join_len(&room, len)), 997, 16);
        ws.expect_joined(&room);
    }
    ws.close_normally();
}

/// 1.2.x: binary messages are not part of chat v1: close 1003 (PROTOCOL.md), whatever the size.
#[test]
fn g1_binary_messages_close_1003() {
    let server = Server::start(&[]);
    for len in [0usize, 125, 126, 127, 128, 65535, LIMIT] {
        let mut ws = Ws::connect(&server, &format!("1.2.x binary of {len} bytes"));
        let payload: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
        ws.send(&frame(FIN | BINARY, &payload));
        ws.expect_fail(1003);
    }
    // A valid request first: it is answered, then the binary message closes the connection.
    let mut ws = Ws::connect(&server, "1.2.x binary after a request");
    ws.send(&[text(&join("b1")), frame(FIN | BINARY, b"\xfe\xff")].concat());
    ws.expect_fail_after(1003, &[("joined", "b1")]);
    // A fragmented binary message.
    let mut ws = Ws::connect(&server, "1.2.x fragmented binary");
    ws.send(&[frame(BINARY, b"\x00\x01"), frame(FIN | CONT, b"\x02\x03")].concat());
    ws.expect_fail(1003);
}

// ---------------------------------------------------------------------------------------------
// Group 2: ping and pong
// ---------------------------------------------------------------------------------------------

/// 2.1-2.4: a ping is answered with a pong carrying the same payload (empty, text, binary, 125
/// bytes).
#[test]
fn g2_ping_gets_identical_pong() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "2.1 empty ping");
    let payloads: [(&str, Vec<u8>); 4] = [
        ("2.1 empty ping", Vec::new()),
        ("2.2 ping with text payload", b"Hello, world!".to_vec()),
        (
            "2.3 ping with binary payload",
            vec![0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff],
        ),
        ("2.4 ping with 125-byte payload", vec![0xfe; 125]),
    ];
    for (case, payload) in &payloads {
        ws.step(*case);
        ws.send(&frame(FIN | PING, payload));
        ws.expect_pong(payload);
    }
    // The connection still serves requests.
    ws.step("2.x request after pings");
    ws.send(&text(&join("after-pings")));
    ws.expect_joined("after-pings");
    ws.close_normally();
}

/// 2.5: a ping over 125 bytes is a protocol error (control frames are at most 125 bytes).
#[test]
fn g2_ping_of_126_bytes_closes_1002() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "2.5 ping of 126 bytes");
    ws.send(&frame(FIN | PING, &[0xfe; 126]));
    ws.expect_fail(1002);
}

/// 2.6: a 125-byte ping written one byte at a time.
#[test]
fn g2_ping_written_in_chops() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "2.6 125-byte ping in 1-byte writes");
    let payload: Vec<u8> = (0..125u8).collect();
    ws.send_chopped(&frame(FIN | PING, &payload), 1, 1);
    ws.expect_pong(&payload);
    ws.close_normally();
}

/// 2.7-2.9: an unsolicited pong is ignored: no reply, no close; a ping after it is answered.
#[test]
fn g2_unsolicited_pong_is_ignored() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "2.7 unsolicited empty pong");
    ws.send(&frame(FIN | PONG, b""));
    ws.send(&text(&join("p1")));
    ws.expect_joined("p1");

    ws.step("2.8 unsolicited pong with payload");
    ws.send(&frame(FIN | PONG, b"unsolicited pong payload"));
    ws.send(&text(&join("p2")));
    ws.expect_joined("p2");

    ws.step("2.9 unsolicited pong, then ping");
    ws.send(
        &[
            frame(FIN | PONG, b"unsolicited pong payload"),
            frame(FIN | PING, b"ping payload"),
        ]
        .concat(),
    );
    ws.expect_pong(b"ping payload");
    ws.close_normally();
}

/// 2.10-2.11: ten pings in one write, and ten pings in separate small writes, get ten pongs in
/// order.
#[test]
fn g2_ten_pings_get_ten_pongs() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "2.10 ten pings in one write");
    let payloads: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("payload-{i}").into_bytes())
        .collect();
    let batch: Vec<u8> = payloads.iter().flat_map(|p| frame(FIN | PING, p)).collect();
    ws.send(&batch);
    for p in &payloads {
        ws.expect_pong(p);
    }
    ws.step("2.11 ten pings in 1-byte writes");
    for p in &payloads {
        ws.send_chopped(&frame(FIN | PING, p), 1, 4);
    }
    for p in &payloads {
        ws.expect_pong(p);
    }
    ws.close_normally();
}

// ---------------------------------------------------------------------------------------------
// Group 3: reserved bits
// ---------------------------------------------------------------------------------------------

/// 3.1-3.7: a reserved bit without a negotiated extension is a protocol error, on any frame type.
/// Where a valid request comes first its reply may arrive before the close; the ping sent after
/// the bad frame must not be answered.
#[test]
fn g3_reserved_bits_close_1002() {
    let server = Server::start(&[]);
    let ping = || frame(FIN | PING, b"");

    let mut ws = Ws::connect(&server, "3.1 RSV1 on a text frame");
    ws.send(&frame(FIN | RSV1 | TEXT, &join("r31")));
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "3.2 text, RSV2 text, ping");
    ws.send(
        &[
            text(&join("ok32")),
            frame(FIN | RSV2 | TEXT, &join("r32")),
            ping(),
        ]
        .concat(),
    );
    ws.expect_fail_after(1002, &[("joined", "ok32")]);

    let mut ws = Ws::connect(&server, "3.3 text, RSV1+RSV2 text, ping, frame by frame");
    let frames = [
        text(&join("ok33")),
        frame(FIN | RSV1 | RSV2 | TEXT, &join("r33")),
        ping(),
    ];
    ws.send_each(&frames, Duration::from_millis(20));
    ws.expect_fail_after(1002, &[("joined", "ok33")]);

    let mut ws = Ws::connect(&server, "3.4 text, RSV1+RSV2 text, ping, in 1-byte writes");
    ws.send_chopped(&frames.concat(), 1, 8);
    ws.expect_fail_after(1002, &[("joined", "ok33")]);

    let mut ws = Ws::connect(&server, "3.5 RSV3 on a binary frame");
    ws.send(&frame(FIN | RSV3 | BINARY, b"\x00\xff\xfe\xfd"));
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "3.6 RSV1+RSV3 on a ping");
    ws.send(&frame(FIN | RSV1 | RSV3 | PING, b"ping"));
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "3.7 RSV2+RSV3 on a close");
    ws.send(&frame(FIN | RSV2 | RSV3 | CLOSE, &1000u16.to_be_bytes()));
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "3.x all RSV bits on a continuation");
    let msg = join("r3x");
    ws.send(
        &[
            frame(TEXT, &msg[..10]),
            frame(FIN | RSV1 | RSV2 | RSV3 | CONT, &msg[10..]),
        ]
        .concat(),
    );
    ws.expect_fail(1002);
}

// ---------------------------------------------------------------------------------------------
// Group 4: opcodes
// ---------------------------------------------------------------------------------------------

/// 4.1.1-4.2.5: reserved data opcodes 3-7 and control opcodes 11-15 are protocol errors, alone,
/// with a payload, after a valid request and before a ping, and written in small pieces.
#[test]
fn g4_reserved_opcodes_close_1002() {
    let server = Server::start(&[]);
    for op in [3u8, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
        let mut ws = Ws::connect(&server, &format!("4.x opcode {op} alone"));
        ws.send(&frame(FIN | op, b""));
        ws.expect_fail(1002);

        let room = format!("op{op}");
        let bytes = [
            text(&join(&room)),
            frame(FIN | op, b"reserved opcode payload"),
            frame(FIN | PING, b""),
        ]
        .concat();
        let mut ws = Ws::connect(
            &server,
            &format!("4.x request, opcode {op} with payload, ping"),
        );
        ws.send(&bytes);
        ws.expect_fail_after(1002, &[("joined", &room)]);

        let mut ws = Ws::connect(
            &server,
            &format!("4.x request, opcode {op}, ping, in 1-byte writes"),
        );
        ws.send_chopped(&bytes, 1, 8);
        ws.expect_fail_after(1002, &[("joined", &room)]);
    }
}

// ---------------------------------------------------------------------------------------------
// Group 10 and miscellany
// ---------------------------------------------------------------------------------------------

/// A client frame without a mask is a protocol error (RFC 6455 5.1).
#[test]
fn g10_unmasked_client_frames_close_1002() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "10.x unmasked text frame");
    ws.send(&unmasked_frame(FIN | TEXT, &join("unmasked")));
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "10.x unmasked ping after a request");
    ws.send(&[text(&join("masked")), unmasked_frame(FIN | PING, b"x")].concat());
    ws.expect_fail_after(1002, &[("joined", "masked")]);

    let mut ws = Ws::connect(&server, "10.x unmasked close");
    ws.send(&unmasked_frame(FIN | CLOSE, &1000u16.to_be_bytes()));
    ws.expect_fail(1002);
}

/// Malformed JSON in a valid text frame is answered with an `error`, not a dropped connection
/// (PROTOCOL.md).
#[test]
fn g10_bad_request_keeps_the_connection() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "bad JSON");
    for bad in [
        &b"not json"[..],
        b"{",
        b"[]",
        b"42",
        b"{\"type\":42}",
        b"{\"type\":\"nope\"}",
        b"{\"room\":\"r\"}",
    ] {
        ws.step(format!("bad request {:?}", String::from_utf8_lossy(bad)));
        ws.send(&text(bad));
        ws.expect_error("bad_request");
    }
    ws.step("request after bad requests");
    ws.send(&text(&join("fine")));
    ws.expect_joined("fine");
    ws.close_normally();
}
