//! A minimal JSON object scanner: hands each top-level key of an object with its raw value to
//! a closure, without building a tree or unescaping. Every protocol the load generator speaks
//! (chat, Socket.IO, Pusher) reads only a few fields of each server message, and the names,
//! cids and bodies it compares are its own (no escapes), so raw slices are enough and cheap.

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
/// frames close an array after it).
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

#[inline]
pub fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// A string at `b[i] == '"'`: its raw contents and the index after the closing quote.
#[inline]
pub fn string(b: &[u8], i: usize) -> Option<(&[u8], usize)> {
    if *b.get(i)? != b'"' {
        return None;
    }
    let mut j = i + 1;
    loop {
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
}
