//! Scanning a JSON object's top-level members without building a tree: each key with its raw
//! value, handed to a closure. Two modes:
//!
//! * [`walk`], lenient and cheap: strings are found, not checked, and other values end at the
//!   next delimiter. The load generator reads every server message with it (the names, cids and
//!   bodies it compares are its own), and the Socket.IO and Pusher parsers too.
//! * [`walk_strict`]: the whole object is checked the way `serde_json` checks it (RFC 8259
//!   grammar, no control characters or bad escapes in strings, no trailing commas), so that a
//!   reader built on it refuses exactly what a `serde_json` derive refused. Values stay raw;
//!   [`unescape`] turns a string's contents into text (UTF-8 and surrogate pairs checked), for
//!   the fields a reader needs. [`super::MsgView`] is such a reader.

use super::json::next_json_escape;
use std::borrow::Cow;
use std::fmt;

/// A top-level value: a string's raw (still escaped) contents, or any other value's raw text
/// (numbers, `true`/`false`/`null`, nested objects and arrays).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Val<'a> {
    Str(&'a [u8]),
    Raw(&'a [u8]),
}

/// Walks the object starting at `b` (leading whitespace allowed), calling `f(key, value)` for
/// every top-level member; returns the index after the closing `}`, or `None` when `b` does
/// not start with a well-formed object. Anything after the object is left alone (Socket.IO
/// frames close an array after it). Keys are raw too.
pub fn walk<'a>(b: &'a [u8], mut f: impl FnMut(&'a [u8], Val<'a>)) -> Option<usize> {
    let mut i = ws(b, 0);
    if *b.get(i)? != b'{' {
        return None;
    }
    i = ws(b, i + 1);
    if *b.get(i)? == b'}' {
        return Some(i + 1);
    }
    loop {
        let (key, next) = string(b, i)?;
        i = ws(b, next);
        if *b.get(i)? != b':' {
            return None;
        }
        i = ws(b, i + 1);
        let start = i;
        match *b.get(i)? {
            b'"' => {
                let (v, next) = string(b, i)?;
                i = next;
                f(key, Val::Str(v));
            }
            b'{' | b'[' => {
                i = skip_nested(b, i)?;
                f(key, Val::Raw(&b[start..i]));
            }
            _ => {
                while i < b.len() && !matches!(b[i], b',' | b'}' | b' ' | b'\n' | b'\r' | b'\t') {
                    i += 1;
                }
                f(key, Val::Raw(&b[start..i]));
            }
        }
        i = ws(b, i);
        match *b.get(i)? {
            b',' => i = ws(b, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The index of the first byte at or after `i` that is not JSON whitespace.
#[inline]
pub fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// A string at `b[i] == '"'`: its raw contents and the index after the closing quote. Lenient:
/// a backslash skips the byte after it, nothing else is checked.
#[inline]
pub fn string(b: &[u8], i: usize) -> Option<(&[u8], usize)> {
    if *b.get(i)? != b'"' {
        return None;
    }
    let mut j = i + 1;
    loop {
        // Eight bytes at a time to the next '"', '\\' or control character (skipped here).
        j = next_json_escape(b, j);
        match *b.get(j)? {
            b'"' => return Some((&b[i + 1..j], j + 1)),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
}

/// Skips an object or array starting at `b[i]`, strings and all; returns the index after it.
fn skip_nested(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *b.get(i)? {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'"' => {
                i = string(b, i)?.1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
}

/// Why [`walk_strict`] refused its input: what it expected, at which byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanError {
    pub at: usize,
    pub expected: &'static str,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {} at byte {}", self.expected, self.at)
    }
}

impl std::error::Error for ScanError {}

fn fail<T>(at: usize, expected: &'static str) -> Result<T, ScanError> {
    Err(ScanError { at, expected })
}

/// Walks the object starting at `b` like [`walk`], but checks everything on the way the way
/// `serde_json` does: keys are unescaped and must be UTF-8 (they are text); string values must
/// hold no control character and only valid escapes (their UTF-8 is checked by [`unescape`],
/// when a reader wants their text); numbers, literals and nested values must be well-formed.
/// Returns the index after the closing `}`; what follows is the caller's.
pub fn walk_strict<'a>(
    b: &'a [u8],
    f: impl FnMut(Cow<'a, str>, Val<'a>),
) -> Result<usize, ScanError> {
    walk_strict_keyed(b, unescape, f)
}

/// [`walk_strict`] with the keys turned into `K` by `key`, from their raw contents: a reader
/// that knows its keys matches them as bytes. `key` must refuse what [`unescape`] refuses.
pub(super) fn walk_strict_keyed<'a, K>(
    b: &'a [u8],
    mut key: impl FnMut(&'a [u8]) -> Result<K, TextError>,
    mut f: impl FnMut(K, Val<'a>),
) -> Result<usize, ScanError> {
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return fail(i, "an object");
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(i + 1);
    }
    loop {
        let (raw, next) = strict_string(b, i, "a key (a string)")?;
        let k = key(raw).map_err(|e| ScanError {
            at: i,
            expected: e.expected(),
        })?;
        i = ws(b, next);
        if b.get(i) != Some(&b':') {
            return fail(i, "':'");
        }
        i = ws(b, i + 1);
        let start = i;
        i = strict_value(b, i)?;
        f(
            k,
            match b[start] {
                b'"' => Val::Str(&b[start + 1..i - 1]),
                _ => Val::Raw(&b[start..i]),
            },
        );
        i = ws(b, i);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return Ok(i + 1),
            _ => return fail(i, "',' or '}'"),
        }
    }
}

/// A string at `b[i]`, checked: its raw contents and the index after the closing quote.
fn strict_string<'a>(
    b: &'a [u8],
    i: usize,
    what: &'static str,
) -> Result<(&'a [u8], usize), ScanError> {
    if b.get(i) != Some(&b'"') {
        return fail(i, what);
    }
    let mut j = i + 1;
    loop {
        j = next_json_escape(b, j);
        match b.get(j) {
            Some(b'"') => return Ok((&b[i + 1..j], j + 1)),
            Some(b'\\') => {
                j = match b.get(j + 1) {
                    Some(&e) if UNESCAPE[e as usize] != 0 => j + 2,
                    Some(b'u') if b.get(j + 2..j + 6).is_some_and(|h| hex4(h).is_some()) => j + 6,
                    _ => return fail(j, "a valid escape"),
                }
            }
            Some(_) => return fail(j, "no control character in a string"),
            None => return fail(j, "the end of the string"),
        }
    }
}

/// The end of the value at `b[i]` (whitespace skipped already), checked to the end.
fn strict_value(b: &[u8], i: usize) -> Result<usize, ScanError> {
    match b.get(i) {
        Some(b'"') => strict_string(b, i, "a string").map(|(_, next)| next),
        Some(b'{' | b'[') => strict_nested(b, i),
        Some(b't') => literal(b, i, b"true"),
        Some(b'f') => literal(b, i, b"false"),
        Some(b'n') => literal(b, i, b"null"),
        Some(b'-' | b'0'..=b'9') => number(b, i),
        _ => fail(i, "a value"),
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, ScanError> {
    match b.get(i..i + word.len()) {
        Some(w) if w == word => Ok(i + word.len()),
        _ => fail(i, "true, false or null"),
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn number(b: &[u8], mut i: usize) -> Result<usize, ScanError> {
    let digits = |b: &[u8], mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i).ok_or(ScanError {
            at: i,
            expected: "a digit",
        })
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i) {
        Some(b'0') if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
            return fail(i + 1, "no leading zero")
        }
        Some(b'0') => i + 1,
        _ => digits(b, i)?,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    Ok(i)
}

/// The end of the object or array at `b[i]`, every member checked. Iterative, with the open
/// brackets on a stack (which stays unallocated for a flat one): any depth is accepted, as
/// `serde_json` accepts it for a value it ignores.
fn strict_nested(b: &[u8], mut i: usize) -> Result<usize, ScanError> {
    let mut open: Vec<u8> = Vec::new();
    loop {
        // `i` is where a value should start (whitespace skipped).
        match b.get(i) {
            Some(&c @ (b'{' | b'[')) => {
                let close = if c == b'{' { b'}' } else { b']' };
                i = ws(b, i + 1);
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    open.push(close);
                    if close == b'}' {
                        i = member_value(b, i)?;
                    }
                    continue;
                }
            }
            _ => i = strict_value(b, i)?,
        }
        // After a value: close what ends here, then on to the next member.
        loop {
            let Some(&close) = open.last() else {
                return Ok(i);
            };
            i = ws(b, i);
            match b.get(i) {
                Some(b',') => {
                    i = ws(b, i + 1);
                    if close == b'}' {
                        i = member_value(b, i)?;
                    }
                    break;
                }
                Some(&c) if c == close => {
                    open.pop();
                    i += 1;
                }
                _ if close == b'}' => return fail(i, "',' or '}'"),
                _ => return fail(i, "',' or ']'"),
            }
        }
    }
}

/// At a nested object's key: skips `"key" :` and returns where its value starts.
fn member_value(b: &[u8], i: usize) -> Result<usize, ScanError> {
    let (_, next) = strict_string(b, i, "a key (a string)")?;
    let i = ws(b, next);
    if b.get(i) != Some(&b':') {
        return fail(i, "':'");
    }
    Ok(ws(b, i + 1))
}

/// What the byte after a backslash stands for; 0 for none (`u` is apart: four hex digits
/// follow). A table, not a `match`: chat text mixes escapes, and a jump per escape mispredicts.
static UNESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[b'/' as usize] = b'/';
    table[b'b' as usize] = 0x08;
    table[b'f' as usize] = 0x0c;
    table[b'n' as usize] = b'\n';
    table[b'r' as usize] = b'\r';
    table[b't' as usize] = b'\t';
    table
};

fn hex4(h: &[u8]) -> Option<u16> {
    h.iter().try_fold(0u16, |n, &c| {
        Some(n << 4 | (c as char).to_digit(16)? as u16)
    })
}

/// Why a string's contents are not text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextError {
    Utf8,
    Escape,
    LoneSurrogate,
}

impl TextError {
    fn expected(self) -> &'static str {
        match self {
            TextError::Utf8 => "UTF-8",
            TextError::Escape => "a valid escape",
            TextError::LoneSurrogate => "no lone surrogate in a \\u escape",
        }
    }
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextError::Utf8 => "invalid UTF-8",
            TextError::Escape => "invalid escape",
            TextError::LoneSurrogate => "lone surrogate in a \\u escape",
        })
    }
}

/// The text of a string's raw contents (a [`Val::Str`]): borrowed when there is no escape.
/// Checked like `serde_json` checks a string it deserializes: UTF-8, valid escapes, `\u`
/// surrogates in pairs. (Control characters are [`walk_strict`]'s to refuse.)
pub fn unescape(raw: &[u8]) -> Result<Cow<'_, str>, TextError> {
    if !raw.contains(&b'\\') {
        let text = if raw.len() < 64 {
            std::str::from_utf8(raw).ok()
        } else {
            simdutf8::basic::from_utf8(raw).ok()
        };
        return text.map(Cow::Borrowed).ok_or(TextError::Utf8);
    }
    // Escapes decoded byte-wise; the result checked as UTF-8 once at the end, which is the
    // same as checking `raw`: an escape is ASCII and decodes to whole characters.
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    loop {
        // Eight bytes at a time: each chunk copied whole (a fixed-size copy, not a call), then
        // cut back to the backslash in it, if any. Quotes and control characters cannot be in
        // what `walk_strict` accepted; here they are copied like the rest.
        while let Some(chunk) = raw.get(i..i + 8) {
            let chunk: &[u8; 8] = chunk.try_into().unwrap();
            let len = out.len();
            out.extend_from_slice(chunk);
            let w = u64::from_le_bytes(*chunk) ^ (LANES * u64::from(b'\\'));
            let hits = w.wrapping_sub(LANES) & !w & (LANES << 7);
            if hits == 0 {
                i += 8;
                continue;
            }
            let k = (hits.trailing_zeros() / 8) as usize;
            out.truncate(len + k);
            i += k;
            break;
        }
        while raw.get(i).is_some_and(|&c| c != b'\\') {
            out.push(raw[i]);
            i += 1;
        }
        if i == raw.len() {
            break;
        }
        let e = *raw.get(i + 1).ok_or(TextError::Escape)?;
        match UNESCAPE[e as usize] {
            0 if e == b'u' => {
                let (c, len) = unicode_escape(&raw[i..])?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                i += len;
            }
            0 => return Err(TextError::Escape),
            c => {
                out.push(c);
                i += 2;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| TextError::Utf8)
}

const LANES: u64 = 0x0101_0101_0101_0101;

/// `\uXXXX`, or a surrogate pair `\uD8XX\uDCXX`, at the start of `s`: the character and the
/// bytes it took.
fn unicode_escape(s: &[u8]) -> Result<(char, usize), TextError> {
    let unit = |at: usize| s.get(at..at + 4).and_then(hex4).ok_or(TextError::Escape);
    let n = unit(2)?;
    match n {
        0xDC00..=0xDFFF => Err(TextError::LoneSurrogate),
        0xD800..=0xDBFF => {
            if s.get(6..8) != Some(b"\\u") {
                return Err(TextError::LoneSurrogate);
            }
            let low = unit(8)?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return Err(TextError::LoneSurrogate);
            }
            let c = 0x1_0000 + ((u32::from(n) - 0xD800) << 10 | (u32::from(low) - 0xDC00));
            Ok((char::from_u32(c).ok_or(TextError::LoneSurrogate)?, 12))
        }
        _ => Ok((char::from_u32(n.into()).ok_or(TextError::Escape)?, 6)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_top_level_members_only() {
        let b = br#" {"a":"x\"y","n":12,"o":{"a":"inner"},"l":[1,"]"],"t":true}]"#;
        let mut seen = Vec::new();
        let end = walk(b, |k, v| seen.push((k.to_vec(), v))).unwrap();
        assert_eq!(&b[end..], b"]");
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[0], (b"a".to_vec(), Val::Str(br#"x\"y"#)));
        assert_eq!(seen[1], (b"n".to_vec(), Val::Raw(b"12")));
        assert_eq!(seen[2].1, Val::Raw(br#"{"a":"inner"}"#));
        assert_eq!(seen[3].1, Val::Raw(br#"[1,"]"]"#));
        assert_eq!(seen[4].1, Val::Raw(b"true"));
        assert_eq!(walk(b"{}", |_, _| panic!("no members")), Some(2));
        assert_eq!(walk(b"[1]", |_, _| {}), None);
        assert_eq!(walk(br#"{"a":1"#, |_, _| {}), None);
        assert_eq!(walk(br#"{"a" 1}"#, |_, _| {}), None);
    }

    #[test]
    fn strict_walk_sees_the_same_members_and_refuses_the_malformed() {
        let b = br#" {"a":"x\"y","n":12,"o":{"a":"inner"},"l":[1,"]"],"t":true}]"#;
        let (mut lenient, mut strict) = (Vec::new(), Vec::new());
        let end = walk(b, |k, v| lenient.push((k.to_vec(), v))).unwrap();
        let strict_end = walk_strict(b, |k, v| strict.push((k.as_bytes().to_vec(), v))).unwrap();
        assert_eq!((lenient, end), (strict, strict_end));
        for bad in [
            &br#"{"a":tru}"#[..],
            br#"{"a":1,}"#,
            br#"{"a":[1 2]}"#,
            br#"{"a":{"b" 1}}"#,
            br#"{"a":"\x"}"#,
            b"{\"a\":\"\x01\"}",
            br#"{"\ud800":1}"#,
            b"{\"\xff\":1}",
            br#"{"a":[1,{"b":[]},{"c":{}}]"#,
        ] {
            assert!(walk_strict(bad, |_, _| {}).is_err(), "{bad:?}");
        }
        assert_eq!(
            unescape(br"a\u00e9\ud83d\ude00\/"),
            Ok(Cow::Owned("a\u{e9}\u{1F600}/".into()))
        );
        assert_eq!(unescape(br"\ud83d"), Err(TextError::LoneSurrogate));
        assert_eq!(unescape(b"\xc3"), Err(TextError::Utf8));
    }
}
