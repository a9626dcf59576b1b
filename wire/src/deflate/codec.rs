//! Compressing a server message once, and inflating a client's, within a bound.
//!
//! Both follow RFC 7692 section 7.2: a message is raw DEFLATE ended with a sync flush, whose
//! trailing `00 00 ff ff` is taken off before sending and put back before inflating.

use crate::frame::{compressed_text_header, MAX_HEADER};
use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The sync flush marker every compressed message ends with (section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib level 6 would save a few more bytes on 4 KiB bodies for about twice the CPU; chat
/// messages are short and mostly text, where the fast levels get nearly the same ratio.
const LEVEL: u32 = 3;

/// Compresses messages without context takeover, keeping one compressor per window size
/// (reset, not rebuilt, for each message).
#[derive(Default)]
pub struct Deflater {
    /// Indexed by window bits - 9.
    by_window: [Option<Compress>; 7],
}

impl Deflater {
    /// The compressed text frame (`FIN|RSV1|text`) carrying `payload`, compressed with a
    /// window of `window_bits` (9 to 15).
    pub fn text_frame(&mut self, payload: &[u8], window_bits: u8) -> Bytes {
        let bits = window_bits.clamp(9, 15);
        let c = self.by_window[(bits - 9) as usize].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(LEVEL), false, bits)
        });
        c.reset();
        let mut out = Vec::with_capacity(MAX_HEADER + payload.len() / 2 + 64);
        out.resize(MAX_HEADER, 0);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity());
            }
            let before = c.total_in();
            c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
                .expect("deflate on a valid stream does not fail");
            consumed += (c.total_in() - before) as usize;
            // The flush is complete once all input is in and the output was not filled.
            if consumed == payload.len() && out.len() < out.capacity() {
                break;
            }
        }
        debug_assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
        let len = out.len() - MAX_HEADER;
        let (head, n) = compressed_text_header(len);
        let start = MAX_HEADER - n;
        out[start..MAX_HEADER].copy_from_slice(&head[..n]);
        Bytes::from(out).slice(start..)
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit (close 1009); inflating stopped there.
    TooBig,
    /// Not valid DEFLATE data (close 1007).
    Corrupt,
}

/// Inflates one peer's messages, keeping its LZ77 context between them (the peer decides
/// whether it refers back).
pub struct Inflater {
    d: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            d: Decompress::new_with_window_bits(false, 15),
        }
    }
}

impl Inflater {
    /// Inflates one message (its frames' payloads joined). At most `max + 1` bytes are ever
    /// produced: a message over `max` is [`InflateError::TooBig`] however far it would go.
    pub fn inflate(&mut self, data: &[u8], max: usize) -> Result<BytesMut, InflateError> {
        let mut out: Vec<u8> = Vec::with_capacity((data.len() * 3).max(256).min(max + 1));
        for input in [data, &TAIL[..]] {
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(InflateError::TooBig);
                    }
                    out.reserve_exact(out.capacity().min(max + 1 - out.len()));
                }
                let (in0, out0) = (self.d.total_in(), self.d.total_out());
                let status = self
                    .d
                    .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                pos += (self.d.total_in() - in0) as usize;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block: the peer's stream ended; the next message starts afresh.
                    self.d.reset(false);
                    return Ok(into_bytes_mut(out));
                }
                let progressed = self.d.total_in() != in0 || self.d.total_out() != out0;
                if pos == input.len() && out.len() < out.capacity() {
                    break;
                }
                if !progressed && out.len() < out.capacity() {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(into_bytes_mut(out))
    }
}

fn into_bytes_mut(v: Vec<u8>) -> BytesMut {
    Bytes::from(v)
        .try_into_mut()
        .unwrap_or_else(|b| BytesMut::from(&b[..]))
}
