//! RFC 6455 conformance, the closing handshake (sections 5.5.1 and 7): close after requests,
//! frames after a close, the server closing TCP, close payloads and status codes (Autobahn
//! group 7). Shared notes on the suite: `rfc6455_handshake.rs`; the raw-TCP client:
//! `support/raw_ws.rs`.

mod support;

use support::raw_ws::*;
use support::Server;

// ---------------------------------------------------------------------------------------------
// Group 7: closing handshake
// ---------------------------------------------------------------------------------------------

/// 7.1.1: a request, then close 1000: the reply, the echoed close, then the server closes TCP.
#[test]
fn g7_close_after_request() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "7.1.1 request then close 1000");
    ws.send(&text(&join("c1")));
    ws.expect_joined("c1");
    ws.close_normally();

    // RFC 6455 5.5.1 lets the server answer the close before replies still in flight, so the
    // reply to a request in the same write as the close may be dropped (Autobahn 7.1.6 likewise).
    let mut ws = Ws::connect(&server, "7.1.1 request and close 1000 in one write");
    ws.send(&[text(&join("c2")), close_frame(1000, b"")].concat());
    let got = ws.read_close(&[("joined", "c2")]);
    assert_eq!(got.map(|c| c.0), Some(1000), "{}", ws.case);
    ws.expect_eof();

    let mut ws = Ws::connect(&server, "history request, then close");
    ws.send(
        &[
            text(&join("hist")),
            text(br#"{"type":"history","room":"hist"}"#),
        ]
        .concat(),
    );
    ws.expect_joined("hist");
    let v = ws.expect_reply("history");
    assert_eq!(v["room"], "hist", "{v}");
    assert_eq!(v["messages"], serde_json::json!([]), "{v}");
    ws.close_normally();
}

/// 7.1.2-7.1.6: frames after a close are ignored: no pong, no reply, no second close.
#[test]
fn g7_frames_after_close_are_ignored() {
    let server = Server::start(&[]);
    let cases: [(&str, Vec<Vec<u8>>); 5] = [
        (
            "7.1.2 close twice",
            vec![close_frame(1000, b""), close_frame(1000, b"")],
        ),
        (
            "7.1.3 close then ping",
            vec![
                close_frame(1000, b""),
                frame(FIN | PING, b"ping after close"),
            ],
        ),
        (
            "7.1.4 close then text",
            vec![close_frame(1000, b""), text(&join("after-close"))],
        ),
        (
            "7.1.5 fragment, close, final fragment",
            vec![
                frame(TEXT, &join("frag")[..10]),
                close_frame(1000, b""),
                frame(FIN | CONT, &join("frag")[10..]),
            ],
        ),
        (
            "7.1.6 64 KiB request, close, ping",
            vec![
                text(&join_len("big", LIMIT)),
                close_frame(1000, b""),
                frame(FIN | PING, b"ping after close"),
            ],
        ),
    ];
    for (case, frames) in &cases {
        let mut ws = Ws::connect(&server, case);
        ws.send(&frames.concat());
        let got = ws.read_close(&[("joined", "big")]);
        assert_eq!(got.map(|c| c.0), Some(1000), "{case}");
        ws.expect_eof();
    }
}

/// Failing the connection (RFC 6455 7.1.7) closes TCP even if the client never answers the
/// server's close frame.
#[test]
fn g7_server_close_without_client_reply_still_closes_tcp() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "server close 1002, client silent");
    ws.send(&frame(FIN | 3, b""));
    let got = ws.read_close(&[]);
    assert_eq!(got.map(|c| c.0), Some(1002), "{}", ws.case);
    ws.expect_eof();

    let mut ws = Ws::connect(&server, "server close 1007, client silent");
    ws.send(&text(b"\xff"));
    let got = ws.read_close(&[]);
    assert_eq!(got.map(|c| c.0), Some(1007), "{}", ws.case);
    ws.expect_eof();
}

/// 7.3.1-7.3.6, 7.5.1: close payloads: empty, one byte, code only, code and reason, a reason
/// that makes the frame too long, a reason that is not UTF-8.
#[test]
fn g7_close_payloads() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "7.3.1 close with an empty payload");
    let got = ws.close_with(b"");
    assert!(
        matches!(got, None | Some((1000, _))),
        "7.3.1: server answered with close {got:?}"
    );

    let mut ws = Ws::connect(&server, "7.3.2 close with a 1-byte payload");
    let got = ws.close_with(&[0x03]);
    assert_eq!(got.map(|c| c.0), Some(1002), "7.3.2");

    let mut ws = Ws::connect(&server, "7.3.3 close 1000 without reason");
    let got = ws.close_with(&1000u16.to_be_bytes());
    assert_eq!(got.map(|c| c.0), Some(1000), "7.3.3");

    // Close 1000 with a reason; each answered with the close code given, then TCP closes.
    let not_utf8 =
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64";
    let reasons: [(&str, &[u8], u16); 4] = [
        ("7.3.4 close 1000 with a reason", b"Hello World!", 1000),
        (
            "7.3.5 close 1000 with a 123-byte reason (125-byte payload)",
            &[b'*'; 123],
            1000,
        ),
        (
            "7.3.6 close 1000 with a 124-byte reason (126-byte payload)",
            &[b'*'; 124],
            1002,
        ),
        (
            "7.5.1 close 1000 with a reason that is not UTF-8",
            not_utf8,
            1007,
        ),
    ];
    for (case, reason, code) in reasons {
        let mut ws = Ws::connect(&server, case);
        ws.send(&close_frame(1000, reason));
        let got = ws.read_close(&[]);
        ws.expect_eof();
        let id = case.split(' ').next().unwrap();
        assert_eq!(got.map(|c| c.0), Some(code), "{id}");
    }
}

/// 7.7.x: valid close codes are answered with a close (echoing the code, or 1000 as Autobahn
/// also accepts).
#[test]
fn g7_valid_close_codes_are_echoed() {
    let server = Server::start(&[]);
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut ws = Ws::connect(&server, &format!("7.7.x close {code}"));
        let got = ws.close_with(&code.to_be_bytes());
        let got = got.map(|c| c.0);
        assert!(
            got == Some(code) || got == Some(1000),
            "7.7.x close {code}: server answered {got:?}"
        );
    }
}

/// 7.9.x, 7.13.x: close codes that must not appear on the wire are a protocol error.
#[test]
fn g7_invalid_close_codes_close_1002() {
    let server = Server::start(&[]);
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut ws = Ws::connect(&server, &format!("7.9.x close {code}"));
        let got = ws.close_with(&code.to_be_bytes());
        assert_eq!(got.map(|c| c.0), Some(1002), "7.9.x close {code}");
    }
}
