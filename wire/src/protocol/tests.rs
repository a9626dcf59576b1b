//! The protocol tests: every request type decoded, every bad request refused with its reason
//! and cid, the encoders' JSON (escapes byte by byte and against a reference), every reply.

use super::*;
use crate::frame::payload_of;
use bytes::{Bytes, BytesMut};

fn decode(s: &str) -> Result<ClientOp<'static>, RequestError> {
    let mut d = Decoder::default();
    let buf: &'static mut [u8] = Box::leak(s.as_bytes().to_vec().into_boxed_slice());
    d.decode(buf)
}

fn json(frame: &Bytes) -> serde_json::Value {
    serde_json::from_slice(&payload_of(frame)).unwrap()
}

#[test]
fn decodes_every_request_type() {
    assert_eq!(
        decode(r#"{"type":"join","room":"a","extra":[1,2]}"#),
        Ok(ClientOp::Join { room: "a" })
    );
    assert_eq!(
        decode(r#"{"type":"leave","room":"a"}"#),
        Ok(ClientOp::Leave { room: "a" })
    );
    assert_eq!(
        decode(r#"{"type":"send","room":"a","cid":"c1","body":"h\u00e9\"llo\n"}"#),
        Ok(ClientOp::Send {
            room: "a",
            cid: "c1",
            body: "hé\"llo\n"
        })
    );
    assert_eq!(
        decode(r#"{"type":"dm","to":"bob","cid":"c2","body":""}"#),
        Ok(ClientOp::Dm {
            to: "bob",
            cid: "c2",
            body: ""
        })
    );
    assert_eq!(
        decode(r#"{"type":"history","room":"a"}"#),
        Ok(ClientOp::History {
            room: "a",
            before: None,
            limit: 50
        })
    );
    assert_eq!(
        decode(r#"{"type":"history","room":"a","before":10,"limit":100}"#),
        Ok(ClientOp::History {
            room: "a",
            before: Some(10),
            limit: 100
        })
    );
    assert_eq!(
        decode(r#"{"type":"resume","room":"a","after":0}"#),
        Ok(ClientOp::Resume {
            room: "a",
            after: 0
        })
    );
    assert_eq!(
        decode(r#"{"type":"presence","room":"a"}"#),
        Ok(ClientOp::Presence { room: "a" })
    );
    assert_eq!(
        decode(r#"{"type":"typing","room":"a"}"#),
        Ok(ClientOp::Typing { room: "a" })
    );
    assert_eq!(
        decode(r#"{"type":"read","room":"a","seq":7}"#),
        Ok(ClientOp::Read { room: "a", seq: 7 })
    );
    assert!(decode(r#"{"type":"read","room":"a"}"#).is_err());
    assert!(decode(r#"{"type":"read","room":"a","seq":-1}"#).is_err());
    assert!(decode(r#"{"type":"typing"}"#).is_err());
}

#[test]
fn bad_requests_say_why_and_keep_the_cid() {
    let cases = [
        ("not json", ErrorCode::BadRequest, None),
        ("[1]", ErrorCode::BadRequest, None),
        (r#"{"room":"a"}"#, ErrorCode::BadRequest, None),
        (r#"{"type":5}"#, ErrorCode::BadRequest, None),
        (r#"{"type":"shout"}"#, ErrorCode::BadRequest, None),
        (r#"{"type":"join"}"#, ErrorCode::BadRequest, None),
        (
            r#"{"type":"join","room":"a b"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (r#"{"type":"join","room":""}"#, ErrorCode::BadRequest, None),
        // Names that would change a Redis key's slot, or look like another name.
        (
            r#"{"type":"join","room":"}a"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"join","room":"a{b}"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"join","room":"lob\u200bby"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"join","room":"a\u202eb"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"join","room":"\ufeffa"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"send","room":"a","cid":"x","body":7}"#,
            ErrorCode::BadRequest,
            Some("x"),
        ),
        (
            r#"{"type":"send","room":"a","body":"b"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"dm","to":"b:c","cid":"x","body":"b"}"#,
            ErrorCode::BadRequest,
            Some("x"),
        ),
        (
            r#"{"type":"history","room":"a","limit":0}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"history","room":"a","limit":101}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"history","room":"a","before":-1}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"resume","room":"a"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        // What PostgreSQL `text` cannot hold is refused, never acked then dead-lettered.
        (
            r#"{"type":"send","room":"a","cid":"x","body":"a\u0000b"}"#,
            ErrorCode::BadRequest,
            Some("x"),
        ),
        (
            r#"{"type":"dm","to":"bob","cid":"x","body":"\u0000"}"#,
            ErrorCode::BadRequest,
            Some("x"),
        ),
        (
            r#"{"type":"send","room":"a","cid":"x\u0000","body":"b"}"#,
            ErrorCode::BadRequest,
            Some("x\u{0}"),
        ),
        (
            r#"{"type":"join","room":"a\u0000"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        // Lone surrogates are not text at all.
        (
            r#"{"type":"send","room":"a","cid":"x","body":"\ud800"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"send","room":"a","cid":"x","body":"\udc00x"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"send","room":"a\ud800","cid":"x","body":"b"}"#,
            ErrorCode::BadRequest,
            None,
        ),
    ];
    for (input, code, cid) in cases {
        let e = decode(input).unwrap_err();
        assert_eq!(e.code, code, "{input}: {e}");
        assert_eq!(e.cid.as_deref(), cid, "{input}");
        assert!(!e.message.is_empty());
    }
    let long_room = format!(r#"{{"type":"join","room":"{}"}}"#, "é".repeat(129));
    assert_eq!(decode(&long_room).unwrap_err().code, ErrorCode::BadRequest);
    let ok_room = format!(r#"{{"type":"join","room":"{}"}}"#, "é".repeat(128));
    assert!(decode(&ok_room).is_ok(), "128 characters, 256 bytes");
    let big = format!(
        r#"{{"type":"send","room":"a","cid":"c","body":"{}"}}"#,
        "x".repeat(MAX_BODY + 1)
    );
    let e = decode(&big).unwrap_err();
    assert_eq!((e.code, e.cid.as_deref()), (ErrorCode::TooLarge, Some("c")));
}

#[test]
fn decoder_is_reusable_after_errors() {
    let mut d = Decoder::default();
    for i in 0..100 {
        let mut bad = b"{\"type\":".to_vec();
        assert!(d.decode(&mut bad).is_err());
        let mut good = format!(r#"{{"type":"join","room":"r{i}"}}"#).into_bytes();
        let room = match d.decode(&mut good).unwrap() {
            ClientOp::Join { room } => room.to_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(room, format!("r{i}"));
    }
}

#[test]
fn msg_encoding_is_valid_json_with_escapes() {
    let body = "quote \" backslash \\ nl \n tab \t bell \u{7} é 😀";
    let m = Msg {
        room: "r/1",
        seq: 42,
        id: "id-1",
        from: "alice",
        ts: 1_700_000_000_000,
        body,
        cid: "c\"1",
    };
    let v = json(&m.frame());
    assert_eq!(v["type"], "msg");
    assert_eq!(v["room"], "r/1");
    assert_eq!(v["seq"], 42);
    assert_eq!(v["id"], "id-1");
    assert_eq!(v["from"], "alice");
    assert_eq!(v["ts"], 1_700_000_000_000u64);
    assert_eq!(v["body"], body);
    assert_eq!(v["cid"], "c\"1");
}

/// The escaping rule, one byte at a time: what `put_json_str` must write.
fn json_str_reference(s: &str) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
    out
}

fn json_str(s: &str) -> BytesMut {
    let mut out = BytesMut::new();
    put_json_str(&mut out, s);
    out
}

#[test]
fn json_str_escapes_every_byte_at_every_position() {
    // Every ASCII byte at every place of strings up to three 8-byte words long (first,
    // middle and last lane, the tail), among plain, multi-byte and other escaped bytes.
    for len in 1..=25 {
        for pos in 0..len {
            for b in 0u8..0x80 {
                for filler in ["a", "é", "\\"] {
                    let mut s = filler.repeat(len);
                    let at = s.char_indices().nth(pos).unwrap().0;
                    s.replace_range(at..at + filler.len(), (b as char).encode_utf8(&mut [0; 4]));
                    let out = json_str(&s);
                    assert_eq!(&out[..], &json_str_reference(&s)[..], "{s:?}");
                    let back: String = serde_json::from_slice(&out).unwrap();
                    assert_eq!(back, s);
                }
            }
        }
    }
    assert_eq!(&json_str("")[..], b"\"\"");
}

proptest::proptest! {
    #[test]
    fn json_str_matches_the_reference(s in "(?s).{0,80}", ctrl in "[\\x00-\\x1f\"\\\\a-z]{0,40}") {
        for s in [&s, &ctrl, &format!("{ctrl}{s}{ctrl}")] {
            let out = json_str(s);
            proptest::prop_assert_eq!(&out[..], &json_str_reference(s)[..]);
            let back: String = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(&back, s);
        }
    }
}

#[test]
fn head_seq_tail_is_the_whole_msg() {
    let m = Msg {
        room: "r\"x",
        seq: 77,
        id: "i",
        from: "u",
        ts: 5,
        body: "b",
        cid: "c",
    };
    let (mut head, mut tail, mut whole) = (BytesMut::new(), BytesMut::new(), BytesMut::new());
    m.encode_head(&mut head);
    m.encode_tail(&mut tail);
    m.encode(&mut whole);
    assert_eq!([&head[..], b"77", &tail[..]].concat(), &whole[..]);
}

#[test]
fn replies_are_valid_json() {
    assert_eq!(
        json(&reply::ack("c", "r", 3, "i")),
        serde_json::json!({"type":"ack","cid":"c","room":"r","seq":3,"id":"i"})
    );
    assert_eq!(
        json(&reply::joined("r", 0, 0)),
        serde_json::json!({"type":"joined","room":"r","seq":0,"read":0})
    );
    assert_eq!(
        json(&reply::left("r")),
        serde_json::json!({"type":"left","room":"r"})
    );
    assert_eq!(
        json(&reply::resumed("r", 9, 4, false)),
        serde_json::json!({"type":"resumed","room":"r","seq":9,"read":4,"complete":false})
    );
    let m1 = Msg {
        room: "r",
        seq: 1,
        id: "a",
        from: "u",
        ts: 1,
        body: "x",
        cid: "c",
    }
    .frame();
    let m2 = Msg {
        room: "r",
        seq: 2,
        id: "b",
        from: "u",
        ts: 2,
        body: "y",
        cid: "d",
    }
    .frame();
    let (p1, p2) = (payload_of(&m1), payload_of(&m2));
    let h = json(&reply::history("r", [&p1[..], &p2[..]]));
    assert_eq!(h["messages"][1]["seq"], 2);
    assert_eq!(
        json(&reply::history("r", std::iter::empty::<&[u8]>()))["messages"],
        serde_json::json!([])
    );
    assert_eq!(
        json(&reply::online("r", "u\"1")),
        serde_json::json!({"type":"online","room":"r","user":"u\"1"})
    );
    assert_eq!(
        json(&reply::offline("r", "u")),
        serde_json::json!({"type":"offline","room":"r","user":"u"})
    );
    assert_eq!(
        json(&reply::typing("r", "u")),
        serde_json::json!({"type":"typing","room":"r","from":"u"})
    );
    assert_eq!(
        json(&reply::read("r", 12)),
        serde_json::json!({"type":"read","room":"r","seq":12})
    );
    assert_eq!(
        json(&reply::presence("r", 2, ["a", "b"])),
        serde_json::json!({"type":"presence","room":"r","count":2,"users":["a","b"]})
    );
    assert_eq!(
        json(&reply::presence_count("r", 7)),
        serde_json::json!({"type":"presence","room":"r","count":7})
    );
    let many: Vec<String> = (0..1500).map(|i| format!("u{i:04}")).collect();
    let p = json(&reply::presence("r", 1500, many.iter().map(|u| u.as_str())));
    assert_eq!(p["count"], 1500);
    assert_eq!(
        p["users"].as_array().unwrap().len(),
        reply::MAX_PRESENCE_USERS
    );
    let e = RequestError::new(ErrorCode::NotJoined, "join first").with_cid(Some("c9"));
    assert_eq!(
        json(&reply::error(&e)),
        serde_json::json!({"type":"error","code":"not_joined","message":"join first","cid":"c9"})
    );
}

#[test]
fn dm_rooms() {
    assert_eq!(dm_room("bob", "alice").as_deref(), Some("dm:alice:bob"));
    assert_eq!(dm_room("alice", "alice"), None);
    assert_eq!(dm_members("dm:alice:bob"), Some(("alice", "bob")));
    assert_eq!(dm_members("dm:bob:alice"), None, "not in order");
    assert_eq!(dm_members("dm:alice"), None);
    assert_eq!(dm_members("general"), None);
}
