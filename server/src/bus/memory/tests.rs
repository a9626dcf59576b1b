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
        self.shard.handle(msg).unwrap();
        self.out.flush();
        let mut replies = Vec::new();
        while let Some(batch) = self.boxes[0].try_recv() {
            replies.extend(batch.into_iter().filter_map(|m| match m {
                CoreMsg::Reply { reply, .. } => Some(reply),
                _ => None,
            }));
        }
        replies
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
