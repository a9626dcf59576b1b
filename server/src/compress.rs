//! permessage-deflate on the way out: each message compressed once per core, whatever the
//! number of members.
//!
//! Every connection that negotiated permessage-deflate did so with `server_no_context_takeover`
//! (see `chat_wire::deflate`), so a compressed message depends on nothing but its own bytes and
//! the window size. A core delivers a room message by handing the same `Bytes` frame to each
//! member's queue in a row; the first member that wants it compressed compresses it, and the
//! others on this core get the same compressed `Bytes` (a reference count), found in a small
//! cache keyed by the plain frame's address. The cache holds a clone of each plain frame it
//! keys on, so no other frame can be allocated at that address while the entry lives.
//!
//! Small frames (acks, typing, presence events) go uncompressed: RFC 7692 lets a sender choose
//! per message, and under [`MIN_PAYLOAD`] bytes DEFLATE saves little or grows the frame.

use bytes::Bytes;
use chat_wire::deflate::Deflater;
use chat_wire::frame::payload_of;
use std::cell::RefCell;

/// Text frames with a payload under this many bytes are sent as they are.
pub const MIN_PAYLOAD: usize = 128;

/// Compressed frames remembered per core: a message and the few just before it (members that
/// were waiting for their `joined` get theirs a little later).
const CACHE: usize = 8;

#[derive(Default)]
struct Core {
    deflater: Deflater,
    /// (plain frame, window bits, compressed frame), the newest last.
    recent: Vec<(Bytes, u8, Bytes)>,
}

thread_local! {
    static CORE: RefCell<Core> = RefCell::new(Core::default());
}

/// What to queue for a connection that negotiated a window of `window_bits`: the compressed
/// form of an unfragmented text frame (made at most once per core), or the frame itself.
/// The second value says whether a compression ran.
pub fn for_connection(frame: &Bytes, window_bits: u8) -> (Bytes, bool) {
    // Only whole unmasked text frames (FIN + text, no RSV bits) of some size.
    if frame.len() < MIN_PAYLOAD + 2 || frame[0] != 0x81 {
        return (frame.clone(), false);
    }
    CORE.with_borrow_mut(|core| {
        let hit = core.recent.iter().find(|(plain, bits, _)| {
            *bits == window_bits && plain.as_ptr() == frame.as_ptr() && plain.len() == frame.len()
        });
        if let Some((_, _, compressed)) = hit {
            return (compressed.clone(), false);
        }
        let compressed = core.deflater.text_frame(&payload_of(frame), window_bits);
        // Incompressible (already compressed, random): the plain frame is smaller.
        let out = if compressed.len() < frame.len() {
            compressed
        } else {
            frame.clone()
        };
        if core.recent.len() == CACHE {
            core.recent.remove(0);
        }
        core.recent.push((frame.clone(), window_bits, out.clone()));
        (out, true)
    })
}
