//! Arbitrary text messages: the protocol decoder must answer every input with a request or a
//! `RequestError`, never a panic, and stay usable afterwards.
#![no_main]

use chat_wire::protocol::{ClientOp, Decoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::default();
    let mut input = data.to_vec();
    if let Ok(op) = decoder.decode(&mut input) {
        // Whatever decodes is well-formed.
        match op {
            ClientOp::Join { room } | ClientOp::Leave { room } => assert!(!room.is_empty()),
            ClientOp::Send { cid, .. } | ClientOp::Dm { cid, .. } => assert!(!cid.is_empty()),
            ClientOp::History { limit, .. } => assert!((1..=100).contains(&limit)),
            ClientOp::Resume { room, .. }
            | ClientOp::Presence { room }
            | ClientOp::Typing { room }
            | ClientOp::Read { room, .. } => assert!(!room.is_empty()),
        }
    }
    let mut again = br#"{"type":"join","room":"r"}"#.to_vec();
    assert!(decoder.decode(&mut again).is_ok(), "decoder still works after any input");
});
