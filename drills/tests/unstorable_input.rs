//! Drill: input the server could ack but PostgreSQL could not hold.
//!
//! PostgreSQL `text` cannot store U+0000, and the persister would dead-letter such a record:
//! acked, never in `messages` (PROTOCOL.md guarantee 1 broken). Lone surrogates in `\u`
//! escapes are not text at all. This drill sends, through a real 2-node cluster, the whole
//! persister path and PostgreSQL:
//!
//! * inputs that must be refused with `bad_request` and never acked: U+0000 in `body` or
//!   `cid` (room names and user ids refuse control characters already), lone high and low
//!   surrogates in `body`, `cid` and `room`;
//! * awkward inputs that must be acked and stored byte for byte: every other control
//!   character, quotes and backslashes, a surrogate pair written as escapes, non-BMP text,
//!   U+FFFF and U+FEFF, invisible characters, right-to-left text, the largest body, unicode
//!   room names and cids, and a DM.
//!
//! Proves: each refused input got `bad_request` with its cid where it had a readable one; each
//! accepted one was acked, and its row (found by the acked seq) holds exactly the room, body
//! and cid sent; `persister_dead_letters` is empty.

use chat_drills::ws::Client;
use chat_drills::{Cluster, Options, Report};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// Reads until the answer to `cid` (an `ack` or an `error`), skipping `msg`s.
async fn answer(c: &mut Client, cid: &str) -> Value {
    loop {
        let v = c.recv(WAIT).await.unwrap_or_else(|e| panic!("{cid}: {e}"));
        match v["type"].as_str() {
            Some("ack") | Some("error") if v["cid"] == cid || v["cid"].is_null() => return v,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstorable_input_is_refused_and_everything_acked_is_stored_unchanged() {
    let _guard = chat_drills::exclusive().await;
    let mut report = Report::new("unstorable-input");
    let Some(cluster) = Cluster::start(Options::new("unstorable-input")).await else {
        return;
    };
    let mut alice = Client::connect(cluster.nodes[0].addr, "alice")
        .await
        .unwrap();

    // Refused: (raw JSON, cid to expect on the error, if readable).
    let refused: Vec<(String, Option<&str>)> = vec![
        (
            r#"{"type":"send","room":"lobby","cid":"nul-body","body":"a\u0000b"}"#.into(),
            Some("nul-body"),
        ),
        (
            r#"{"type":"send","room":"lobby","cid":"nul-cid\u0000","body":"b"}"#.into(),
            Some("nul-cid\u{0}"),
        ),
        (
            r#"{"type":"dm","to":"bob","cid":"nul-dm","body":"\u0000"}"#.into(),
            Some("nul-dm"),
        ),
        (
            r#"{"type":"send","room":"lobby","cid":"hi","body":"x\ud800"}"#.into(),
            None,
        ),
        (
            r#"{"type":"send","room":"lobby","cid":"lo","body":"\udc00x"}"#.into(),
            None,
        ),
        (
            r#"{"type":"send","room":"lobby","cid":"x\udbff","body":"b"}"#.into(),
            None,
        ),
        (r#"{"type":"join","room":"lobby\ud800"}"#.into(), None),
        (r#"{"type":"join","room":"lob\u0000by"}"#.into(), None),
    ];
    // Accepted: (room, cid, body) exactly as the server must store them.
    let controls: String = (1u8..0x20).map(char::from).collect::<String>() + "\u{7f}";
    let rooms = ["lobby", "ünïcødé-室", "room\u{1F600}"];
    let mut accepted: Vec<(String, String, String)> = vec![
        ("lobby".into(), "controls".into(), controls),
        (
            "lobby".into(),
            "quotes".into(),
            r#"say "hi" \ back\slash \\ \n"#.into(),
        ),
        (
            "lobby".into(),
            "pair-escaped".into(),
            "\u{1F600} and \u{10FFFF}".into(),
        ),
        (
            "lobby".into(),
            "specials".into(),
            "\u{FFFF}\u{FEFF}\u{FFFD}\u{200B}\u{202E}abc".into(),
        ),
        ("lobby".into(), "empty".into(), String::new()),
        (
            "lobby".into(),
            "cïd-ü-\u{1F600}".into(),
            "unicode cid".into(),
        ),
        ("lobby".into(), "max".into(), "é".repeat(8 * 1024)),
        (
            rooms[1].into(),
            "room-unicode".into(),
            "in a unicode room".into(),
        ),
        (
            rooms[2].into(),
            "room-emoji".into(),
            "in an emoji room".into(),
        ),
    ];
    for room in rooms {
        alice
            .send(json!({"type": "join", "room": room}))
            .await
            .unwrap();
        loop {
            let v = alice.recv(WAIT).await.unwrap();
            if v["type"] == "joined" {
                break;
            }
        }
    }

    let mut refused_ok = 0;
    for (raw, cid) in &refused {
        alice.send_text(raw).await.unwrap();
        let v = loop {
            let v = alice.recv(WAIT).await.unwrap();
            if v["type"] == "error" || v["type"] == "ack" {
                break v;
            }
        };
        let ok = v["type"] == "error" && v["code"] == "bad_request" && v["cid"].as_str() == *cid;
        report.check(ok, format!("refused with bad_request: {raw} -> {v}"));
        refused_ok += ok as u32;
    }

    let mut acks = Vec::new();
    for (room, cid, body) in &accepted {
        if cid == "pair-escaped" {
            // The same text written as `\u` surrogate-pair escapes.
            let raw = r#"{"type":"send","room":"lobby","cid":"pair-escaped","body":"\ud83d\ude00 and \udbff\udfff"}"#;
            alice.send_text(raw).await.unwrap();
        } else {
            alice
                .send(json!({"type": "send", "room": room, "cid": cid, "body": body}))
                .await
                .unwrap();
        }
        let v = answer(&mut alice, cid).await;
        let seq = v["seq"].as_u64();
        report.check(
            v["type"] == "ack" && seq.is_some(),
            format!(
                "acked: {room} {cid} ({} B body) -> {}",
                body.len(),
                v["type"]
            ),
        );
        acks.push((room.clone(), seq.unwrap_or(0)));
    }
    // A DM with awkward text too.
    let dm_body = "dm \u{1F600} \"\\ \t";
    alice
        .send(json!({"type": "dm", "to": "bob", "cid": "dm-1", "body": dm_body}))
        .await
        .unwrap();
    let v = answer(&mut alice, "dm-1").await;
    report.check(v["type"] == "ack", format!("DM acked: {v}"));
    let dm_room = v["room"].as_str().unwrap_or("dm:alice:bob").to_string();
    acks.push((dm_room.clone(), v["seq"].as_u64().unwrap_or(0)));
    accepted.push((dm_room, "dm-1".into(), dm_body.into()));

    // PostgreSQL, once the persister has them all.
    let client = chat_drills::pg::connect(&cluster.db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut equal = 0;
    let mut missing = accepted.len();
    while Instant::now() < deadline {
        equal = 0;
        missing = 0;
        for ((room, cid, body), (_, seq)) in accepted.iter().zip(&acks) {
            let row = client
                .query_opt(
                    "SELECT body, cid FROM messages WHERE room = $1 AND seq = $2",
                    &[room, &(*seq as i64)],
                )
                .await
                .unwrap();
            match row {
                None => missing += 1,
                Some(r) => {
                    let (b, c): (String, Option<String>) = (r.get(0), r.get(1));
                    if b == *body && c.as_deref() == Some(cid.as_str()) {
                        equal += 1;
                    }
                }
            }
        }
        if missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let dead: i64 = client
        .query_one("SELECT count(*) FROM persister_dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    report.field("refused", format!("{refused_ok}/{}", refused.len()));
    report.field("acked", acks.len());
    report.field("persisted_equal", equal);
    report.field("dead_letters", dead);
    report.check(
        missing == 0 && equal == accepted.len(),
        format!(
            "every acked message is its row, byte for byte: {equal} of {} equal, {missing} missing",
            accepted.len()
        ),
    );
    report.check(dead == 0, format!("no dead letters ({dead})"));
    report.cluster(&cluster);
    report.finish();
}
