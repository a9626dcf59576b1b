//! RFC 6455 conformance, fragmentation (section 5.4): control frames that must not be
//! fragmented, text messages in fragments written in every way, control frames between
//! fragments, and broken fragment sequences (Autobahn group 5). Shared notes on the suite:
//! `rfc6455_handshake.rs`; the raw-TCP client: `support/raw_ws.rs`.

mod support;

use std::time::Duration;
use support::raw_ws::*;
use support::Server;

// ---------------------------------------------------------------------------------------------
// Group 5: fragmentation
// ---------------------------------------------------------------------------------------------

/// 5.1-5.2: control frames must not be fragmented.
#[test]
fn g5_fragmented_control_frames_close_1002() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.1 ping in two fragments");
    ws.send(&[frame(PING, b"fragment1"), frame(FIN | CONT, b"fragment2")].concat());
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "5.2 pong in two fragments");
    ws.send(&[frame(PONG, b"fragment1"), frame(FIN | CONT, b"fragment2")].concat());
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "5.x close without FIN");
    ws.send(&frame(CLOSE, &1000u16.to_be_bytes()));
    ws.expect_fail(1002);
}

/// 5.3-5.5: a text message in two fragments, in one write, frame by frame, and in 1-byte writes.
#[test]
fn g5_text_in_two_fragments() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.3 two fragments in one write");
    let msg = join("f53");
    let frames = fragments_at(&msg, &[msg.len() / 2]);
    ws.send(&frames.concat());
    ws.expect_joined("f53");

    ws.step("5.4 two fragments, frame by frame");
    let msg = join("f54");
    ws.send_each(
        &fragments_at(&msg, &[msg.len() / 2]),
        Duration::from_millis(50),
    );
    ws.expect_joined("f54");

    ws.step("5.5 two fragments in 1-byte writes");
    let msg = join("f55");
    ws.send_chopped(&fragments_at(&msg, &[msg.len() / 2]).concat(), 1, 4);
    ws.expect_joined("f55");
    ws.close_normally();
}

/// 5.6-5.8: a ping between two fragments is answered at once; the message completes after it.
#[test]
fn g5_ping_between_fragments() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.6 fragment, ping, fragment in one write");
    let build = |room: &str| {
        let msg = join(room);
        let f = fragments_at(&msg, &[msg.len() / 2]);
        vec![f[0].clone(), frame(FIN | PING, b"pongme!"), f[1].clone()]
    };
    ws.send(&build("f56").concat());
    ws.expect_pong(b"pongme!");
    ws.expect_joined("f56");

    ws.step("5.7 fragment, ping, fragment, frame by frame");
    ws.send_each(&build("f57"), Duration::from_millis(50));
    ws.expect_pong(b"pongme!");
    ws.expect_joined("f57");

    ws.step("5.8 fragment, ping, fragment in 1-byte writes");
    ws.send_chopped(&build("f58").concat(), 1, 4);
    ws.expect_pong(b"pongme!");
    ws.expect_joined("f58");
    ws.close_normally();
}

/// 5.9-5.14: a continuation frame with nothing to continue is a protocol error; the text
/// message after it is not processed.
#[test]
fn g5_continuation_without_start_closes_1002() {
    let server = Server::start(&[]);
    for (fin, name) in [(FIN, "5.9-5.11 FIN=1"), (0, "5.12-5.14 FIN=0")] {
        let frames = [
            frame(fin | CONT, b"non-continuation payload"),
            text(&join("never")),
        ];
        let mut ws = Ws::connect(&server, &format!("{name} continuation first, one write"));
        ws.send(&frames.concat());
        ws.expect_fail(1002);

        let mut ws = Ws::connect(
            &server,
            &format!("{name} continuation first, frame by frame"),
        );
        ws.send_each(&frames, Duration::from_millis(20));
        ws.expect_fail(1002);

        let mut ws = Ws::connect(
            &server,
            &format!("{name} continuation first, 1-byte writes"),
        );
        ws.send_chopped(&frames.concat(), 1, 8);
        ws.expect_fail(1002);
    }

    // A continuation after a message that is already complete.
    let mut ws = Ws::connect(&server, "5.x continuation after a complete message");
    ws.send(&[text(&join("done")), frame(FIN | CONT, b"more")].concat());
    ws.expect_fail_after(1002, &[("joined", "done")]);
}

/// 5.15-5.17: broken fragment sequences.
#[test]
fn g5_broken_fragment_sequences_close_1002() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(
        &server,
        "5.15 complete fragmented message, then continuation, then text",
    );
    let msg = join("f515");
    let mut frames = fragments_at(&msg, &[msg.len() / 2]);
    frames.push(frame(CONT, b"fragment3"));
    frames.push(text(&join("never")));
    ws.send(&frames.concat());
    ws.expect_fail_after(1002, &[("joined", "f515")]);

    for (fin, name) in [
        (0, "5.16 continuation FIN=0 first"),
        (FIN, "5.17 continuation FIN=1 first"),
    ] {
        let mut ws = Ws::connect(&server, name);
        let round = [
            frame(fin | CONT, b"fragment1"),
            frame(TEXT, b"fragment2"),
            frame(FIN | CONT, b"fragment3"),
        ];
        ws.send(&[round.concat(), round.concat()].concat());
        ws.expect_fail(1002);
    }
}

/// 5.18: a new text frame in the middle of a fragmented message is a protocol error.
#[test]
fn g5_text_frame_inside_fragmented_message_closes_1002() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.18 text FIN=0, then text FIN=1");
    let msg = join("f518");
    ws.send(&[frame(TEXT, &msg[..10]), text(&join("never"))].concat());
    ws.expect_fail(1002);

    let mut ws = Ws::connect(&server, "5.x binary frame inside a fragmented text message");
    ws.send(&[frame(TEXT, &msg[..10]), frame(FIN | BINARY, b"\x00")].concat());
    ws.expect_fail(1002);
}

/// 5.19-5.20: a message in five fragments with two pings in between, with pauses, and in 1-byte
/// writes.
#[test]
fn g5_five_fragments_with_two_pings() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.19 five fragments, two pings, with pauses");
    let build = |room: &str| {
        let msg = join(room);
        let n = msg.len();
        let f = fragments_at(&msg, &[n / 5, 2 * n / 5, 3 * n / 5, 4 * n / 5]);
        vec![
            f[0].clone(),
            f[1].clone(),
            frame(FIN | PING, b"pongme 1!"),
            f[2].clone(),
            f[3].clone(),
            frame(FIN | PING, b"pongme 2!"),
            f[4].clone(),
        ]
    };
    ws.send_each(&build("f519"), Duration::from_millis(100));
    ws.expect_pong(b"pongme 1!");
    ws.expect_pong(b"pongme 2!");
    ws.expect_joined("f519");

    ws.step("5.20 five fragments, two pings, 1-byte writes");
    ws.send_chopped(&build("f520").concat(), 1, 4);
    ws.expect_pong(b"pongme 1!");
    ws.expect_pong(b"pongme 2!");
    ws.expect_joined("f520");
    ws.close_normally();
}

/// A message in 1-byte fragments, with and without pings in between, and a 64 KiB message in
/// 1024 fragments.
#[test]
fn g5_many_small_fragments() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "5.x 1-byte fragments");
    ws.send(&fragments_of(&join("tiny"), 1).concat());
    ws.expect_joined("tiny");

    ws.step("5.x 1-byte fragments with a ping after every 10th");
    let frames = fragments_of(&join("tiny-pings"), 1);
    let mut bytes = Vec::new();
    let mut pings = 0;
    for (i, f) in frames.iter().enumerate() {
        bytes.extend_from_slice(f);
        if i % 10 == 9 {
            bytes.extend_from_slice(&frame(FIN | PING, format!("p{i}").as_bytes()));
            pings += 1;
        }
    }
    ws.send(&bytes);
    for i in 0..pings {
        ws.expect_pong(format!("p{}", i * 10 + 9).as_bytes());
    }
    ws.expect_joined("tiny-pings");

    ws.step("5.x 64 KiB message in 1024 fragments of 64 bytes");
    ws.send(&fragments_of(&join_len("frag64k", LIMIT), 64).concat());
    ws.expect_joined("frag64k");

    ws.step("6.1.2 three empty fragments: an empty text message");
    ws.send(&[frame(TEXT, b""), frame(CONT, b""), frame(FIN | CONT, b"")].concat());
    ws.expect_error("bad_request");

    ws.step("6.1.3 empty fragment, request, empty fragment");
    ws.send(
        &[
            frame(TEXT, b""),
            frame(CONT, &join("empties")),
            frame(FIN | CONT, b""),
        ]
        .concat(),
    );
    ws.expect_joined("empties");
    ws.close_normally();
}
