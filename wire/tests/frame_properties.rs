//! Property tests: frames and fragmented messages survive encode -> split anywhere -> parse ->
//! reassemble for arbitrary payloads, masks and fragmentations; arbitrary bytes never panic.

use bytes::{BufMut, BytesMut};
use chat_wire::frame::{
    encode_frame, encode_masked_frame, encode_text_with, parse_frame, Frame, FrameError, Message,
    MessageAssembler, OpCode, Role,
};
use proptest::prelude::*;

const MAX: usize = 1 << 20;

/// Feeds `bytes` in the given chunk sizes; returns every frame parsed and how many bytes were
/// left over (an incomplete last frame).
fn feed(
    bytes: &[u8],
    chunks: &[usize],
    role: Role,
    max: usize,
) -> Result<(Vec<Frame>, usize), FrameError> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut sizes = chunks.iter().cycle();
    while at < bytes.len() {
        let n = (*sizes.next().unwrap()).clamp(1, bytes.len() - at);
        buf.put_slice(&bytes[at..at + n]);
        at += n;
        while let Some(f) = parse_frame(&mut buf, role, max)? {
            frames.push(f);
        }
    }
    Ok((frames, buf.len()))
}

/// Parses complete frames: nothing may be left over.
fn parse_in_chunks(bytes: &[u8], chunks: &[usize], role: Role) -> Result<Vec<Frame>, FrameError> {
    let (frames, left) = feed(bytes, chunks, role, MAX)?;
    assert_eq!(left, 0, "bytes left over after the last frame");
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn masked_frames_round_trip(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..70_000), 1..4),
        mask in any::<[u8; 4]>(),
        chunks in prop::collection::vec(1usize..5000, 1..8),
    ) {
        let mut wire = Vec::new();
        for p in &payloads {
            wire.extend_from_slice(&encode_masked_frame(true, OpCode::Binary, p, mask));
        }
        let frames = parse_in_chunks(&wire, &chunks, Role::Server).unwrap();
        prop_assert_eq!(frames.len(), payloads.len());
        for (f, p) in frames.iter().zip(&payloads) {
            prop_assert!(f.fin);
            prop_assert_eq!(f.opcode, OpCode::Binary);
            prop_assert_eq!(&f.payload[..], &p[..]);
        }
    }

    #[test]
    fn server_frames_round_trip(payload in prop::collection::vec(any::<u8>(), 0..70_000)) {
        for frame in [encode_frame(OpCode::Text, &payload), encode_text_with(16, |b| b.put_slice(&payload))] {
            let frames = parse_in_chunks(&frame, &[7, 1, 300], Role::Client).unwrap();
            prop_assert_eq!(frames.len(), 1);
            prop_assert_eq!(&frames[0].payload[..], &payload[..]);
        }
    }

    #[test]
    fn fragmented_text_reassembles_with_pings_between(
        text in "\\PC{0,2000}",
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ping_after in prop::collection::vec(any::<bool>(), 12),
        mask in any::<[u8; 4]>(),
    ) {
        let bytes = text.as_bytes();
        // Cut anywhere, also inside a multi-byte character.
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort();
        points.dedup();
        let pieces: Vec<&[u8]> = if points.len() < 2 { vec![bytes] } else { points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect() };
        let mut wire = Vec::new();
        let mut pings = 0;
        for (i, piece) in pieces.iter().enumerate() {
            let op = if i == 0 { OpCode::Text } else { OpCode::Continuation };
            wire.extend_from_slice(&encode_masked_frame(i + 1 == pieces.len(), op, piece, mask));
            if i + 1 < pieces.len() && ping_after[i % ping_after.len()] {
                wire.extend_from_slice(&encode_masked_frame(true, OpCode::Ping, b"p", mask));
                pings += 1;
            }
        }
        let mut asm = MessageAssembler::new(MAX);
        let mut got_pings = 0;
        let mut texts = Vec::new();
        for f in parse_in_chunks(&wire, &[3, 11, 1], Role::Server).unwrap() {
            match asm.push(f).unwrap() {
                Some(Message::Ping(_)) => got_pings += 1,
                Some(Message::Text(t)) => texts.push(t),
                None => {}
                Some(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(got_pings, pings);
        prop_assert_eq!(texts.len(), 1);
        prop_assert_eq!(&texts[0][..], bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096), chunks in prop::collection::vec(1usize..64, 1..4)) {
        let mut asm = MessageAssembler::new(1024);
        if let Ok((frames, _)) = feed(&bytes, &chunks, Role::Server, 1024) {
            for f in frames {
                if asm.push(f).is_err() {
                    break;
                }
            }
        }
    }
}
