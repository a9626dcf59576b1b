//! `MsgView` refuses exactly what a `serde_json` derive of the same fields refused, and reads
//! the same values: the bus's routing head (room, seq, id, ts defaulting to 0) and the
//! persister's whole row. Hand-picked malformed inputs first, then proptest against
//! `serde_json` on generated and mutated objects.

use chat_wire::protocol::{Field, Msg, MsgError, MsgView};
use proptest::prelude::*;
use std::borrow::Cow;

#[path = "support/serde_msg.rs"]
mod serde_msg;
use serde_msg::{SerdeHead, SerdeRow};

type Head = (String, u64, String, u64);
type Full = (
    String,
    String,
    i64,
    String,
    String,
    i64,
    String,
    Option<String>,
);

fn head(b: &[u8]) -> Result<Head, MsgError> {
    let m = MsgView::parse(b)?;
    Ok((
        m.text(Field::Room)?.into_owned(),
        m.u64(Field::Seq)?,
        m.text(Field::Id)?.into_owned(),
        m.u64_or(Field::Ts, 0)?,
    ))
}

fn full(b: &[u8]) -> Result<Full, MsgError> {
    let m = MsgView::parse(b)?;
    Ok((
        m.text(Field::Type)?.into_owned(),
        m.text(Field::Room)?.into_owned(),
        m.i64(Field::Seq)?,
        m.text(Field::Id)?.into_owned(),
        m.text(Field::From)?.into_owned(),
        m.i64(Field::Ts)?,
        m.text(Field::Body)?.into_owned(),
        m.opt_text(Field::Cid)?.map(Cow::into_owned),
    ))
}

fn serde_head(b: &[u8]) -> Option<Head> {
    let h: SerdeHead = serde_json::from_slice(b).ok()?;
    Some((h.room.into_owned(), h.seq, h.id.into_owned(), h.ts))
}

fn serde_full(b: &[u8]) -> Option<Full> {
    let m: SerdeRow = serde_json::from_slice(b).ok()?;
    Some((
        m.kind.into_owned(),
        m.room.into_owned(),
        m.seq,
        m.id.into_owned(),
        m.from.into_owned(),
        m.ts,
        m.body.into_owned(),
        m.cid.map(Cow::into_owned),
    ))
}

/// Both readers agree with serde on `b`; true when the full read accepted it.
fn agree(b: &[u8]) -> bool {
    let show = String::from_utf8_lossy(b);
    assert_eq!(head(b).ok(), serde_head(b), "head of {show}");
    assert_eq!(full(b).ok(), serde_full(b), "full read of {show}");
    serde_full(b).is_some()
}

fn encoded(body: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    Msg {
        room: "lobby",
        seq: 42,
        id: "5f3a-1-2a",
        from: "alice",
        ts: 1_700_000_000_123,
        body,
        cid: "c-1",
    }
    .encode(&mut out);
    out.to_vec()
}

#[test]
fn reads_what_msg_encode_writes() {
    let body = "he said \"hi\"\n\t\\ caf\u{e9} \u{1F600} \u{1}";
    let b = encoded(body);
    assert!(agree(&b));
    let row = full(&b).unwrap();
    assert_eq!(
        (row.2, row.5, row.6.as_str()),
        (42, 1_700_000_000_123, body)
    );
    let m = MsgView::parse(&b).unwrap();
    assert!(matches!(m.text(Field::Room), Ok(Cow::Borrowed("lobby"))));
    assert!(matches!(m.text(Field::Body), Ok(Cow::Owned(_))));
}

#[test]
fn refuses_malformed_input_like_serde() {
    let valid = encoded("a \"b\" c");
    // Truncated anywhere.
    for n in 0..valid.len() {
        assert!(!agree(&valid[..n]), "prefix of {n} bytes");
    }
    let cases: &[&[u8]] = &[
        // Trailing garbage, trailing comma, two objects.
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b"}x"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b",}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b"}{}"#,
        // Wrong types.
        br#"{"type":"msg","room":"r","seq":"1","id":"i","from":"u","ts":0,"body":"b"}"#,
        br#"{"type":"msg","room":7,"seq":1,"id":"i","from":"u","ts":0,"body":"b"}"#,
        br#"{"type":"msg","room":"r","seq":1.0,"id":"i","from":"u","ts":0,"body":"b"}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":null}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":-0,"body":"b"}"#,
        br#"{"type":"msg","room":"r","seq":9223372036854775808,"id":"i","from":"u","ts":0,"body":"b"}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b","cid":5}"#,
        // Missing and repeated fields.
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","body":"b"}"#,
        br#"{"type":"msg","room":"r","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b"}"#,
        br#"{"type":"msg","room":"r","r\u006fom":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b"}"#,
        // Bad escapes, lone surrogates, control characters, bad UTF-8 (in any string).
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"\x"}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"\u12g4"}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"\ud800"}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"\udc00"}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"\ud800\u0041"}"#,
        b"{\"type\":\"msg\",\"room\":\"r\",\"seq\":1,\"id\":\"i\",\"from\":\"u\",\"ts\":0,\"body\":\"\x01\"}",
        b"{\"type\":\"msg\",\"room\":\"r\",\"seq\":1,\"id\":\"i\",\"from\":\"u\",\"ts\":0,\"body\":\"\xff\"}",
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b","x":"\q"}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b","\ud800":1}"#,
        // Malformed values nobody reads.
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b","x":[1,]}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b","x":01}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b","x":nul}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b","x":{"a"}}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b","x":[}"#,
        br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b","x":1.}"#,
        // Not an object.
        b"not json",
        b"\xff\xfe binary",
        b"",
    ];
    for case in cases {
        assert!(!agree(case), "{}", String::from_utf8_lossy(case));
    }
    // And what serde let through, so do we: unknown keys, whitespace, null cid, escaped keys,
    // bad UTF-8 and unpaired surrogate escapes in strings nobody reads.
    let accepted: &[&[u8]] = &[
        b" {\"type\" : \"msg\" ,\"room\":\"r\",\"seq\":1,\"id\":\"i\",\"from\":\"u\",\"ts\":0,\"body\":\"b\",\"cid\":null} \n",
        br#"{"t\u0079pe":"msg","room":"r","seq":1,"id":"i","from":"u","ts":-5,"body":"b","x":[1,{"a":[]},"\ud800"]}"#,
        b"{\"type\":\"msg\",\"room\":\"r\",\"seq\":1,\"id\":\"i\",\"from\":\"u\",\"ts\":0,\"body\":\"b\",\"x\":\"\xff\",\"y\":1e400}",
    ];
    for case in accepted {
        assert!(agree(case), "{}", String::from_utf8_lossy(case));
    }
}

/// Pieces of members: keys (known, unknown, escaped) and values of every kind, valid or not.
const KEYS: &[&str] = &[
    "type",
    "room",
    "seq",
    "id",
    "from",
    "ts",
    "body",
    "cid",
    "x",
    r"r\u006fom",
    r"\ud800",
];
const VALUES: &[&str] = &[
    r#""msg""#,
    r#""r""#,
    r#""a\"b\u00e9\n""#,
    r#""\ud83d\ude00""#,
    r#""\ud800""#,
    r#""\udc00x""#,
    r#""\q""#,
    "\"\u{1}\"",
    "\"\u{7f}\"",
    "0",
    "1",
    "-1",
    "-0",
    "01",
    "1.5",
    "1e3",
    "1.",
    "-",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "null",
    "true",
    "fals",
    "[]",
    "[1,]",
    "[1,[2,{\"k\":\"v\"}]]",
    "{}",
    "{\"a\":}",
    "{\"a\":1,}",
    "\"",
];

fn object() -> impl Strategy<Value = Vec<u8>> {
    let member = (0..KEYS.len(), 0..VALUES.len(), 0..3usize);
    prop::collection::vec(member, 0..10).prop_map(|members| {
        let mut s = String::from("{");
        for (n, (k, v, space)) in members.into_iter().enumerate() {
            if n > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                "\"{}\"{}:{}",
                KEYS[k],
                " ".repeat(space),
                VALUES[v]
            ));
        }
        s.push('}');
        s.into_bytes()
    })
}

/// A valid `msg` with its members in a random order.
fn shuffled_valid() -> impl Strategy<Value = Vec<u8>> {
    let members = [
        r#""type":"msg""#,
        r#""room":"r""#,
        r#""seq":7"#,
        r#""id":"i""#,
        r#""from":"u""#,
        r#""ts":1700000000000"#,
        r#""body":"hi \"you\"""#,
        r#""cid":"c""#,
    ];
    Just(members.to_vec())
        .prop_shuffle()
        .prop_map(|m| format!("{{{}}}", m.join(",")).into_bytes())
}

/// A `msg` whose fields are each present or not, good or any of [`VALUES`], maybe repeated,
/// among unknown members, in a random order: read in full about one time in twenty.
fn msg_like() -> impl Strategy<Value = Vec<u8>> {
    let good = [
        r#""msg""#,
        r#""r""#,
        "9223372036854775807",
        r#""i\/d""#,
        r#""u""#,
        "-62135596800000",
        r#""caf\u00e9 \ud83d\ude00""#,
        "null",
    ];
    let field = |k: usize| {
        prop_oneof![
            12 => Just(vec![(k, good[k].to_string())]),
            1 => Just(vec![]),
            2 => (0..VALUES.len()).prop_map(move |v| vec![(k, VALUES[v].to_string())]),
            1 => Just(vec![(k, good[k].to_string()), (k, good[k].to_string())]),
        ]
    };
    let fields: Vec<_> = (0..8).map(field).collect();
    let extra = prop::collection::vec((8..KEYS.len(), 0..VALUES.len()), 0..3);
    (fields, extra)
        .prop_map(|(fields, extra)| {
            let mut members: Vec<String> = fields
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("\"{}\":{v}", KEYS[k]))
                .collect();
            members.extend(
                extra
                    .into_iter()
                    .map(|(k, v)| format!("\"{}\":{}", KEYS[k], VALUES[v])),
            );
            members
        })
        .prop_shuffle()
        .prop_map(|m| format!("{{{}}}", m.join(",")).into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn generated_objects(b in object()) {
        agree(&b);
    }

    #[test]
    fn generated_msgs(b in msg_like()) {
        agree(&b);
    }

    #[test]
    fn mutated_messages(
        b in shuffled_valid(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let mut b = b;
        for (at, byte, op) in edits {
            let i = at.index(b.len() + 1);
            // Bytes that matter to JSON more often than uniformly random ones.
            let byte = match byte % 4 {
                0 => b"\"\\{}[],:0-eu \x01\xc3"[byte as usize % 15],
                _ => byte,
            };
            match op {
                0 => b.insert(i, byte),
                1 if i < b.len() => { b.remove(i); }
                _ if i < b.len() => b[i] = byte,
                _ => {}
            }
        }
        agree(&b);
    }
}
