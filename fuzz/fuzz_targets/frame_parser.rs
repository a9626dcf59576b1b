//! Arbitrary bytes from a client, fed in two pieces: frame parsing, unmasking and message
//! reassembly must never panic, and must stop at the first error as the server does.
#![no_main]

use bytes::{BufMut, BytesMut};
use chat_wire::frame::{parse_frame, MessageAssembler, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % (data.len().max(1)));
    let mut buf = BytesMut::new();
    let mut asm = MessageAssembler::new(4096);
    for piece in [&data[..split], &data[split..]] {
        buf.put_slice(piece);
        loop {
            match parse_frame(&mut buf, Role::Server, 4096) {
                Ok(Some(frame)) => {
                    if asm.push(frame).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
