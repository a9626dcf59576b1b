//! One batch, one transaction: binary COPY into a temporary staging table, insert what is new
//! into `messages`, store the dead letters and move the partitions' offsets forward; commit.
//!
//! Why a staging table: `COPY` cannot skip rows that exist already, and after a crash or a
//! rebalance Kafka delivers some records again. `INSERT INTO messages SELECT ... FROM staging
//! ON CONFLICT (room, seq) DO NOTHING` keeps the first copy of each (room, seq) and ignores the
//! rest, and the offsets go into `persister_offsets` in the same transaction: either the rows
//! and the offset that says "read after them" are both there, or neither is. The staging table
//! is `TEMP ... ON COMMIT DELETE ROWS`: private to the session, not WAL-logged, emptied by every
//! commit or rollback.
//!
//! The fast path (`--copy-mode auto`, the default): when the last batches met no duplicate,
//! the batch is copied straight into `messages` inside a savepoint, which writes every row
//! once instead of twice. A duplicate fails that COPY with a unique violation; the savepoint
//! is rolled back (nothing of it stays) and the batch takes the staging path, as do the next
//! few batches (duplicates come in runs: after a restart, a rebalance, a producer retry
//! storm). Same transaction, same guarantees, either way.
//!
//! Offsets only move forward (`GREATEST`, [`crate::pg::offsets::UPSERT`]): a persister that
//! lost a partition in a rebalance but still commits a batch of it cannot move the new owner
//! back.
//!
//! Failures: a batch is retried, with backoff, on a new connection until it is written, never
//! skipped (the next batch would move the offsets past it). Bad data cannot cause a failure
//! here, [`crate::batch`] sets it aside first, so every failure is one that ends: PostgreSQL
//! restarting, a lost link (caught by `--write-timeout-ms` when nothing says so).

use crate::batch::{Batch, Row};
use crate::config::CopyMode;
use crate::dead_letter;
use crate::metrics::Metrics;
use crate::pg::{chain, connect, offsets, Backoff};
use crate::schema::{self, SchemaError};
use bytes::{BufMut, BytesMut};
use std::error::Error as StdError;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement, Transaction};

const CREATE_STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS persister_staging (
    room text, seq bigint, id text, sender text, body text, sent_at timestamptz, cid text
) ON COMMIT DELETE ROWS";

const COPY_STAGING: &str = "COPY persister_staging (room, seq, id, sender, body, sent_at, cid) \
     FROM STDIN (FORMAT binary)";

const COLUMN_TYPES: [Type; 7] = [
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
];

const COPY_MESSAGES: &str = "COPY messages (room, seq, id, sender, body, sent_at, cid) \
     FROM STDIN (FORMAT binary)";

/// Batches that take the staging path after one that met a duplicate.
const STAGING_AFTER_CONFLICT: u32 = 8;

const INSERT_MESSAGES: &str = "INSERT INTO messages (room, seq, id, sender, body, sent_at, cid) \
     SELECT room, seq, id, sender, body, sent_at, cid FROM persister_staging \
     ON CONFLICT (room, seq) DO NOTHING";

/// A `timestamptz` in PostgreSQL's binary form (microseconds since 2000-01-01 UTC), computed
/// once by [`crate::batch::parse`].
#[derive(Debug)]
struct PgTimestamp(i64);

impl ToSql for PgTimestamp {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_i64(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    to_sql_checked!();
}

/// What one committed batch did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    /// Rows new to `messages`.
    pub inserted: u64,
    /// Rows of the batch that `messages` had already (redelivered).
    pub conflicts: u64,
    /// Dead letters new to their table.
    pub dead_letters: u64,
    /// Time of the COPY (with the insert from staging when it took that path), and of the
    /// whole transaction (last attempt).
    pub copy: Duration,
    pub transaction: Duration,
    /// Attempts it took (1 when nothing failed).
    pub attempts: u32,
    /// The rows went straight into `messages` (no staging table).
    pub direct: bool,
    /// A direct COPY met a duplicate and the batch fell back to staging.
    pub fell_back: bool,
}

/// One connection with its session state (staging table, prepared statements).
struct Session {
    client: Client,
    insert_messages: Statement,
    upsert_offsets: Statement,
}

/// Writes batches to PostgreSQL, reconnecting as needed.
pub struct Writer {
    pg: tokio_postgres::Config,
    topic: String,
    retry_max: Duration,
    write_timeout: Duration,
    metrics: Arc<Metrics>,
    session: Option<Session>,
    mode: CopyMode,
    /// Batches left that take the staging path before a direct COPY is tried again.
    staging_left: u32,
}

impl Writer {
    pub fn new(
        pg: tokio_postgres::Config,
        topic: String,
        retry_max: Duration,
        write_timeout: Duration,
        mode: CopyMode,
        metrics: Arc<Metrics>,
    ) -> Writer {
        Writer {
            pg,
            topic,
            retry_max,
            write_timeout,
            metrics,
            session: None,
            mode,
            staging_left: 0,
        }
    }

    async fn open(&self) -> Result<Session, tokio_postgres::Error> {
        let client = connect(&self.pg).await?;
        client.batch_execute(CREATE_STAGING).await?;
        let insert_messages = client.prepare(INSERT_MESSAGES).await?;
        let upsert_offsets = client.prepare(offsets::UPSERT).await?;
        Ok(Session {
            client,
            insert_messages,
            upsert_offsets,
        })
    }

    /// Applies the schema migrations, retrying while PostgreSQL is unreachable. Returns the
    /// versions applied now; `Err` only for a schema that does not match (fatal), or when
    /// `stop` says to give up.
    pub async fn migrate(&mut self, stop: impl Fn() -> bool) -> Result<Vec<i32>, String> {
        let mut backoff = Backoff::new(self.retry_max);
        loop {
            let result = match connect(&self.pg).await {
                Ok(mut client) => schema::migrate(&mut client).await,
                Err(e) => Err(SchemaError::Db(e)),
            };
            match result {
                Ok(applied) => return Ok(applied),
                Err(SchemaError::Mismatch(m)) => return Err(m),
                Err(SchemaError::Db(e)) => {
                    if stop() {
                        return Err(format!(
                            "stopped while PostgreSQL was unavailable: {}",
                            chain(&e)
                        ));
                    }
                    let pause = backoff.next_pause();
                    tracing::warn!(error = %chain(&e), retry_in = ?pause, "schema migration failed");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Writes `batch` in one transaction, retrying (new connection, growing pauses) until it is
    /// committed. Never gives up: skipping a batch would lose it.
    pub async fn write(&mut self, batch: &Batch) -> Written {
        let mut backoff = Backoff::new(self.retry_max);
        let mut attempts = 0;
        loop {
            attempts += 1;
            if self.session.is_none() {
                match self.open().await {
                    Ok(s) => {
                        if attempts > 1 {
                            tracing::info!(attempts, "PostgreSQL connection re-established");
                        }
                        self.session = Some(s);
                    }
                    Err(e) => {
                        self.metrics.inc(&self.metrics.pg_errors);
                        let pause = backoff.next_pause();
                        tracing::warn!(error = %chain(&e), retry_in = ?pause, attempts, "PostgreSQL connect failed; batch waits");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                }
            }
            let session = self.session.as_mut().expect("connected above");
            let started = Instant::now();
            let direct = self.mode == CopyMode::Auto && self.staging_left == 0;
            let result = tokio::time::timeout(
                self.write_timeout,
                write_once(session, &self.topic, batch, direct),
            )
            .await;
            let error = match result {
                Ok(Ok(mut written)) => {
                    written.transaction = started.elapsed();
                    written.attempts = attempts;
                    if written.fell_back {
                        self.staging_left = STAGING_AFTER_CONFLICT;
                    } else {
                        self.staging_left = self.staging_left.saturating_sub(1);
                    }
                    return written;
                }
                Ok(Err(e)) => chain(&e),
                Err(_) => format!("no answer within {:?}", self.write_timeout),
            };
            // The transaction is gone (rolled back by the server when the connection closes);
            // a new connection starts clean.
            self.session = None;
            self.metrics.inc(&self.metrics.pg_errors);
            let pause = backoff.next_pause();
            tracing::warn!(%error, retry_in = ?pause, attempts, records = batch.records, "batch write failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }
}

/// Binary COPY of `rows` with `statement` (into staging or straight into `messages`).
async fn copy_rows(
    tx: &Transaction<'_>,
    statement: &str,
    rows: &[Row],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx.copy_in(statement).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &COLUMN_TYPES));
    for r in rows {
        writer
            .as_mut()
            .write(&[
                &r.room,
                &r.seq,
                &r.id,
                &r.sender,
                &r.body,
                &PgTimestamp(r.sent_at_pg_us),
                &r.cid,
            ])
            .await?;
    }
    writer.finish().await
}

/// The transaction of one batch; `direct` tries the COPY straight into `messages` first.
async fn write_once(
    session: &mut Session,
    topic: &str,
    batch: &Batch,
    direct: bool,
) -> Result<Written, tokio_postgres::Error> {
    let mut tx = session.client.transaction().await?;
    let mut written = Written::default();
    if !batch.rows.is_empty() {
        let copy_started = Instant::now();
        let mut done = false;
        if direct {
            let savepoint = tx.savepoint("direct_copy").await?;
            match copy_rows(&savepoint, COPY_MESSAGES, &batch.rows).await {
                Ok(n) => {
                    savepoint.commit().await?;
                    written.inserted = n;
                    written.direct = true;
                    done = true;
                }
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    savepoint.rollback().await?;
                    written.fell_back = true;
                }
                Err(e) => return Err(e),
            }
        }
        if !done {
            copy_rows(&tx, COPY_STAGING, &batch.rows).await?;
            written.inserted = tx.execute(&session.insert_messages, &[]).await?;
        }
        written.copy = copy_started.elapsed();
        written.conflicts = batch.rows.len() as u64 - written.inserted;
    }
    written.dead_letters = dead_letter::insert(&tx, topic, &batch.dead_letters).await?;
    if !batch.offsets.is_empty() {
        let partitions: Vec<i32> = batch.offsets.keys().copied().collect();
        let offsets: Vec<i64> = batch.offsets.values().copied().collect();
        let hashes: Vec<Option<i64>> = partitions
            .iter()
            .map(|p| batch.tails.get(p).copied())
            .collect();
        tx.execute(
            &session.upsert_offsets,
            &[&topic, &partitions, &offsets, &hashes],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(written)
}
