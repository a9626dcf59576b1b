//! Persister throughput next to PostgreSQL's own load paths, on the same rows and table.
//!
//! `persister/bench.sh` runs it (it starts the broker and builds in release mode); by hand:
//!
//! ```sh
//! cargo run --release -p chat-persister --example bench -- \
//!     --kafka 127.0.0.1:9092 --topic bench --persister target/release/chat-persister
//! ```
//!
//! 1. produces `--n` `msg` records (~200 bytes of JSON each, `--rooms` rooms, seq 1.. per
//!    room, interleaved) to `--topic` (which must exist, ideally with 8 partitions);
//! 2. starts the persister on a fresh database and times it until every row is in
//!    `messages` (from the process start, and from its first committed row);
//! 3. loads the same rows with `psql \copy` from a CSV into a fresh `messages` table (made by
//!    the persister's own migrations, `chat_persister::schema::migrate`), in the stream's
//!    order and sorted by (room, seq);
//! 4. loads them with seed-style multi-row `INSERT ... VALUES (...),(...)` statements of 1000
//!    rows each (`psql -f`), one transaction per statement.
//!
//! Every database is created for the run and dropped at the end (`--keep` keeps them).

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WORDS: &[&str] = &[
    "hello", "world", "chat", "message", "latency", "kafka", "postgres", "copy", "batch", "room",
    "fast", "slow", "lunch", "today", "tomorrow", "ok", "thanks", "see", "you", "soon",
];

struct Args {
    kafka: String,
    topic: String,
    postgres: String,
    persister: PathBuf,
    n: usize,
    rooms: usize,
    work: PathBuf,
    skip_produce: bool,
    keep: bool,
    persister_args: Vec<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        kafka: String::new(),
        topic: "bench".into(),
        postgres: "postgres://postgres@127.0.0.1:5432/test".into(),
        persister: "target/release/chat-persister".into(),
        n: 1_000_000,
        rooms: 1000,
        work: std::env::temp_dir().join("chat-persister-bench"),
        skip_produce: false,
        keep: false,
        persister_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--kafka" => a.kafka = value(),
            "--topic" => a.topic = value(),
            "--postgres" => a.postgres = value(),
            "--persister" => a.persister = value().into(),
            "--n" => a.n = value().parse().expect("--n"),
            "--rooms" => a.rooms = value().parse().expect("--rooms"),
            "--work" => a.work = value().into(),
            "--skip-produce" => a.skip_produce = true,
            "--keep" => a.keep = true,
            "--" => a.persister_args = it.by_ref().collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.kafka.is_empty(), "--kafka BROKERS is required");
    a
}

/// One message of the run, as the persister will store it.
struct Msg {
    room: String,
    seq: i64,
    id: String,
    from: String,
    ts: i64,
    body: String,
    cid: String,
}

fn message(i: usize, rooms: usize) -> Msg {
    let mut body = String::with_capacity(100);
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while body.len() < 90 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if !body.is_empty() {
            body.push(' ');
        }
        body.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    Msg {
        room: format!("room-{:05}", i % rooms),
        seq: (i / rooms) as i64 + 1,
        id: format!("bench-0-{i:x}"),
        from: format!("user{}", i % 97),
        ts: 1_700_000_000_000 + i as i64,
        body,
        cid: format!("c{i}"),
    }
}

fn json(m: &Msg) -> String {
    serde_json::json!({
        "type": "msg", "room": m.room, "seq": m.seq, "id": m.id, "from": m.from,
        "ts": m.ts, "body": m.body, "cid": m.cid,
    })
    .to_string()
}

/// `YYYY-MM-DD HH:MM:SS.mmm+00` for ms since the Unix epoch (days-to-civil, proleptic
/// Gregorian).
fn timestamp(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}+00",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

fn psql(url: &str, args: &[&str]) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-qAt"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn db_url(admin: &str, name: &str) -> String {
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}

fn create_db(admin: &str, name: &str) -> String {
    psql(
        admin,
        &[
            "-c",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ],
    );
    psql(admin, &["-c", &format!("CREATE DATABASE {name}")]);
    db_url(admin, name)
}

fn count(url: &str) -> i64 {
    psql(url, &["-c", "SELECT count(*) FROM messages"])
        .parse()
        .expect("count")
}

fn produce(a: &Args) -> f64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &a.kafka)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2000000")
        .create()
        .expect("producer");
    let started = Instant::now();
    let mut bytes = 0usize;
    for i in 0..a.n {
        let m = message(i, a.rooms);
        let value = json(&m);
        bytes += value.len();
        let mut record = BaseRecord::to(&a.topic).key(&m.room).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(600))
        .expect("every record delivered");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "produced {} records ({:.0} bytes of JSON each on average) in {secs:.1} s ({:.0}/s)",
        a.n,
        bytes as f64 / a.n as f64,
        a.n as f64 / secs
    );
    secs
}

fn metric(addr: &str, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

struct PersisterRun {
    total: f64,
    steady: f64,
    cpu: f64,
    batches: f64,
    /// Seconds spent inside batch transactions (the writer's busy time).
    in_transactions: f64,
}

fn run_persister(a: &Args, url: &str) -> PersisterRun {
    let group = format!("bench-{}", std::process::id());
    let log = a.work.join("persister.log");
    let started = Instant::now();
    let mut child = Command::new(&a.persister)
        .args(["--kafka", &a.kafka, "--postgres", url, "--topic", &a.topic])
        .args(["--group", &group, "--metrics-listen", "127.0.0.1:0"])
        .args(&a.persister_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start the persister");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .expect("first line");
    let addr = first
        .trim()
        .strip_prefix("metrics on http://")
        .expect("metrics address")
        .to_string();
    let mut first_row = None;
    let n = a.n as f64;
    loop {
        let rows = metric(&addr, "chat_persister_rows_written_total").unwrap_or(0.0);
        if rows > 0.0 && first_row.is_none() {
            first_row = Some((Instant::now(), rows));
        }
        if rows >= n {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the persister exited; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = started.elapsed().as_secs_f64();
    let (t_first, rows_first) = first_row.unwrap();
    let steady = (n - rows_first) / t_first.elapsed().as_secs_f64();
    let cpu = metric(&addr, "process_cpu_seconds_total").unwrap_or(0.0);
    let batches = metric(&addr, "chat_persister_batches_total").unwrap_or(0.0);
    let in_transactions = metric(&addr, "chat_persister_transaction_seconds_sum").unwrap_or(0.0);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "persister exit {status}");
    assert_eq!(count(url), a.n as i64, "rows in messages");
    PersisterRun {
        total,
        steady,
        cpu,
        batches,
        in_transactions,
    }
}

fn write_csv(a: &Args, path: &Path, sorted: bool) {
    let mut order: Vec<usize> = (0..a.n).collect();
    if sorted {
        order.sort_by_key(|&i| (i % a.rooms, i / a.rooms));
    }
    let mut w = BufWriter::new(std::fs::File::create(path).expect("csv"));
    for i in order {
        let m = message(i, a.rooms);
        writeln!(
            w,
            "{},{},{},{},{},{},{}",
            m.room,
            m.seq,
            m.id,
            m.from,
            m.body,
            timestamp(m.ts),
            m.cid
        )
        .unwrap();
    }
    w.flush().unwrap();
}

fn write_inserts(a: &Args, path: &Path) {
    let mut w = BufWriter::new(std::fs::File::create(path).expect("sql"));
    for chunk in (0..a.n).collect::<Vec<_>>().chunks(1000) {
        write!(
            w,
            "INSERT INTO messages (room, seq, id, sender, body, sent_at, cid) VALUES "
        )
        .unwrap();
        for (k, &i) in chunk.iter().enumerate() {
            let m = message(i, a.rooms);
            write!(
                w,
                "{}('{}',{},'{}','{}','{}','{}','{}')",
                if k == 0 { "" } else { "," },
                m.room,
                m.seq,
                m.id,
                m.from,
                m.body,
                timestamp(m.ts),
                m.cid
            )
            .unwrap();
        }
        writeln!(w, ";").unwrap();
    }
    w.flush().unwrap();
}

/// The persister's tables in the database at `url`, made by its own migrations: the raw loads
/// go into exactly the `messages` table the persister writes.
fn create_tables(url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        chat_persister::schema::migrate(&mut client)
            .await
            .expect("the persister's migrations");
    });
}

/// Runs `load` on a fresh `messages` table in database `name`; seconds it took.
fn timed_load(a: &Args, name: &str, load: &[&str]) -> f64 {
    let url = create_db(&a.postgres, name);
    create_tables(&url);
    psql(&url, &["-c", "CHECKPOINT"]);
    let started = Instant::now();
    psql(&url, load);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(count(&url), a.n as i64, "rows after {load:?}");
    secs
}

fn main() {
    let a = parse_args();
    std::fs::create_dir_all(&a.work).expect("work dir");
    if !a.skip_produce {
        produce(&a);
    }
    let n = a.n as f64;
    let pid = std::process::id();

    let persister_db = format!("bench_persister_{pid}");
    let url = create_db(&a.postgres, &persister_db);
    psql(&url, &["-c", "CHECKPOINT"]);
    let p = run_persister(&a, &url);
    println!(
        "persister: {} rows in {:.2} s from process start = {:.0} rows/s; {:.0} rows/s from the \
         first committed row; {:.0} batches; persister CPU {:.1} s; {:.2} s inside batch \
         transactions",
        a.n,
        p.total,
        n / p.total,
        p.steady,
        p.batches,
        p.cpu,
        p.in_transactions
    );

    let csv = a.work.join("messages.csv");
    write_csv(&a, &csv, false);
    let copy_cmd = format!(
        "\\copy messages (room, seq, id, sender, body, sent_at, cid) FROM '{}' WITH (FORMAT csv)",
        csv.display()
    );
    let copy = timed_load(&a, &format!("bench_copy_{pid}"), &["-c", &copy_cmd]);
    println!(
        "psql \\copy (stream order): {:.2} s = {:.0} rows/s",
        copy,
        n / copy
    );
    write_csv(&a, &csv, true);
    let copy_sorted = timed_load(&a, &format!("bench_copys_{pid}"), &["-c", &copy_cmd]);
    println!(
        "psql \\copy (sorted by room, seq): {:.2} s = {:.0} rows/s",
        copy_sorted,
        n / copy_sorted
    );

    let sql = a.work.join("inserts.sql");
    write_inserts(&a, &sql);
    let sql_path = sql.display().to_string();
    let insert = timed_load(&a, &format!("bench_insert_{pid}"), &["-f", &sql_path]);
    println!(
        "multi-row INSERT (1000 rows per statement, psql -f): {:.2} s = {:.0} rows/s",
        insert,
        n / insert
    );

    println!();
    println!("| path | seconds | rows/s | vs raw COPY |");
    println!("| --- | ---: | ---: | ---: |");
    let row = |name: &str, secs: f64| {
        println!(
            "| {name} | {secs:.2} | {:.0} | {:.2} |",
            n / secs,
            copy / secs
        );
    };
    row("raw `\\copy` CSV, stream order", copy);
    row("raw `\\copy` CSV, sorted by (room, seq)", copy_sorted);
    row("persister, first committed row to last", n / p.steady);
    row("persister, process start to last row", p.total);
    row("multi-row INSERT, 1000 rows/statement", insert);

    if !a.keep {
        for name in [
            persister_db,
            format!("bench_copy_{pid}"),
            format!("bench_copys_{pid}"),
            format!("bench_insert_{pid}"),
        ] {
            psql(
                &a.postgres,
                &[
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ],
            );
        }
        let _ = std::fs::remove_file(&csv);
        let _ = std::fs::remove_file(&sql);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::timestamp(0), "1970-01-01 00:00:00.000+00");
        assert_eq!(
            super::timestamp(1_700_000_000_123),
            "2023-11-14 22:13:20.123+00"
        );
    }
}
