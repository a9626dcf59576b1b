use super::*;
use crate::frame::{parse_frame_ext, Message, MessageAssembler, Role};
use bytes::BytesMut;

fn offer(v: &str) -> Option<DeflateParams> {
    negotiate([v])
}

#[test]
fn accepts_the_plain_offer_and_always_answers_no_server_context() {
    let p = offer("permessage-deflate").unwrap();
    assert_eq!(p.server_max_window_bits, 15);
    assert_eq!(
        p.response_header(),
        "permessage-deflate; server_no_context_takeover"
    );
}

#[test]
fn negotiation_matrix() {
    // (offer, the response header, or None when declined)
    let cases: &[(&str, Option<&str>)] = &[
        (
            "permessage-deflate; client_max_window_bits",
            Some("permessage-deflate; server_no_context_takeover"),
        ),
        (
            "permessage-deflate; client_max_window_bits=10",
            Some("permessage-deflate; server_no_context_takeover"),
        ),
        (
            "permessage-deflate; server_no_context_takeover",
            Some("permessage-deflate; server_no_context_takeover"),
        ),
        (
            "permessage-deflate; client_no_context_takeover",
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=10"),
        ),
        (
            "permessage-deflate; server_max_window_bits=\"12\"",
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
        ),
        (
            "PerMessage-Deflate; Server_Max_Window_Bits=15",
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=15"),
        ),
        // Declined: 8 (zlib cannot keep to it), out of range, malformed, unknown, repeated.
        ("permessage-deflate; server_max_window_bits=8", None),
        ("permessage-deflate; server_max_window_bits=16", None),
        ("permessage-deflate; server_max_window_bits=010", None),
        ("permessage-deflate; server_max_window_bits", None),
        ("permessage-deflate; client_max_window_bits=7", None),
        ("permessage-deflate; client_max_window_bits=abc", None),
        ("permessage-deflate; server_no_context_takeover=1", None),
        ("permessage-deflate; mystery", None),
        (
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            None,
        ),
        ("x-webkit-deflate-frame", None),
        ("", None),
    ];
    for (o, want) in cases {
        let got = offer(o).map(|p| p.response_header());
        assert_eq!(got.as_deref(), *want, "offer {o:?}");
    }
}

#[test]
fn takes_the_first_acceptable_offer_across_lines() {
    let p = negotiate([
        "foo, permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=11, permessage-deflate",
    ])
    .unwrap();
    assert_eq!(p.server_max_window_bits, 11);
}

fn body(n: usize) -> String {
    let words = [
        "hello", "room", "message", "chat", "are", "you", "there", "ok", "see", "later",
    ];
    (0..n)
        .map(|i| words[(i * 7 + i / 3) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Inflates a server frame's payload with an independent decoder (miniz_oxide).
fn independent_inflate(frame: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::from(frame);
    let f = parse_frame_ext(&mut buf, Role::Client, usize::MAX, true)
        .unwrap()
        .unwrap();
    assert!(f.rsv1 && f.fin, "a compressed final text frame");
    let mut data = f.payload.to_vec();
    // The tail taken off, then an empty final stored block so that the stream ends.
    data.extend_from_slice(&[0, 0, 0xff, 0xff, 0x01, 0, 0, 0xff, 0xff]);
    miniz_oxide::inflate::decompress_to_vec(&data).unwrap()
}

#[test]
fn compressed_frames_inflate_with_another_decoder_at_every_window() {
    let mut d = Deflater::default();
    for bits in 9..=15 {
        for n in [0, 1, 20, 800] {
            let text = body(n);
            let frame = d.text_frame(text.as_bytes(), bits);
            assert_eq!(
                independent_inflate(&frame),
                text.as_bytes(),
                "bits {bits}, {n} words"
            );
        }
    }
    // No context takeover: the same message compresses to the same bytes every time.
    let text = body(100);
    assert_eq!(
        d.text_frame(text.as_bytes(), 15),
        d.text_frame(text.as_bytes(), 15)
    );
    assert!(d.text_frame(text.as_bytes(), 15).len() < text.len() / 2);
}

/// A client's message as a browser sends it: compressed with context takeover, sync flushed,
/// the tail taken off, in masked frames.
fn client_frames(c: &mut flate2::Compress, text: &[u8], fragments: usize) -> BytesMut {
    let mut out = Vec::with_capacity(text.len() + 64);
    c.compress_vec(text, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    out.truncate(out.len() - 4);
    let chunk = out.len().div_ceil(fragments).max(1);
    let mut wire = BytesMut::new();
    let parts: Vec<&[u8]> = out.chunks(chunk).collect();
    for (i, part) in parts.iter().enumerate() {
        let op = if i == 0 {
            crate::frame::OpCode::Text
        } else {
            crate::frame::OpCode::Continuation
        };
        let f = crate::frame::encode_masked_frame(i + 1 == parts.len(), op, part, [1, 2, 3, 4]);
        let mut f = BytesMut::from(&f[..]);
        if i == 0 {
            f[0] |= crate::frame::RSV1;
        }
        wire.extend_from_slice(&f);
    }
    wire
}

fn assemble(
    a: &mut MessageAssembler,
    wire: &mut BytesMut,
) -> Result<Option<Message>, crate::frame::FrameError> {
    let mut last = None;
    while let Some(f) = parse_frame_ext(wire, Role::Server, 1 << 20, true)? {
        last = a.push(f)?;
    }
    Ok(last)
}

#[test]
fn inflates_fragmented_messages_with_context_takeover() {
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut a = MessageAssembler::with_inflater(64 * 1024);
    for (i, fragments) in [1, 3, 5].into_iter().enumerate() {
        let text = format!("{} #{i}", body(50));
        let mut wire = client_frames(&mut c, text.as_bytes(), fragments);
        match assemble(&mut a, &mut wire).unwrap() {
            Some(Message::Text(t)) => assert_eq!(&t[..], text.as_bytes()),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_bomb_stops_at_the_limit() {
    // 10 MiB of zeros compress to ~10 KiB: far past a 64 KiB limit once inflated.
    let zeros = vec![0u8; 10 << 20];
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let mut wire = client_frames(&mut c, &zeros, 1);
    assert!(wire.len() < 64 * 1024);
    let mut a = MessageAssembler::with_inflater(64 * 1024);
    let e = assemble(&mut a, &mut wire).unwrap_err();
    assert_eq!(e.code, crate::frame::close_code::TOO_BIG);
    // The bound itself: inflating stops one byte past the limit.
    let frame = Deflater::default().text_frame(body(200).as_bytes(), 15);
    let payload = crate::frame::payload_of(&frame);
    let mut inf = Inflater::default();
    assert_eq!(inf.inflate(&payload, 100), Err(InflateError::TooBig));
    let whole = Inflater::default().inflate(&payload, 1 << 20).unwrap();
    assert_eq!(&whole[..], body(200).as_bytes());
}

#[test]
fn bad_compressed_data_and_misplaced_rsv1_close_the_connection() {
    let mut a = MessageAssembler::with_inflater(1024);
    let mut wire = BytesMut::from(
        &crate::frame::encode_masked_frame(
            true,
            crate::frame::OpCode::Text,
            &[0xff, 0xff, 0xff],
            [9, 9, 9, 9],
        )[..],
    );
    wire[0] |= crate::frame::RSV1;
    assert_eq!(
        assemble(&mut a, &mut wire).unwrap_err().code,
        crate::frame::close_code::INVALID_PAYLOAD
    );
    // RSV1 on a ping, on a continuation, and without the extension.
    for (op, fin) in [
        (crate::frame::OpCode::Ping, true),
        (crate::frame::OpCode::Continuation, true),
    ] {
        let mut a = MessageAssembler::with_inflater(1024);
        let mut w =
            BytesMut::from(&crate::frame::encode_masked_frame(fin, op, b"x", [1, 1, 1, 1])[..]);
        w[0] |= crate::frame::RSV1;
        assert_eq!(
            assemble(&mut a, &mut w).unwrap_err().code,
            crate::frame::close_code::PROTOCOL
        );
    }
    let mut w = BytesMut::from(
        &crate::frame::encode_masked_frame(true, crate::frame::OpCode::Text, b"x", [1, 1, 1, 1])[..],
    );
    w[0] |= crate::frame::RSV1;
    assert!(crate::frame::parse_frame(&mut w, Role::Server, 1024).is_err());
}
