//! Arbitrary bytes from a client that negotiated permessage-deflate: frames with RSV1 are
//! inflated (the input's compressed messages are whatever the fuzzer makes of them). Parsing,
//! inflating and reassembly must never panic, never produce a message over the limit, and stop
//! at the first error as the server does.
#![no_main]

use bytes::{BufMut, BytesMut};
use chat_wire::frame::{parse_frame_ext, Message, MessageAssembler, Role};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % (data.len().max(1)));
    let mut buf = BytesMut::new();
    let mut asm = MessageAssembler::with_inflater(LIMIT);
    for piece in [&data[..split], &data[split..]] {
        buf.put_slice(piece);
        loop {
            match parse_frame_ext(&mut buf, Role::Server, LIMIT, true) {
                Ok(Some(frame)) => match asm.push(frame) {
                    Ok(Some(Message::Text(m) | Message::Binary(m))) => {
                        assert!(m.len() <= LIMIT, "a message past the limit got through")
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
