//! RFC 6455 conformance, the opening handshake (section 4) and the plain HTTP routes beside
//! it: accept keys, refused keys, versions, methods and user ids, and frames that arrive in the
//! same TCP write as the upgrade request. Raw TCP throughout (`support::raw_ws`); one file per
//! RFC area so that each stays small: `rfc6455_framing.rs`, `rfc6455_fragmentation.rs`,
//! `rfc6455_utf8.rs`, `rfc6455_close.rs`, `rfc6455_limits.rs`.
//!
//! The cases follow the Autobahn|Testsuite case groups 1-7, 9 and 10 (the Autobahn case numbers
//! are given in the comments), adapted to a chat server: where Autobahn expects the server to
//! echo a message, these tests send a protocol request instead and expect its reply. Every test
//! starts its own server (two threads, default limits: 64 KiB frames and messages). Where the
//! server closes the connection, a test checks the status code of its close frame and that the
//! server then closes the TCP connection.
//!
//! `scripts/autobahn.sh` runs the real Autobahn fuzzing client for people with Docker; as the
//! server does not echo, many of those cases fail by design, so these files are the
//! authoritative conformance suite.

mod support;

use chat_wire::frame::Message;
use chat_wire::handshake::accept_key;
use serde_json::Value;
use std::time::Duration;
use support::raw_ws::*;
use support::Server;

#[test]
fn handshake_101_with_rfc_sample_accept() {
    let server = Server::start(&[]);
    // RFC 6455 section 1.3: this key must be answered with this accept value.
    let req = upgrade_request("/ws?user=alice", &[VALID_KEY, VERSION_13]);
    let resp = http(server.addr, &req);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{resp:?}"
    );
    assert!(resp.header_has_token("upgrade", "websocket"), "{resp:?}");
    assert!(resp.header_has_token("connection", "upgrade"), "{resp:?}");
    // No extension or subprotocol was offered, so none may be selected.
    assert_eq!(resp.header("sec-websocket-extensions"), None, "{resp:?}");
    assert_eq!(resp.header("sec-websocket-protocol"), None, "{resp:?}");
}

#[test]
fn handshake_random_keys_and_browser_style_headers() {
    let server = Server::start(&[]);
    for i in 0..5 {
        // `Ws::connect_with` checks the status and Sec-WebSocket-Accept.
        let mut ws = Ws::connect_with(server.addr, "alice", &format!("handshake key {i}"), &[]);
        ws.close_normally();
    }
    // Firefox sends `Connection: keep-alive, Upgrade`; header names and tokens are
    // case-insensitive.
    let key = ws_key();
    let req = http_request(
        "/ws?user=Al.ice_-9",
        &[
            "upgrade: WebSocket",
            "connection: keep-alive, Upgrade",
            &format!("sec-websocket-key: {key}"),
            "sec-websocket-version: 13",
            "Origin: http://localhost",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        ],
    );
    let resp = http(server.addr, &req);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(accept_key(&key).as_str()),
        "{resp:?}"
    );
    // permessage-deflate was offered (PROTOCOL.md v1.1): accepted, always without server
    // context takeover (rfc7692_deflate.rs has the whole negotiation matrix).
    assert_eq!(
        resp.header("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover"),
        "{resp:?}"
    );
}

#[test]
fn handshake_missing_or_bad_key_is_400() {
    let server = Server::start(&[]);
    let missing = upgrade_request("/ws?user=alice", &[VERSION_13]);
    let resp = http(server.addr, &missing);
    assert_eq!(resp.status, 400, "missing Sec-WebSocket-Key: {resp:?}");

    // Base64 of 15 bytes: the key must decode to 16.
    let short = upgrade_request(
        "/ws?user=alice",
        &["Sec-WebSocket-Key: YWFhYWFhYWFhYWFhYWFh", VERSION_13],
    );
    let resp = http(server.addr, &short);
    assert_eq!(resp.status, 400, "15-byte Sec-WebSocket-Key: {resp:?}");

    let not_base64 = upgrade_request("/ws?user=alice", &["Sec-WebSocket-Key: !!!!", VERSION_13]);
    let resp = http(server.addr, &not_base64);
    assert_eq!(resp.status, 400, "Sec-WebSocket-Key not base64: {resp:?}");
}

#[test]
fn handshake_wrong_version_is_refused_with_supported_version() {
    let server = Server::start(&[]);
    // RFC 6455 section 4.2.2: an unsupported version gets an error status (such as 426) and a
    // Sec-WebSocket-Version header listing the versions the server understands.
    let v12 = upgrade_request("/ws?user=alice", &[VALID_KEY, "Sec-WebSocket-Version: 12"]);
    let resp = http(server.addr, &v12);
    assert!(matches!(resp.status, 400 | 426), "version 12: {resp:?}");
    assert!(
        resp.header_has_token("sec-websocket-version", "13"),
        "version 12: {resp:?}"
    );

    let missing = upgrade_request("/ws?user=alice", &[VALID_KEY]);
    let resp = http(server.addr, &missing);
    assert!(
        matches!(resp.status, 400 | 426),
        "no Sec-WebSocket-Version: {resp:?}"
    );
}
#[test]
fn handshake_without_upgrade_or_with_post_is_refused() {
    let server = Server::start(&[]);
    let plain = http_request("/ws?user=alice", &[]);
    let resp = http(server.addr, &plain);
    assert!(
        matches!(resp.status, 400 | 426),
        "GET /ws without Upgrade: {resp:?}"
    );

    let post = format!(
        "POST /ws?user=alice HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{VALID_KEY}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
    );
    let resp = http(server.addr, &post);
    assert!(matches!(resp.status, 400 | 405), "POST upgrade: {resp:?}");
}

#[test]
fn handshake_bad_user_is_400() {
    let server = Server::start(&[]);
    let long = "u".repeat(65);
    let targets = [
        "/ws".to_owned(),
        "/ws?user=".to_owned(),
        "/ws?user=a%20b".to_owned(),
        "/ws?user=a/b".to_owned(),
        "/ws?user=%C3%A9".to_owned(),
        format!("/ws?user={long}"),
    ];
    for target in &targets {
        let req = upgrade_request(target, &[VALID_KEY, VERSION_13]);
        let resp = http(server.addr, &req);
        assert_eq!(resp.status, 400, "{target}: {resp:?}");
    }
    // A raw space ends the request target: the request line is malformed.
    let raw = format!(
        "GET /ws?user=a b HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{VALID_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let resp = http(server.addr, &raw);
    assert_eq!(resp.status, 400, "`?user=a b`: {resp:?}");

    // The longest valid id is accepted.
    let max = "u".repeat(64);
    let mut ws = Ws::connect_with(server.addr, &max, "64-char user id", &[]);
    ws.close_normally();
}

#[test]
fn http_index_healthz_and_404() {
    let server = Server::start(&[]);
    let resp = http(server.addr, &http_request("/", &[]));
    assert_eq!(resp.status, 200, "GET /: {resp:?}");
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/html"), "GET / Content-Type {ct:?}");
    assert!(!resp.body.is_empty(), "GET / has an empty body");

    let resp = http(server.addr, &http_request("/healthz", &[]));
    assert_eq!(resp.status, 200, "GET /healthz: {resp:?}");

    let resp = http(server.addr, &http_request("/no-such-page", &[]));
    assert_eq!(resp.status, 404, "GET /no-such-page: {resp:?}");
}

/// Frames in the same TCP write as the upgrade request are processed, as are frames split
/// between that write and the next.
#[test]
fn g10_request_in_the_upgrade_write() {
    let server = Server::start(&[]);
    let early = [text(&join("early1")), frame(FIN | PING, b"early ping")].concat();
    let mut ws = Ws::connect_with(
        server.addr,
        "alice",
        "10.x request in the upgrade write",
        &early,
    );
    // The pong may overtake the reply (control frames are not ordered against replies).
    let mut pong = false;
    let mut joined = false;
    for _ in 0..2 {
        match ws.next("a pong and a `joined` reply") {
            Message::Pong(p) if !pong && &p[..] == b"early ping" => pong = true,
            Message::Text(t) if !joined => {
                let v: Value = serde_json::from_slice(&t).expect("JSON reply");
                assert!(
                    v["type"] == "joined" && v["room"] == "early1",
                    "{}: {v}",
                    ws.case
                );
                joined = true;
            }
            other => panic!("{}: unexpected {}", ws.case, describe(&other)),
        }
    }
    ws.close_normally();

    let request = text(&join("early2"));
    let (head, rest) = request.split_at(5);
    let mut ws = Ws::connect_with(
        server.addr,
        "alice",
        "10.x request split over the upgrade write",
        head,
    );
    std::thread::sleep(Duration::from_millis(50));
    ws.send(rest);
    ws.expect_joined("early2");
    ws.close_normally();
}
