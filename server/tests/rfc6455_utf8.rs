//! RFC 6455 conformance, UTF-8 in text messages (section 8.1): valid text whole and split at
//! every byte, invalid sequences closing with 1007, also across fragments and before the
//! message ends (Autobahn group 6). Shared notes on the suite: `rfc6455_handshake.rs`; the
//! raw-TCP client: `support/raw_ws.rs`.

mod support;

use std::time::Duration;
use support::raw_ws::*;
use support::Server;

// ---------------------------------------------------------------------------------------------
// Group 6: UTF-8
// ---------------------------------------------------------------------------------------------

const HELLO_UTF8: &str = "Hello-\u{b5}@\u{df}\u{f6}\u{e4}\u{fc}\u{e0}\u{e1}-UTF-8!!";
const KOSME: &str = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}";

/// 6.2, 6.5-6.x valid: multi-byte text (2-, 3- and 4-byte sequences, boundary code points) in a
/// JSON string, whole and split into fragments at every byte.
#[test]
fn g6_valid_utf8_is_accepted() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(&server, "6.2.1 valid UTF-8 in one frame");
    ws.send(&text(&join_pad("u1", HELLO_UTF8.as_bytes())));
    ws.expect_joined("u1");

    ws.step("6.2.2 valid UTF-8 in fragments at code point boundaries");
    let msg = join_pad("u2", HELLO_UTF8.as_bytes());
    let cuts: Vec<usize> = String::from_utf8(msg.clone())
        .unwrap()
        .char_indices()
        .map(|(i, _)| i)
        .skip(1)
        .collect();
    ws.send(&fragments_at(&msg, &cuts).concat());
    ws.expect_joined("u2");

    ws.step("6.2.3 valid UTF-8 in 1-byte fragments");
    ws.send(&fragments_of(&join_pad("u3", HELLO_UTF8.as_bytes()), 1).concat());
    ws.expect_joined("u3");

    ws.step("6.2.4 kosme in 1-byte fragments");
    ws.send(&fragments_of(&join_pad("u4", KOSME.as_bytes()), 1).concat());
    ws.expect_joined("u4");

    // Boundary code points: first and last of each sequence length, around the surrogates, the
    // noncharacters U+FFFE/U+FFFF, and 4-byte characters.
    let boundaries = "\u{80}\u{7ff}\u{800}\u{d7ff}\u{e000}\u{fffd}\u{fffe}\u{ffff}\u{10000}\u{10ffff}\u{feff}\u{1d11e}\u{1f600}\u{1f004}";
    ws.step("6.x boundary code points and 4-byte characters");
    ws.send(&text(&join_pad("u5", boundaries.as_bytes())));
    ws.expect_joined("u5");
    ws.step("6.x boundary code points in 1-byte fragments");
    ws.send(&fragments_of(&join_pad("u6", boundaries.as_bytes()), 1).concat());
    ws.expect_joined("u6");

    // The server decodes and re-encodes non-ASCII strings faithfully.
    let room = "\u{1d11e}-\u{1f600}-\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}";
    ws.step("6.x room name with 4-byte characters");
    ws.send(&text(&join(room)));
    ws.expect_joined(room);
    ws.close_normally();
}

/// A code point split across fragments, and across TCP writes inside one frame, is fine.
#[test]
fn g6_code_point_split_across_fragments() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(
        &server,
        "6.x 4-byte character split 1+2+1 over three fragments",
    );
    let prefix = join_pad("split", b"").len() - 2; // up to the opening quote's contents
    let msg = join_pad("split", "\u{1f600}".as_bytes());
    ws.send(&fragments_at(&msg, &[prefix + 1, prefix + 3]).concat());
    ws.expect_joined("split");

    ws.step("6.x 3-byte character split over two fragments, frame by frame");
    let msg = join_pad("split2", "\u{20ac}".as_bytes());
    let prefix = join_pad("split2", b"").len() - 2;
    ws.send_each(
        &fragments_at(&msg, &[prefix + 2]),
        Duration::from_millis(50),
    );
    ws.expect_joined("split2");

    ws.step("6.x 4-byte characters split across 1-byte TCP writes of one frame");
    ws.send_chopped(
        &text(&join_pad("split3", "\u{1f600}\u{10ffff}".as_bytes())),
        1,
        1,
    );
    ws.expect_joined("split3");
    ws.close_normally();
}

/// Invalid UTF-8 sequences (Autobahn 6.3-6.21 selection), each in a JSON string of a request.
fn invalid_utf8_cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "6.3.1 kosme with a surrogate",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"
                .to_vec(),
        ),
        ("6.x 0xff", vec![0xff]),
        ("6.x 0xfe", vec![0xfe]),
        ("6.x 0xfe 0xfe 0xff 0xff", vec![0xfe, 0xfe, 0xff, 0xff]),
        ("6.x lone continuation byte 0x80", vec![0x80]),
        ("6.x lone continuation byte 0xbf", vec![0xbf]),
        ("6.x continuation bytes 80 bf 80", vec![0x80, 0xbf, 0x80]),
        ("6.x lone start byte then ASCII", vec![0xc2, b'x']),
        (
            "6.x truncated 3-byte sequence then ASCII",
            vec![0xe2, 0x82, b'x'],
        ),
        (
            "6.x truncated 4-byte sequence then ASCII",
            vec![0xf0, 0x9f, 0x98, b'x'],
        ),
        ("6.x overlong / (2 bytes)", vec![0xc0, 0xaf]),
        ("6.x overlong / (3 bytes)", vec![0xe0, 0x80, 0xaf]),
        ("6.x overlong / (4 bytes)", vec![0xf0, 0x80, 0x80, 0xaf]),
        ("6.x overlong NUL", vec![0xc0, 0x80]),
        ("6.x largest overlong 2 bytes", vec![0xc1, 0xbf]),
        ("6.x largest overlong 3 bytes", vec![0xe0, 0x9f, 0xbf]),
        ("6.x largest overlong 4 bytes", vec![0xf0, 0x8f, 0xbf, 0xbf]),
        ("6.x 5-byte sequence", vec![0xf8, 0x88, 0x80, 0x80, 0x80]),
        (
            "6.x 6-byte sequence",
            vec![0xfc, 0x84, 0x80, 0x80, 0x80, 0x80],
        ),
        ("6.x above U+10FFFF", vec![0xf4, 0x90, 0x80, 0x80]),
        ("6.x lead byte 0xf5", vec![0xf5, 0x80, 0x80, 0x80]),
        ("6.x surrogate U+D800", vec![0xed, 0xa0, 0x80]),
        ("6.x surrogate U+DFFF", vec![0xed, 0xbf, 0xbf]),
        (
            "6.x surrogate pair",
            vec![0xed, 0xa0, 0x80, 0xed, 0xb0, 0x80],
        ),
    ]
}

/// Invalid UTF-8 in a text message: close 1007 (never a JSON `error`).
#[test]
fn g6_invalid_utf8_closes_1007() {
    let server = Server::start(&[]);
    for (case, bad) in invalid_utf8_cases() {
        let mut ws = Ws::connect(&server, &format!("{case}, one frame"));
        ws.send(&text(&join_pad("bad", &bad)));
        ws.expect_fail(1007);
    }
    // An incomplete sequence at the very end of the message.
    let mut msg = join("bad");
    msg.extend_from_slice(&[0xf0, 0x9f, 0x98]);
    let mut ws = Ws::connect(&server, "6.x message ends in a truncated sequence");
    ws.send(&text(&msg));
    ws.expect_fail(1007);
    let mut ws = Ws::connect(
        &server,
        "6.x fragmented message ends in a truncated sequence",
    );
    ws.send(&fragments_at(&msg, &[msg.len() - 2]).concat());
    ws.expect_fail(1007);
}

/// Invalid UTF-8 in fragmented messages: in 1-byte fragments, and split across fragments.
#[test]
fn g6_invalid_utf8_in_fragments_closes_1007() {
    let server = Server::start(&[]);
    for (case, bad) in invalid_utf8_cases().into_iter().step_by(3) {
        let mut ws = Ws::connect(&server, &format!("{case}, 1-byte fragments"));
        ws.send(&fragments_of(&join_pad("bad", &bad), 1).concat());
        ws.expect_fail(1007);
    }
    // A surrogate whose bytes are split over two fragments.
    let msg = join_pad("bad", &[0xed, 0xa0, 0x80]);
    let prefix = join_pad("bad", b"").len() - 2;
    let mut ws = Ws::connect(&server, "6.x surrogate split over two fragments");
    ws.send(&fragments_at(&msg, &[prefix + 1]).concat());
    ws.expect_fail(1007);
}

/// 6.4.1-6.4.2: fail fast: invalid UTF-8 in a fragment is refused before the message ends. The
/// final fragment is never sent, so only an early check closes the connection.
#[test]
fn g6_invalid_utf8_fails_fast_in_later_fragment() {
    let server = Server::start(&[]);
    let mut first = join_pad("ff", b"");
    first.truncate(first.len() - 2);
    first.extend_from_slice(KOSME.as_bytes());

    let mut ws = Ws::connect(&server, "6.4.1 invalid code point in the second fragment");
    ws.send(&frame(TEXT, &first));
    std::thread::sleep(Duration::from_millis(100));
    ws.send(&frame(CONT, &[0xf4, 0x90, 0x80, 0x80]));
    ws.expect_fail(1007);

    let mut ws = Ws::connect(
        &server,
        "6.4.2 invalid sequence spread over the second and third fragments",
    );
    ws.send(&frame(TEXT, &first));
    ws.send(&frame(CONT, &[0xf4]));
    std::thread::sleep(Duration::from_millis(100));
    ws.send(&frame(CONT, &[0x90, 0x80, 0x80]));
    ws.expect_fail(1007);

    let mut ws = Ws::connect(
        &server,
        "6.4.x invalid byte in the middle of a later fragment",
    );
    ws.send(&frame(TEXT, &first));
    ws.send(&frame(CONT, b"valid so far"));
    ws.send(&frame(CONT, b"then \xff and more"));
    ws.expect_fail(1007);
}
