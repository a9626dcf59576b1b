//! The persister's schema, applied at start: numbered migrations recorded in
//! `persister_schema_migrations`, each applied once, all in one transaction. It is the one
//! DDL of these tables: other crates that need them (the server's store tests, the benches)
//! call [`migrate`] on a client of their own rather than write a `CREATE TABLE messages`.
//!
//! Two persisters may start at the same moment (a deploy, a restart of a group). Each takes a
//! transaction-level advisory lock first, so one applies the migrations and the other, once the
//! first has committed, finds them recorded and does nothing. (`CREATE TABLE IF NOT EXISTS`
//! alone is not enough: two sessions can both see "not there" and one fails on the catalog's
//! unique index.) The lock goes with the transaction, also when the session dies.
//!
//! Tables:
//! * `messages`: exactly PROTOCOL.md's table, primary key (room, seq), plus `cid` (the sender's
//!   client id, so that the server can rebuild the `msg` JSON for history) and `persisted_at`
//!   (when the row landed, for measuring the pipeline's delay).
//! * `persister_offsets`: per (topic, partition) the offset of the next record to read. It is
//!   written in the same transaction as the rows, and consumption resumes from it: it is the
//!   source of truth, Kafka's committed offsets are only a copy for monitoring tools. With it,
//!   `last_hash`: a fingerprint of the record just before that offset, so that a new log under
//!   the same name (a recreated topic) is told apart from the one the offset was stored for
//!   (see [`crate::start_offset`]).
//! * `persister_dead_letters`: records that cannot become rows (see [`crate::dead_letter`]).
//! * `read_pointers`: per (room, user) the seq the user has read up to (PROTOCOL.md v1.1),
//!   written by the server nodes (`GREATEST`, so it never goes back); not through Kafka, since
//!   a pointer is one small idempotent upsert that must be durable before the server answers.

use tokio_postgres::{Client, Error, GenericClient};

/// Key of the advisory lock around migrations ("chatpers" in ASCII).
const LOCK_KEY: i64 = 0x6368_6174_7065_7273;

/// The newest migration's version; a database [`migrate`]d by this build has every version
/// from 1 to this one, once each.
pub const LATEST_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// (version, name, SQL). Append only: a released migration is never edited.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "messages, offsets, dead letters",
        r#"
CREATE TABLE IF NOT EXISTS messages (
  room    text        NOT NULL,
  seq     bigint      NOT NULL,
  id      text        NOT NULL,
  sender  text        NOT NULL,
  body    text        NOT NULL,
  sent_at timestamptz NOT NULL,
  PRIMARY KEY (room, seq)
);
ALTER TABLE messages ADD COLUMN IF NOT EXISTS cid text;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS persisted_at timestamptz NOT NULL DEFAULT now();

CREATE TABLE IF NOT EXISTS persister_offsets (
  topic       text        NOT NULL,
  partition   integer     NOT NULL,
  next_offset bigint      NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (topic, partition)
);

CREATE TABLE IF NOT EXISTS persister_dead_letters (
  topic           text        NOT NULL,
  partition       integer     NOT NULL,
  "offset"        bigint      NOT NULL,
  key             bytea,
  value           bytea,
  reason          text        NOT NULL,
  kafka_timestamp timestamptz,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (topic, partition, "offset")
);
"#,
    ),
    (
        2,
        "the fingerprint of the last stored record per partition",
        r#"
ALTER TABLE persister_offsets ADD COLUMN IF NOT EXISTS last_hash bigint;
"#,
    ),
    (
        3,
        "read pointers (v1.1), written by the server",
        r#"
CREATE TABLE IF NOT EXISTS read_pointers (
  room       text        NOT NULL,
  user_id    text        NOT NULL,
  seq        bigint      NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (room, user_id)
);
"#,
    ),
];

/// The columns PROTOCOL.md fixes: name, type as `format_type` prints it.
const PROTOCOL_COLUMNS: &[(&str, &str)] = &[
    ("room", "text"),
    ("seq", "bigint"),
    ("id", "text"),
    ("sender", "text"),
    ("body", "text"),
    ("sent_at", "timestamp with time zone"),
];

/// Failure to bring the schema up to date.
#[derive(Debug)]
pub enum SchemaError {
    /// PostgreSQL failed (retry: it may be restarting).
    Db(Error),
    /// The tables are there but not as they must be (fatal: an operator has to look).
    Mismatch(String),
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaError::Db(e) => write!(f, "PostgreSQL: {}", crate::pg::chain(e)),
            SchemaError::Mismatch(m) => write!(f, "schema mismatch: {m}"),
        }
    }
}

impl From<Error> for SchemaError {
    fn from(e: Error) -> SchemaError {
        SchemaError::Db(e)
    }
}

/// Applies the missing migrations and checks `messages`; returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, SchemaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS persister_schema_migrations (
           version    integer     PRIMARY KEY,
           name       text        NOT NULL,
           applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM persister_schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO persister_schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        applied.push(version);
    }
    check_messages(&tx).await?;
    tx.commit().await?;
    Ok(applied)
}

/// `messages` has PROTOCOL.md's columns, NOT NULL, and the primary key (room, seq): a table
/// made by someone else with, say, `seq integer` would otherwise fail much later.
async fn check_messages(db: &impl GenericClient) -> Result<(), SchemaError> {
    let columns = db
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull
             FROM pg_attribute a
             WHERE a.attrelid = 'messages'::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .await?;
    for &(name, ty) in PROTOCOL_COLUMNS {
        let found = columns.iter().find(|r| r.get::<_, &str>(0) == name);
        match found {
            None => return Err(SchemaError::Mismatch(format!("messages.{name} is missing"))),
            Some(r) if r.get::<_, &str>(1) != ty || !r.get::<_, bool>(2) => {
                return Err(SchemaError::Mismatch(format!(
                    "messages.{name} is {}{}, expected {ty} NOT NULL",
                    r.get::<_, &str>(1),
                    if r.get::<_, bool>(2) { " NOT NULL" } else { "" }
                )))
            }
            Some(_) => {}
        }
    }
    let key: Vec<String> = db
        .query(
            "SELECT a.attname::text
             FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = 'messages'::regclass AND i.indisprimary
             ORDER BY k.ord",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if key != ["room", "seq"] {
        return Err(SchemaError::Mismatch(format!(
            "the primary key of messages is {key:?}, expected (room, seq)"
        )));
    }
    Ok(())
}
