//! Writing JSON by hand: string literals escaped eight bytes at a time, and numbers, for the
//! server messages encoded straight into frame buffers.

use bytes::{BufMut, BytesMut};

/// How [`put_json_str`] writes each byte: 0 = as it is, `u` = `\u00XX`, any other value `c` =
/// a backslash and `c` (`\"`, `\\`, `\n`, `\r`, `\t`).
static JSON_ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Writes `s` as a JSON string literal.
///
/// Runs without anything to escape (nearly all of a chat message) are found eight bytes at a
/// time and copied with one `extend_from_slice` each; [`JSON_ESCAPE`] says how to write the
/// byte that ends a run.
pub fn put_json_str(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.put_u8(b'"');
    let mut start = 0;
    loop {
        let i = next_json_escape(bytes, start);
        out.extend_from_slice(&bytes[start..i]);
        let Some(&b) = bytes.get(i) else { break };
        match JSON_ESCAPE[b as usize] {
            b'u' => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]);
            }
            c => out.extend_from_slice(&[b'\\', c]),
        }
        start = i + 1;
    }
    out.put_u8(b'"');
}

/// The index of the first byte at or after `from` that JSON must escape (`"`, `\\`, below
/// 0x20), or `bytes.len()`.
///
/// Eight bytes at a time (SWAR): per byte lane, `(x - 1) & !x & 0x80` is set when `x` is 0 and
/// `(w - 0x20) & !w & 0x80` when `w < 0x20`. A lane can only be set wrongly above a lane that is
/// rightly set (a borrow runs upwards), so the lowest set lane is always the first match.
#[inline]
pub(super) fn next_json_escape(bytes: &[u8], from: usize) -> usize {
    const LANES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap());
        let quote = w ^ (LANES * b'"' as u64);
        let backslash = w ^ (LANES * b'\\' as u64);
        let hits = ((w.wrapping_sub(LANES * 0x20) & !w)
            | (quote.wrapping_sub(LANES) & !quote)
            | (backslash.wrapping_sub(LANES) & !backslash))
            & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < bytes.len() && JSON_ESCAPE[bytes[i] as usize] == 0 {
        i += 1;
    }
    i
}

pub(super) fn put_u64(out: &mut BytesMut, v: u64) {
    out.put_slice(itoa::Buffer::new().format(v).as_bytes());
}
