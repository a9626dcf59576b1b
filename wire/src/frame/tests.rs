//! The frame tests: the RFC's examples, every length encoding byte by byte, the protocol
//! violations that must close, reassembly, UTF-8 across fragments, close payloads.

use super::*;
use bytes::BufMut;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn parse_all(bytes: &[u8], max: usize) -> Result<Vec<Frame>, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = parse_frame(&mut buf, Role::Server, max)? {
        out.push(f);
    }
    Ok(out)
}

#[test]
fn rfc_example_masked_hello() {
    // RFC 6455 section 5.7: a single-frame masked text message "Hello".
    let bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let frames = parse_all(&bytes, 1024).unwrap();
    assert_eq!(frames.len(), 1);
    assert!(frames[0].fin);
    assert_eq!(frames[0].opcode, OpCode::Text);
    assert_eq!(&frames[0].payload[..], b"Hello");
}

#[test]
fn every_length_encoding_round_trips() {
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 100_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let frame = encode_masked_frame(true, OpCode::Binary, &payload, MASK);
        // Feed it one byte at a time: every prefix must be "need more".
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, b) in frame.iter().enumerate() {
            buf.put_u8(*b);
            let r = parse_frame(&mut buf, Role::Server, 1 << 20).unwrap();
            if i + 1 < frame.len() {
                assert!(
                    r.is_none(),
                    "len {len}: frame reported complete at byte {i}"
                );
            } else {
                got = r;
            }
        }
        assert_eq!(
            &got.expect("complete frame").payload[..],
            &payload[..],
            "len {len}"
        );
    }
}

#[test]
fn refuses_protocol_violations() {
    let cases: [(&[u8], u16); 6] = [
        (&[0xC1, 0x80, 0, 0, 0, 0], 1002), // RSV1
        (&[0x83, 0x80, 0, 0, 0, 0], 1002), // reserved opcode 3
        (&[0x81, 0x00], 1002),             // unmasked client frame
        (&[0x09, 0x80, 0, 0, 0, 0], 1002), // fragmented ping
        (&[0x89, 0xFE, 0x00, 0x7E], 1002), // 126-byte ping
        (&[0x81, 0xFE, 0x00, 0x10], 1002), // 16-bit length used for 16 bytes
    ];
    for (bytes, code) in cases {
        let err = parse_all(bytes, 1 << 20).unwrap_err();
        assert_eq!(err.code, code, "{bytes:x?}");
    }
    let too_big = encode_masked_frame(true, OpCode::Text, &[b'a'; 2000], MASK);
    assert_eq!(
        parse_all(&too_big[..4], 1000).unwrap_err().code,
        1009,
        "refused from the header"
    );
}

#[test]
fn reassembles_fragments_around_a_ping() {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&encode_masked_frame(
        false,
        OpCode::Text,
        "hé".as_bytes(),
        MASK,
    ));
    bytes.extend_from_slice(&encode_masked_frame(true, OpCode::Ping, b"p", MASK));
    bytes.extend_from_slice(&encode_masked_frame(
        true,
        OpCode::Continuation,
        b"llo",
        MASK,
    ));
    let mut asm = MessageAssembler::new(1024);
    let mut out = Vec::new();
    for f in parse_all(&bytes, 1024).unwrap() {
        if let Some(m) = asm.push(f).unwrap() {
            out.push(m);
        }
    }
    assert!(matches!(&out[0], Message::Ping(p) if &p[..] == b"p"));
    assert!(matches!(&out[1], Message::Text(t) if &t[..] == "héllo".as_bytes()));
}

#[test]
fn utf8_split_across_fragments_is_accepted_and_bad_utf8_fails_fast() {
    let euro = "€".as_bytes(); // three bytes
    let mut asm = MessageAssembler::new(1024);
    let f = |fin, op, p: &[u8]| Frame {
        fin,
        rsv1: false,
        opcode: op,
        payload: BytesMut::from(p),
    };
    assert!(asm
        .push(f(false, OpCode::Text, &euro[..1]))
        .unwrap()
        .is_none());
    assert!(asm
        .push(f(false, OpCode::Continuation, &euro[1..2]))
        .unwrap()
        .is_none());
    let done = asm.push(f(true, OpCode::Continuation, &euro[2..])).unwrap();
    assert!(matches!(done, Some(Message::Text(t)) if &t[..] == euro));

    let mut asm = MessageAssembler::new(1024);
    let err = asm
        .push(f(false, OpCode::Text, &[0xce, 0xba, 0xff]))
        .unwrap_err();
    assert_eq!(
        err.code, 1007,
        "invalid byte is refused before the message ends"
    );
    let mut asm = MessageAssembler::new(1024);
    let err = asm.push(f(true, OpCode::Text, &euro[..2])).unwrap_err();
    assert_eq!(err.code, 1007, "a truncated sequence at the end is invalid");
}

#[test]
fn oversized_fragmented_message_is_dropped_not_fatal() {
    let mut asm = MessageAssembler::new(10);
    let f = |fin, op, p: &[u8]| Frame {
        fin,
        rsv1: false,
        opcode: op,
        payload: BytesMut::from(p),
    };
    assert!(asm
        .push(f(false, OpCode::Text, b"123456"))
        .unwrap()
        .is_none());
    assert!(asm
        .push(f(false, OpCode::Continuation, b"789012"))
        .unwrap()
        .is_none());
    assert!(matches!(
        asm.push(f(true, OpCode::Continuation, b"x")).unwrap(),
        Some(Message::TooLarge)
    ));
    let next = asm.push(f(true, OpCode::Text, b"ok")).unwrap();
    assert!(matches!(next, Some(Message::Text(t)) if &t[..] == b"ok"));
}

#[test]
fn fragmentation_errors() {
    let f = |fin, op, p: &[u8]| Frame {
        fin,
        rsv1: false,
        opcode: op,
        payload: BytesMut::from(p),
    };
    let mut asm = MessageAssembler::new(100);
    assert_eq!(
        asm.push(f(true, OpCode::Continuation, b"x"))
            .unwrap_err()
            .code,
        1002
    );
    let mut asm = MessageAssembler::new(100);
    asm.push(f(false, OpCode::Text, b"a")).unwrap();
    assert_eq!(
        asm.push(f(true, OpCode::Text, b"b")).unwrap_err().code,
        1002
    );
}

#[test]
fn close_payloads() {
    assert_eq!(parse_close_payload(&[]).unwrap(), None);
    assert_eq!(parse_close_payload(&[3]).unwrap_err().code, 1002);
    assert_eq!(
        parse_close_payload(&1005u16.to_be_bytes())
            .unwrap_err()
            .code,
        1002
    );
    assert_eq!(
        parse_close_payload(&999u16.to_be_bytes()).unwrap_err().code,
        1002
    );
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.push(0xff);
    assert_eq!(parse_close_payload(&bad_reason).unwrap_err().code, 1007);
    let mut ok = 4000u16.to_be_bytes().to_vec();
    ok.extend_from_slice(b"bye");
    assert_eq!(
        parse_close_payload(&ok).unwrap(),
        Some((4000, "bye".into()))
    );
}

#[test]
fn text_with_header_in_front_and_payload_of() {
    for len in [0usize, 5, 125, 126, 200, 65_535, 65_536, 70_000] {
        let body = vec![b'x'; len];
        let frame = encode_text_with(8, |out| out.put_slice(&body));
        assert_eq!(frame, encode_frame(OpCode::Text, &body));
        assert_eq!(payload_of(&frame), &body[..]);
    }
}

#[test]
fn mask_matches_bytewise_definition() {
    let data: Vec<u8> = (0..37).collect();
    let mut fast = data.clone();
    apply_mask(&mut fast, MASK);
    let slow: Vec<u8> = data
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ MASK[i % 4])
        .collect();
    assert_eq!(fast, slow);
}
