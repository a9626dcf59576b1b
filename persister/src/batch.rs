//! Turns Kafka records into one batch: parse and check each record, set poison ones aside as
//! dead letters, remember the next offset per partition, sort the rows for the COPY.
//!
//! Everything PostgreSQL would refuse is caught here, so that a batch that reaches
//! [`crate::copy`] can only fail for reasons that go away (a lost connection, a restart), and a
//! retry loop there never spins on bad data: invalid JSON, a missing field or one of the wrong
//! type, `type` other than `msg`, a key that is not the record's room, a NUL character in a
//! text field (PostgreSQL `text` cannot hold one), `seq` below 1, `ts` outside years 1-9999.
//!
//! Rows are sorted by (room, seq) before the COPY: inserting into the primary key in key order
//! touches each B-tree page once instead of at random, which roughly doubles the COPY rate on
//! the development machine. A record delivered twice in one batch (a redelivery) is kept once.

use crate::dead_letter::DeadLetter;
use chat_wire::protocol::{Field, MsgError, MsgView};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One `messages` row, owned (the Kafka buffer it came from is gone by the time it is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub room: String,
    pub seq: i64,
    pub id: String,
    pub sender: String,
    pub body: String,
    /// `sent_at` in PostgreSQL's binary form: microseconds since 2000-01-01 00:00 UTC.
    pub sent_at_pg_us: i64,
    pub cid: Option<String>,
}

/// Milliseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_UNIX_MS: i64 = 946_684_800_000;
/// `ts` must fall in years 1-9999 (PostgreSQL accepts more, but nothing sane is outside).
const MIN_TS_MS: i64 = -62_135_596_800_000;
const MAX_TS_MS: i64 = 253_402_300_799_999;

/// The `msg` object as the server encodes it (PROTOCOL.md, "Server -> client"). Unknown fields
/// are ignored, like everywhere in the protocol; `cid` is optional here (it is not part of
/// the `messages` table the protocol fixes).
struct WireMsg<'a> {
    kind: Cow<'a, str>,
    room: Cow<'a, str>,
    seq: i64,
    id: Cow<'a, str>,
    from: Cow<'a, str>,
    ts: i64,
    body: Cow<'a, str>,
    cid: Option<Cow<'a, str>>,
}

impl<'a> WireMsg<'a> {
    /// Every field read with chat-wire's strict `msg` decoder: malformed JSON, a missing or
    /// repeated field, one of the wrong type or range, or a string that is not text is an error.
    fn decode(json: &'a [u8]) -> Result<WireMsg<'a>, MsgError> {
        let m = MsgView::parse(json)?;
        Ok(WireMsg {
            kind: m.text(Field::Type)?,
            room: m.text(Field::Room)?,
            seq: m.i64(Field::Seq)?,
            id: m.text(Field::Id)?,
            from: m.text(Field::From)?,
            ts: m.i64(Field::Ts)?,
            body: m.text(Field::Body)?,
            cid: m.opt_text(Field::Cid)?,
        })
    }
}

/// Parses and checks one record. `Err` is the dead-letter reason.
pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Row, String> {
    let value = value.ok_or("no value (tombstone record)")?;
    let msg = WireMsg::decode(value).map_err(|e| format!("invalid msg: {e}"))?;
    if msg.kind != "msg" {
        return Err(format!("type is {:?}, not \"msg\"", msg.kind));
    }
    let key = key.ok_or("no key (the key must be the room)")?;
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_string())?;
    if key != msg.room {
        return Err(format!(
            "key {key:?} does not match room {:?}",
            msg.room.as_ref()
        ));
    }
    for (field, text) in [
        ("room", Some(&msg.room)),
        ("id", Some(&msg.id)),
        ("from", Some(&msg.from)),
        ("body", Some(&msg.body)),
        ("cid", msg.cid.as_ref()),
    ] {
        if text.is_some_and(|t| t.contains('\0')) {
            return Err(format!(
                "{field} contains a NUL character (PostgreSQL text cannot hold it)"
            ));
        }
    }
    if msg.room.is_empty() {
        return Err("room is empty".into());
    }
    if msg.seq < 1 {
        return Err(format!("seq {} is below 1", msg.seq));
    }
    if !(MIN_TS_MS..=MAX_TS_MS).contains(&msg.ts) {
        return Err(format!("ts {} is outside years 1-9999", msg.ts));
    }
    Ok(Row {
        room: msg.room.into_owned(),
        seq: msg.seq,
        id: msg.id.into_owned(),
        sender: msg.from.into_owned(),
        body: msg.body.into_owned(),
        sent_at_pg_us: (msg.ts - PG_EPOCH_UNIX_MS) * 1000,
        cid: msg.cid.map(Cow::into_owned),
    })
}

/// The records of one transaction: rows, dead letters and where each partition continues.
#[derive(Debug, Default)]
pub struct Batch {
    pub rows: Vec<Row>,
    pub dead_letters: Vec<DeadLetter>,
    /// Partition -> offset of the next record to read (last offset in the batch + 1).
    pub offsets: BTreeMap<i32, i64>,
    /// Partition -> fingerprint of the record at `offsets[p] - 1`, stored beside the offset
    /// ([`crate::start_offset::fingerprint`]).
    pub tails: BTreeMap<i32, i64>,
    /// Records taken from Kafka (rows + dead letters + duplicates dropped by [`Batch::finish`]).
    pub records: usize,
    /// Rows dropped by [`Batch::finish`] because the batch held the same (room, seq) already.
    pub duplicates: usize,
    /// The records' Kafka timestamps (ms since the epoch), for `chat_persister_lag_seconds`.
    pub timestamps_ms: Vec<i64>,
}

impl Batch {
    /// Adds one Kafka record: a row, or a dead letter when it does not parse.
    pub fn push(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) {
        self.records += 1;
        self.timestamps_ms.extend(timestamp_ms);
        let next = self.offsets.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
        if *next == offset + 1 {
            self.tails
                .insert(partition, crate::start_offset::fingerprint(value));
        }
        match parse(key, value) {
            Ok(row) => self.rows.push(row),
            Err(reason) => self.dead_letters.push(DeadLetter::new(
                partition,
                offset,
                key,
                value,
                reason,
                timestamp_ms,
            )),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Sorts the rows by (room, seq) and keeps the first of any that repeat.
    ///
    /// The sort is stable, and a room's records come from one partition in offset order, so
    /// "first" is the lowest offset.
    pub fn finish(&mut self) {
        self.rows
            .sort_by(|a, b| (a.room.as_str(), a.seq).cmp(&(b.room.as_str(), b.seq)));
        let before = self.rows.len();
        self.rows
            .dedup_by(|b, a| a.seq == b.seq && a.room == b.room);
        self.duplicates += before - self.rows.len();
    }
}

/// Collects records into batches by size and time: a batch is due when it holds `max`
/// records, or when `wait` has passed since its first record.
pub struct Gather {
    max: usize,
    wait: Duration,
    batch: Batch,
    first_at: Option<Instant>,
}

impl Gather {
    pub fn new(max: usize, wait: Duration) -> Gather {
        Gather {
            max,
            wait,
            batch: Batch::default(),
            first_at: None,
        }
    }

    pub fn push(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) {
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
        self.batch.push(partition, offset, key, value, timestamp_ms);
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Holds `max` records: must go now.
    pub fn is_full(&self) -> bool {
        self.batch.records >= self.max
    }

    /// When the batch is due by time (`None` while it is empty).
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.wait)
    }

    /// Not empty, and full or past its deadline.
    pub fn is_due(&self, now: Instant) -> bool {
        self.is_full() || self.deadline().is_some_and(|d| now >= d)
    }

    /// The batch, sorted and deduplicated; a new empty one takes its place.
    pub fn take(&mut self) -> Batch {
        self.first_at = None;
        let mut batch = std::mem::take(&mut self.batch);
        batch.finish();
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(room: &str, seq: i64) -> String {
        format!(
            r#"{{"type":"msg","room":"{room}","seq":{seq},"id":"n-0-{seq:x}","from":"alice","ts":1700000000123,"body":"hi {seq}","cid":"c{seq}"}}"#
        )
    }

    #[test]
    fn parses_a_msg() {
        let row = parse(Some(b"lobby"), Some(msg("lobby", 7).as_bytes())).unwrap();
        assert_eq!(row.room, "lobby");
        assert_eq!(row.seq, 7);
        assert_eq!(row.id, "n-0-7");
        assert_eq!(row.sender, "alice");
        assert_eq!(row.body, "hi 7");
        assert_eq!(row.cid.as_deref(), Some("c7"));
        assert_eq!(
            row.sent_at_pg_us,
            (1_700_000_000_123 - PG_EPOCH_UNIX_MS) * 1000
        );
    }

    #[test]
    fn escapes_and_unknown_fields_and_no_cid() {
        let v = r#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"a\"b\u00e9\n","extra":[1,2]}"#;
        let row = parse(Some(b"r"), Some(v.as_bytes())).unwrap();
        assert_eq!(row.body, "a\"b\u{e9}\n");
        assert_eq!(row.cid, None);
    }

    #[test]
    fn poison_reasons() {
        type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, &'a str);
        let cases: &[Case] = &[
            (Some(b"r"), Some(b"not json"), "invalid msg"),
            (Some(b"r"), None, "tombstone"),
            (Some(b"r"), Some(br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0}"#), "missing field `body`"),
            (Some(b"r"), Some(br#"{"type":"msg","room":"r","seq":"1","id":"i","from":"u","ts":0,"body":"b"}"#), "invalid type"),
            (Some(b"r"), Some(br#"{"type":"ack","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b"}"#), "not \"msg\""),
            (Some(b"x"), Some(br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b"}"#), "does not match room"),
            (None, Some(br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b"}"#), "no key"),
            (Some(b"\xff"), Some(br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"b"}"#), "not UTF-8"),
            (Some(b"r"), Some(br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":0,"body":"a\u0000"}"#), "NUL"),
            (Some(b"r"), Some(br#"{"type":"msg","room":"r","seq":0,"id":"i","from":"u","ts":0,"body":"b"}"#), "below 1"),
            (Some(b"r"), Some(br#"{"type":"msg","room":"r","seq":1,"id":"i","from":"u","ts":999999999999999999,"body":"b"}"#), "outside years"),
            (Some(b"r"), Some(br#"{"type":"msg","room":"r","seq":18446744073709551615,"id":"i","from":"u","ts":0,"body":"b"}"#), "invalid"),
        ];
        for (key, value, want) in cases {
            let err = parse(*key, *value).unwrap_err();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn batch_sorts_dedupes_and_tracks_offsets() {
        let mut b = Batch::default();
        b.push(1, 10, Some(b"b"), Some(msg("b", 2).as_bytes()), None);
        b.push(0, 5, Some(b"a"), Some(msg("a", 1).as_bytes()), None);
        b.push(1, 11, Some(b"b"), Some(msg("b", 1).as_bytes()), None);
        b.push(1, 12, Some(b"b"), Some(b"junk"), Some(1));
        b.push(1, 13, Some(b"b"), Some(msg("b", 2).as_bytes()), None);
        b.finish();
        let keys: Vec<(&str, i64)> = b.rows.iter().map(|r| (r.room.as_str(), r.seq)).collect();
        assert_eq!(keys, [("a", 1), ("b", 1), ("b", 2)]);
        assert_eq!(b.duplicates, 1);
        assert_eq!(b.records, 5);
        assert_eq!(b.dead_letters.len(), 1);
        assert_eq!(b.dead_letters[0].offset, 12);
        assert_eq!(b.offsets, BTreeMap::from([(0, 6), (1, 14)]));
    }

    #[test]
    fn gather_is_due_by_size_and_time() {
        let mut g = Gather::new(2, Duration::from_millis(20));
        assert!(!g.is_due(Instant::now()));
        g.push(0, 0, Some(b"a"), Some(msg("a", 1).as_bytes()), None);
        assert!(!g.is_due(Instant::now()));
        assert!(g.is_due(Instant::now() + Duration::from_millis(25)));
        g.push(0, 1, Some(b"a"), Some(msg("a", 2).as_bytes()), None);
        assert!(g.is_full());
        let b = g.take();
        assert_eq!(b.rows.len(), 2);
        assert!(g.is_empty() && g.deadline().is_none());
    }
}
