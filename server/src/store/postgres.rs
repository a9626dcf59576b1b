//! PostgreSQL: messages older than the Redis cache holds (read side), and read pointers (v1.1,
//! read and written here).
//!
//! The persister writes the `messages` table (see `persister/`); the server only reads it, on
//! the bus thread, when `history` or `resume` reach past the room's recent cache. Rows are
//! turned back into the exact `msg` JSON the cache and Kafka carry, so a client cannot tell
//! where a message came from. A dropped connection is reopened on the next query.

use crate::metrics::inc;
use crate::node::Node;
use bytes::BytesMut;
use chat_wire::protocol::Msg;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::{Client, NoTls, Row};

pub struct PgStore {
    url: String,
    /// Where reads are timed (`chat_postgres_read_seconds`) and failures counted.
    node: Arc<Node>,
    client: RefCell<Option<Rc<Client>>>,
}

const COLUMNS: &str = "room, seq, id, sender, body, (extract(epoch from sent_at) * 1000)::int8 AS ts, coalesce(cid, '') AS cid";

impl PgStore {
    pub fn new(url: &str, node: Arc<Node>) -> PgStore {
        PgStore {
            url: url.to_string(),
            node,
            client: RefCell::new(None),
        }
    }

    async fn client(&self) -> Result<Rc<Client>, String> {
        if let Some(c) = self.client.borrow().as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .map_err(|e| format!("PostgreSQL: {e}"))?;
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        let client = Rc::new(client);
        *self.client.borrow_mut() = Some(client.clone());
        Ok(client)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, String> {
        let metrics = &self.node.metrics.bus;
        let started = Instant::now();
        let client = self
            .client()
            .await
            .inspect_err(|_| inc(&metrics.pg_errors))?;
        match client.query(sql, params).await {
            Ok(rows) => {
                metrics.pg_read.observe(started.elapsed());
                Ok(rows)
            }
            Err(e) => {
                inc(&metrics.pg_errors);
                *self.client.borrow_mut() = None;
                Err(format!("PostgreSQL: {e}"))
            }
        }
    }

    /// The newest `limit` messages with seq < `before`, ascending, as `msg` JSON.
    pub async fn page_before(
        &self,
        room: &str,
        before: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, String> {
        let sql = format!("SELECT {COLUMNS} FROM messages WHERE room = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3");
        let mut rows = self
            .query(
                &sql,
                &[
                    &room,
                    &(before.min(i64::MAX as u64) as i64),
                    &(limit as i64),
                ],
            )
            .await?;
        rows.reverse();
        Ok(rows.iter().map(row_json).collect())
    }

    /// The first `limit` messages with `from <= seq < to`, ascending, as `msg` JSON: one page
    /// of a replay (the next page starts after the last seq of this one).
    pub async fn page_from(
        &self,
        room: &str,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, String> {
        let sql = format!("SELECT {COLUMNS} FROM messages WHERE room = $1 AND seq >= $2 AND seq < $3 ORDER BY seq LIMIT $4");
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        let rows = self
            .query(&sql, &[&room, &clamp(from), &clamp(to), &(limit as i64)])
            .await?;
        Ok(rows.iter().map(row_json).collect())
    }

    /// The room's highest persisted seq (0 if none).
    pub async fn max_seq(&self, room: &str) -> Result<u64, String> {
        let rows = self
            .query(
                "SELECT coalesce(max(seq), 0) FROM messages WHERE room = $1",
                &[&room],
            )
            .await?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }
}

impl PgStore {
    /// `user`'s read pointer in `room` (0 if none). The table is the persister's
    /// (`read_pointers`, migration 3).
    pub async fn read_pointer(&self, room: &str, user: &str) -> Result<u64, String> {
        let rows = self
            .query(
                "SELECT seq FROM read_pointers WHERE room = $1 AND user_id = $2",
                &[&room, &user],
            )
            .await?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    /// Moves `user`'s read pointer in `room` up to `seq` (never down); returns the pointer
    /// now stored, durable once this returns.
    pub async fn save_read_pointer(&self, room: &str, user: &str, seq: u64) -> Result<u64, String> {
        let seq = seq.min(i64::MAX as u64) as i64;
        let rows = self
            .query(
                "INSERT INTO read_pointers (room, user_id, seq) VALUES ($1, $2, $3)
                 ON CONFLICT (room, user_id) DO UPDATE
                   SET seq = GREATEST(read_pointers.seq, EXCLUDED.seq), updated_at = now()
                 RETURNING seq",
                &[&room, &user, &seq],
            )
            .await?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }
}

fn row_json(row: &Row) -> Vec<u8> {
    let msg = Msg {
        room: row.get("room"),
        seq: row.get::<_, i64>("seq").max(0) as u64,
        id: row.get("id"),
        from: row.get("sender"),
        ts: row.get::<_, i64>("ts").max(0) as u64,
        body: row.get("body"),
        cid: row.get("cid"),
    };
    let mut out = BytesMut::new();
    msg.encode(&mut out);
    out.to_vec()
}
