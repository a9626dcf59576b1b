//! Writing a batch of messages to PostgreSQL: binary COPY (`BinaryCopyInWriter`, the
//! persister's path in persister/src/copy.rs) against multi-row `INSERT ... VALUES` (1000 rows
//! per statement), `INSERT ... SELECT FROM unnest($1, ...)` (one statement, arrays) and one
//! `INSERT` per row (prepared, awaited one by one). 1k and 10k rows; each batch is one
//! transaction, commit included.
//!
//! The table is the persister's `messages` (PROTOCOL.md's columns plus `cid` and
//! `persisted_at`, primary key `(room, seq)`) in a bench-owned schema `chat_bench`, made at
//! the start by the persister's own migrations (`chat_persister::schema::migrate`) and dropped
//! at the end; it is truncated (outside the timing) before every batch.
//! `CHAT_BENCH_POSTGRES` overrides the address (default `postgres://postgres@127.0.0.1:5432/test`).

use chat_persister::schema::SchemaError;
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::pin::pin;
use std::time::{Duration, Instant, SystemTime};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SCHEMA: &str = "chat_bench";
const COLUMNS: &str = "room, seq, id, sender, body, sent_at, cid";
const TYPES: [Type; 7] = [
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
];
/// Rows per multi-row `INSERT` (7 parameters a row; PostgreSQL allows 65535 per statement).
const INSERT_CHUNK: usize = 1000;

struct Row {
    room: String,
    seq: i64,
    id: String,
    sender: String,
    body: String,
    sent_at: SystemTime,
    cid: String,
}

impl Row {
    fn params(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.room,
            &self.seq,
            &self.id,
            &self.sender,
            &self.body,
            &self.sent_at,
            &self.cid,
        ]
    }
}

/// Realistic messages: 50 rooms, dense seqs per room, bodies of 20-400 bytes with accents and
/// emoji.
fn rows(n: usize) -> Vec<Row> {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
    (0..n)
        .map(|i| Row {
            room: format!("room-{}", i % 50),
            seq: (i / 50 + 1) as i64,
            id: format!("5f3a9c0e12d4b6a8-{}-{i:x}", i % 2),
            sender: format!("user{}", (i * 7919) % 1000),
            body: chat_bench::chat_text(20 + (i * 37) % 381, false),
            sent_at: start + Duration::from_millis(i as u64 * 3),
            cid: format!("c-{i}"),
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Method {
    BinaryCopy,
    MultiRowInsert,
    Unnest,
    SingleRowInsert,
}

struct Db {
    client: Client,
    multi_insert: Statement,
    unnest_insert: Statement,
    single_insert: Statement,
}

async fn setup(url: &str) -> Result<Db, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(3));
    config.application_name("chat-bench");
    let (mut client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // The persister's own migrations, made in the bench's schema through the search path.
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
             CREATE SCHEMA {SCHEMA};
             SET search_path TO {SCHEMA};"
        ))
        .await?;
    match chat_persister::schema::migrate(&mut client).await {
        Ok(_) => {}
        Err(SchemaError::Db(e)) => return Err(e),
        Err(SchemaError::Mismatch(m)) => panic!("{SCHEMA}.messages: {m}"),
    }
    client.batch_execute("RESET search_path").await?;
    let values: Vec<String> = (0..INSERT_CHUNK)
        .map(|r| {
            let p: Vec<String> = (1..=7).map(|c| format!("${}", r * 7 + c)).collect();
            format!("({})", p.join(","))
        })
        .collect();
    let multi_insert = client
        .prepare_typed(
            &format!(
                "INSERT INTO {SCHEMA}.messages ({COLUMNS}) VALUES {}",
                values.join(",")
            ),
            &(0..INSERT_CHUNK)
                .flat_map(|_| TYPES.iter().cloned())
                .collect::<Vec<_>>(),
        )
        .await?;
    let unnest_insert = client
        .prepare(&format!(
            "INSERT INTO {SCHEMA}.messages ({COLUMNS}) SELECT * FROM unnest(\
             $1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])"
        ))
        .await?;
    let single_insert = client
        .prepare_typed(
            &format!("INSERT INTO {SCHEMA}.messages ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7)"),
            &TYPES,
        )
        .await?;
    Ok(Db {
        client,
        multi_insert,
        unnest_insert,
        single_insert,
    })
}

impl Db {
    /// Writes `rows` in one transaction with `method`.
    async fn write(&mut self, method: Method, rows: &[Row]) {
        let tx = self.client.transaction().await.unwrap();
        let written = match method {
            Method::BinaryCopy => {
                let sink = tx
                    .copy_in(&format!(
                        "COPY {SCHEMA}.messages ({COLUMNS}) FROM STDIN (FORMAT binary)"
                    ))
                    .await
                    .unwrap();
                let mut writer = pin!(BinaryCopyInWriter::new(sink, &TYPES));
                for r in rows {
                    writer.as_mut().write(&r.params()).await.unwrap();
                }
                writer.finish().await.unwrap()
            }
            Method::MultiRowInsert => {
                let mut n = 0;
                for chunk in rows.chunks(INSERT_CHUNK) {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        chunk.iter().flat_map(|r| r.params()).collect();
                    n += if chunk.len() == INSERT_CHUNK {
                        tx.execute(&self.multi_insert, &params).await.unwrap()
                    } else {
                        // A short last chunk (not with 1k/10k batches) would need its own
                        // statement.
                        unreachable!("batches are multiples of {INSERT_CHUNK}")
                    };
                }
                n
            }
            Method::Unnest => {
                let rooms: Vec<&str> = rows.iter().map(|r| r.room.as_str()).collect();
                let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
                let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
                let senders: Vec<&str> = rows.iter().map(|r| r.sender.as_str()).collect();
                let bodies: Vec<&str> = rows.iter().map(|r| r.body.as_str()).collect();
                let sent: Vec<SystemTime> = rows.iter().map(|r| r.sent_at).collect();
                let cids: Vec<&str> = rows.iter().map(|r| r.cid.as_str()).collect();
                tx.execute(
                    &self.unnest_insert,
                    &[&rooms, &seqs, &ids, &senders, &bodies, &sent, &cids],
                )
                .await
                .unwrap()
            }
            Method::SingleRowInsert => {
                let mut n = 0;
                for r in rows {
                    n += tx.execute(&self.single_insert, &r.params()).await.unwrap();
                }
                n
            }
        };
        assert_eq!(written, rows.len() as u64);
        tx.commit().await.unwrap();
    }

    async fn truncate(&self) {
        self.client
            .batch_execute(&format!("TRUNCATE {SCHEMA}.messages"))
            .await
            .unwrap();
    }
}

fn pg_copy(c: &mut Criterion) {
    let url = chat_bench::postgres_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut db = match rt.block_on(setup(&url)) {
        Ok(db) => db,
        Err(e) => {
            // tokio-postgres keeps the cause ("Connection refused") in the source chain.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            println!("SKIPPED: pg_copy needs PostgreSQL at {url} ({why}); set CHAT_BENCH_POSTGRES");
            return;
        }
    };
    let mut group = c.benchmark_group("pg_copy");
    // A batch of 10k single-row inserts takes a good part of a second: ten samples of one
    // batch each rather than criterion's growing sample sizes.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for n in [1000, 10_000] {
        let batch = rows(n);
        group.throughput(Throughput::Elements(n as u64));
        for (name, method) in [
            ("ours_binary_copy", Method::BinaryCopy),
            ("multi_row_insert", Method::MultiRowInsert),
            ("unnest_insert", Method::Unnest),
            ("single_row_insert", Method::SingleRowInsert),
        ] {
            group.bench_function(BenchmarkId::new(name, format!("{n}_rows")), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            db.truncate().await;
                            let started = Instant::now();
                            db.write(method, &batch).await;
                            total += started.elapsed();
                        }
                        total
                    })
                })
            });
        }
    }
    group.finish();
    rt.block_on(
        db.client
            .batch_execute(&format!("DROP SCHEMA {SCHEMA} CASCADE")),
    )
    .unwrap();
}

criterion_group!(benches, pg_copy);
criterion_main!(benches);
