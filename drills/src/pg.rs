//! PostgreSQL after the run: a fresh database per drill, and what the persister wrote checked
//! against the acks the clients got. Every acked (room, seq) must be a row with the acked
//! `cid`; a `cid` must not be on two rows of a room (a duplicate); no two acks may name the
//! same (room, seq) with different messages.

use crate::procs::Persister;
use loadgen::report::AckRecord;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// The shared PostgreSQL: never stopped or wiped; each drill makes a database of its own.
pub const SHARED_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database of its own on a PostgreSQL server, dropped at the end: `Db::create(admin_url,
/// name)` makes `name` on the server of `admin_url` (a URL naming any database there).
pub use chat_testkit::ScratchDb as Db;

/// A client whose connection runs on a task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Every row of `messages`: (room, seq) → cid.
#[derive(Default, Clone)]
pub struct Rows {
    pub cids: HashMap<(String, u64), String>,
}

impl Rows {
    /// Reads them; `Ok(empty)` while the persister has not created the table yet.
    pub async fn load(url: &str) -> Result<Rows, String> {
        let client = connect(url).await?;
        let rows = match client
            .query("SELECT room, seq, coalesce(cid, '') FROM messages", &[])
            .await
        {
            Ok(rows) => rows,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                return Ok(Rows::default())
            }
            Err(e) => return Err(e.to_string()),
        };
        Ok(Rows {
            cids: rows
                .iter()
                .map(|r| ((r.get(0), r.get::<_, i64>(1) as u64), r.get(2)))
                .collect(),
        })
    }

    pub fn len(&self) -> u64 {
        self.cids.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.cids.is_empty()
    }

    /// The seqs of each room, ascending.
    pub fn by_room(&self) -> BTreeMap<&str, Vec<u64>> {
        let mut m: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (room, seq) in self.cids.keys() {
            m.entry(room.as_str()).or_default().push(*seq);
        }
        for seqs in m.values_mut() {
            seqs.sort_unstable();
        }
        m
    }
}

/// What PostgreSQL holds, compared with the acks.
#[derive(Debug, Default, Clone)]
pub struct Persisted {
    /// Rows in `messages`.
    pub rows: u64,
    pub rooms: u64,
    /// Acked (room, seq) with no row.
    pub missing: u64,
    /// Acked (room, seq) whose row has another cid: a seq reused for another message.
    pub wrong_cid: u64,
    /// Rows whose cid is on another row of the same room too: a message written twice.
    pub duplicate_rows: u64,
    /// Seqs missing inside a room's 1..=max (no message has them in PostgreSQL).
    pub holes: u64,
    /// Rows no ack names (sends whose ack never came, e.g. a node killed before it answered).
    pub unacked_rows: u64,
    pub examples: Vec<String>,
}

impl Persisted {
    pub fn compare(rows: &Rows, acks: &[AckRecord]) -> Persisted {
        let mut p = Persisted {
            rows: rows.len(),
            ..Persisted::default()
        };
        let mut acked: HashSet<(&str, u64)> = HashSet::new();
        for a in acks {
            acked.insert((a.room.as_str(), a.seq));
            match rows.cids.get(&(a.room.clone(), a.seq)) {
                None => {
                    p.missing += 1;
                    if p.examples.len() < 5 {
                        p.examples.push(format!(
                            "acked {} seq {} ({}) has no row",
                            a.room, a.seq, a.cid
                        ));
                    }
                }
                Some(cid) if *cid != a.cid => {
                    p.wrong_cid += 1;
                    if p.examples.len() < 5 {
                        p.examples.push(format!(
                            "acked {} seq {} is {} but the row has {cid}",
                            a.room, a.seq, a.cid
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        let mut cids_per_room: HashMap<&str, HashMap<&str, u64>> = HashMap::new();
        for ((room, seq), cid) in &rows.cids {
            *cids_per_room
                .entry(room)
                .or_default()
                .entry(cid)
                .or_default() += 1;
            if !acked.contains(&(room.as_str(), *seq)) {
                p.unacked_rows += 1;
            }
        }
        p.rooms = cids_per_room.len() as u64;
        for (room, cids) in &cids_per_room {
            for (cid, n) in cids {
                if *n > 1 {
                    p.duplicate_rows += n - 1;
                    if p.examples.len() < 10 {
                        p.examples.push(format!("{room}: cid {cid} is on {n} rows"));
                    }
                }
            }
        }
        for seqs in rows.by_room().values() {
            let max = seqs.last().copied().unwrap_or(0);
            p.holes += max - seqs.len() as u64;
        }
        p
    }
}

/// Acks that contradict each other: the same (room, seq) acked for two different cids (a
/// seq given to two messages), or one cid acked at two different seqs of a room.
pub fn ack_conflicts(acks: &[AckRecord]) -> (u64, u64) {
    let mut by_seq: HashMap<(&str, u64), &str> = HashMap::new();
    let mut by_cid: HashMap<(&str, &str), u64> = HashMap::new();
    let (mut seq_reused, mut cid_moved) = (0, 0);
    for a in acks {
        match by_seq.insert((&a.room, a.seq), &a.cid) {
            Some(other) if other != a.cid => seq_reused += 1,
            _ => {}
        }
        match by_cid.insert((&a.room, &a.cid), a.seq) {
            Some(other) if other != a.seq => cid_moved += 1,
            _ => {}
        }
    }
    (seq_reused, cid_moved)
}

/// Polls PostgreSQL until every acked (room, seq) has its row and the persister reports no
/// consumer lag (everything in Kafka is written), then compares. Gives up after `timeout`
/// and returns what is there (the caller's checks then fail with the counts).
pub async fn wait_persisted(
    url: &str,
    acks: &[AckRecord],
    persister: &mut Persister,
    timeout: Duration,
) -> Persisted {
    let started = Instant::now();
    let mut caught_up_polls = 0;
    let mut last = Persisted::default();
    loop {
        persister.assert_running();
        if let Ok(rows) = Rows::load(url).await {
            last = Persisted::compare(&rows, acks);
            let lag = persister.metric("chat_persister_consumer_lag");
            if last.missing == 0 && lag == Some(0.0) {
                caught_up_polls += 1;
                // Twice in a row, a lag interval apart: nothing more is on its way.
                if caught_up_polls >= 2 {
                    eprintln!(
                        "drill: PostgreSQL caught up {:.1} s after the run",
                        started.elapsed().as_secs_f64()
                    );
                    return last;
                }
            } else {
                caught_up_polls = 0;
            }
        }
        if started.elapsed() > timeout {
            eprintln!(
                "drill: PostgreSQL did not catch up within {timeout:?}: {} rows, {} acked rows missing; persister log:\n{}",
                last.rows,
                last.missing,
                persister.log_tail(30)
            );
            return last;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}
