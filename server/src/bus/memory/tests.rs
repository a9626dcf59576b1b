//! The owner logic of the standalone rooms, tested without sockets: a harness hands the shard
//! core messages and reads back what it answers.

use super::*;
use crate::fanout::Mailbox;
use std::sync::Arc;

struct Harness {
    shard: RoomShard,
    out: Rc<Outbox>,
    boxes: Arc<[Mailbox]>,
}

impl Harness {
    fn new(history_len: usize) -> Self {
        Harness::with_budget(history_len, usize::MAX)
    }

    fn with_budget(history_len: usize, history_memory: usize) -> Self {
        let boxes: Arc<[Mailbox]> = (0..1).map(|_| Mailbox::default()).collect();
        let cfg = MemoryConfig {
            history_len,
            dedupe_window_ms: 300_000,
            dedupe_capacity: 1000,
            history_memory,
        };
        let out = Rc::new(Outbox::new(boxes.clone()));
        Harness {
            shard: RoomShard::new(0, 1, 7, cfg, out.clone()),
            out,
            boxes,
        }
    }

    /// Handles `msg` and returns the replies it produced.
    fn call(&mut self, msg: CoreMsg) -> Vec<Reply> {
        let all = self.call_all(msg);
        all.into_iter()
            .filter_map(|m| match m {
                CoreMsg::Reply { reply, .. } => Some(reply),
                _ => None,
            })
            .collect()
    }

    /// Handles `msg` and returns everything it sent.
    fn call_all(&mut self, msg: CoreMsg) -> Vec<CoreMsg> {
        self.shard.handle(msg).unwrap();
        self.drain()
    }

    fn drain(&mut self) -> Vec<CoreMsg> {
        self.out.flush();
        let mut all = Vec::new();
        while let Some(batch) = self.boxes[0].try_recv() {
            all.extend(batch);
        }
        all
    }

    fn publish(&mut self, cid: &str, ts: u64) -> serde_json::Value {
        self.publish_to("r", cid, "b", ts)
    }

    fn publish_to(&mut self, room: &str, cid: &str, body: &str, ts: u64) -> serde_json::Value {
        let req = PublishRequest {
            room: room.into(),
            from: "u".into(),
            cid: cid.into(),
            body: body.into(),
            ts,
            dm: None,
            reply: ReplyTo {
                core: 0,
                conn: 1,
                ticket: 1,
            },
        };
        match self.call(CoreMsg::Publish(req)).pop() {
            Some(Reply::Frames(f)) => serde_json::from_slice(&payload_of(&f[0])).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn resume(&mut self, after: u64) -> (u64, usize, bool) {
        self.resume_room("r", after)
    }

    fn resume_room(&mut self, room: &str, after: u64) -> (u64, usize, bool) {
        let reply = ReplyTo {
            core: 0,
            conn: 1,
            ticket: 2,
        };
        let kind = FetchKind::Resume { after };
        match self
            .call(CoreMsg::Fetch(FetchRequest {
                room: room.into(),
                user: "u".into(),
                kind,
                subscribe: false,
                reply,
                gauge: Default::default(),
            }))
            .pop()
        {
            Some(Reply::Start { seq, frames, .. }) => {
                let resumed: serde_json::Value =
                    serde_json::from_slice(&payload_of(frames.last().unwrap())).unwrap();
                assert_eq!(resumed["type"], "resumed");
                let complete = resumed["complete"].as_bool().unwrap();
                (seq, frames.len() - 1, complete)
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn seq_is_dense_and_retries_are_deduplicated() {
    let mut h = Harness::new(10);
    let a = h.publish("a", 1);
    let b = h.publish("b", 2);
    let retry = h.publish("a", 3);
    assert_eq!((a["seq"].as_u64(), b["seq"].as_u64()), (Some(1), Some(2)));
    assert_eq!(retry["seq"], 1, "a retry gets the first seq");
    assert_eq!(retry["id"], a["id"], "and the first id");
    assert_ne!(a["id"], b["id"]);
}

#[test]
fn dedupe_window_expires() {
    let mut h = Harness::new(10);
    assert_eq!(h.publish("a", 1)["seq"], 1);
    assert_eq!(
        h.publish("a", 1 + 300_001)["seq"],
        2,
        "past the window it is a new message"
    );
}

#[test]
fn resume_reports_completeness_truthfully() {
    let mut h = Harness::new(3);
    for i in 0..5 {
        h.publish(&format!("c{i}"), i);
    }
    // `recent` now holds seq 3, 4, 5.
    assert_eq!(h.resume(5), (5, 0, true));
    assert_eq!(h.resume(4), (5, 1, true));
    assert_eq!(h.resume(2), (5, 3, true));
    assert_eq!(h.resume(1), (5, 3, false), "seq 2 was evicted");
    assert_eq!(
        h.resume(9),
        (5, 0, true),
        "nothing exists after a seq beyond the latest"
    );
}

#[test]
fn rooms_that_hold_nothing_are_not_kept() {
    let mut h = Harness::new(3);
    let reply = |ticket| ReplyTo {
        core: 0,
        conn: 1,
        ticket,
    };
    for (i, room) in ["a", "b", "c"].into_iter().enumerate() {
        let kind = FetchKind::Resume { after: 0 };
        let answer = h.call(CoreMsg::Fetch(FetchRequest {
            room: room.into(),
            user: "u".into(),
            kind,
            subscribe: false,
            reply: reply(i as u64),
            gauge: Default::default(),
        }));
        assert!(matches!(answer.as_slice(), [Reply::Start { seq: 0, .. }]));
    }
    assert_eq!(h.shard.rooms(), 0, "reading never-used rooms keeps nothing");

    let join = |room: &str, subscribe| CoreMsg::Join {
        room: room.into(),
        user: "u".into(),
        subscribe,
        reply: reply(9),
    };
    h.call(join("a", true));
    assert_eq!(h.shard.rooms(), 1);
    let leave = |room: &str| CoreMsg::Unsubscribe {
        channel: Channel::Room(room.into()),
        core: 0,
    };
    h.call(leave("a"));
    assert_eq!(
        h.shard.rooms(),
        0,
        "a joined room nobody wrote to is freed when left"
    );

    h.call(join("r", true));
    h.publish("x", 1);
    h.call(leave("r"));
    assert_eq!(h.shard.rooms(), 1, "a room with messages keeps its seq");
    assert_eq!(h.publish("y", 2)["seq"], 2, "and its seq continues");
}

/// The JSON of every event frame in `msgs` (`CoreMsg::Event`s), in order.
fn events(msgs: &[CoreMsg]) -> Vec<serde_json::Value> {
    msgs.iter()
        .filter_map(|m| match m {
            CoreMsg::Event { frame, .. } => {
                Some(serde_json::from_slice(&payload_of(frame)).unwrap())
            }
            _ => None,
        })
        .collect()
}

/// The JSON of the first frame of every reply in `msgs`.
fn replies(msgs: &[CoreMsg]) -> Vec<serde_json::Value> {
    msgs.iter()
        .filter_map(|m| match m {
            CoreMsg::Reply {
                reply: Reply::Frames(f) | Reply::Start { frames: f, .. },
                ..
            } => Some(serde_json::from_slice(&payload_of(&f[0])).unwrap()),
            _ => None,
        })
        .collect()
}

fn to(ticket: u64) -> ReplyTo {
    ReplyTo {
        core: 0,
        conn: 1,
        ticket,
    }
}

#[test]
fn presence_is_per_user_not_per_connection() {
    let mut h = Harness::new(10);
    let change = |user: &str, came| CoreMsg::PresenceChange {
        room: "r".into(),
        user: user.into(),
        came,
    };
    h.call(CoreMsg::Subscribe {
        channel: Channel::Room("r".into()),
        core: 0,
    });
    let ev = events(&h.call_all(change("ann", true)));
    assert_eq!(
        ev,
        [serde_json::json!({"type":"online","room":"r","user":"ann"})]
    );
    assert!(
        events(&h.call_all(change("ann", true))).is_empty(),
        "second connection: no event"
    );
    h.call_all(change("bob", true));
    let p = replies(&h.call_all(CoreMsg::Presence {
        room: "r".into(),
        reply: to(1),
    }));
    assert_eq!(
        p[0],
        serde_json::json!({"type":"presence","room":"r","count":2,"users":["ann","bob"]})
    );
    assert!(
        events(&h.call_all(change("ann", false))).is_empty(),
        "one connection left"
    );
    let ev = events(&h.call_all(change("ann", false)));
    assert_eq!(
        ev,
        [serde_json::json!({"type":"offline","room":"r","user":"ann"})]
    );
}

#[test]
fn joins_of_a_large_room_are_coalesced_into_one_presence_frame_a_second() {
    let mut h = Harness::new(10);
    h.call(CoreMsg::Subscribe {
        channel: Channel::Room("big".into()),
        core: 0,
    });
    let mut single = 0;
    for i in 0..COALESCE_ABOVE + 500 {
        let came = CoreMsg::PresenceChange {
            room: "big".into(),
            user: format!("u{i:05}").into(),
            came: true,
        };
        single += events(&h.call_all(came)).len();
    }
    assert_eq!(
        single, COALESCE_ABOVE,
        "single events only up to the threshold"
    );
    h.shard.tick(0);
    let ev = events(&h.drain());
    assert_eq!(ev.len(), 1, "then one frame for the 500 others");
    assert_eq!(ev[0]["type"], "presence");
    assert_eq!(ev[0]["count"], COALESCE_ABOVE + 500);
    assert!(ev[0].get("users").is_none(), "the count only: {}", ev[0]);
    h.shard.tick(1000);
    assert!(
        events(&h.drain()).is_empty(),
        "nothing when nothing changed"
    );
}

#[test]
fn typing_goes_to_the_others_at_most_once_a_second() {
    let mut h = Harness::new(10);
    h.call(CoreMsg::Subscribe {
        channel: Channel::Room("r".into()),
        core: 0,
    });
    let typing = || CoreMsg::Typing {
        room: "r".into(),
        user: "ann".into(),
    };
    let sent = h.call_all(typing());
    match &sent[..] {
        [CoreMsg::Event { except_user, .. }] => assert_eq!(except_user.as_deref(), Some("ann")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        events(&sent)[0],
        serde_json::json!({"type":"typing","room":"r","from":"ann"})
    );
    assert!(
        h.call_all(typing()).is_empty(),
        "within the second: dropped"
    );
    assert_eq!(h.shard.rooms(), 1);
    assert_eq!(h.shard.social.typing.len(), 1);
    h.shard.tick(u64::MAX / 2);
    assert!(h.shard.social.typing.is_empty(), "old marks forgotten");
}

#[test]
fn read_pointers_only_go_up_and_come_back_in_joined() {
    let mut h = Harness::new(10);
    for i in 0..5 {
        h.publish(&format!("c{i}"), i);
    }
    let read = |seq, ticket| CoreMsg::Read {
        room: "r".into(),
        user: "u".into(),
        seq,
        reply: to(ticket),
    };
    assert_eq!(
        replies(&h.call_all(read(3, 1)))[0],
        serde_json::json!({"type":"read","room":"r","seq":3})
    );
    assert_eq!(replies(&h.call_all(read(2, 2)))[0]["seq"], 3, "never back");
    let past = replies(&h.call_all(read(6, 3)));
    assert_eq!(past[0]["code"], "bad_request", "past the latest seq");
    let joined = replies(&h.call_all(CoreMsg::Join {
        room: "r".into(),
        user: "u".into(),
        subscribe: false,
        reply: to(4),
    }));
    assert_eq!(
        joined[0],
        serde_json::json!({"type":"joined","room":"r","seq":5,"read":3})
    );
}

#[test]
fn the_memory_budget_evicts_the_oldest_messages_of_any_room() {
    let body = "x".repeat(1000);
    // Room of a message: its index mod 10; about 1.1 KB each, budget for ~50 of them.
    let mut h = Harness::with_budget(1000, 50 * 1100);
    for i in 0..500u64 {
        h.publish_to(&format!("r{}", i % 10), &format!("c{i}"), &body, i);
    }
    let (bytes, evicted) = h.shard.history_stats();
    assert!(bytes <= 50 * 1100, "within the budget: {bytes}");
    assert!(evicted >= 440, "the rest evicted: {evicted}");
    for room in 0..10 {
        let (seq, held, complete) = h.resume_room(&format!("r{room}"), 0);
        assert_eq!(seq, 50, "every room keeps its seq");
        assert!((3..=6).contains(&held), "the newest few stay: {held}");
        assert!(!complete, "and resume says the rest is gone");
        let (_, held_after, complete_after) = h.resume_room(&format!("r{room}"), 50 - 2);
        assert_eq!((held_after, complete_after), (2, true));
    }
    // Seqs continue after eviction.
    assert_eq!(h.publish_to("r3", "next", "b", 600)["seq"], 51);
}

#[test]
fn stale_age_entries_do_not_accumulate_under_the_per_room_cap() {
    let mut h = Harness::with_budget(2, usize::MAX);
    for i in 0..20_000u64 {
        h.publish(&format!("c{i}"), i);
    }
    assert!(
        h.shard.age.len() <= 2 * 2 + 1024,
        "age queue swept: {}",
        h.shard.age.len()
    );
    assert_eq!(h.resume(19_998), (20_000, 2, true));
}
