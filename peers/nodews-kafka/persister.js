// The classic stack's persister: a node-rdkafka consumer (consumer group, no auto-commit) and
// the `pg` package. Each batch of up to 1,000 records becomes one INSERT of all its rows into
// `messages` (../shared/PROTOCOL.md's schema) with ON CONFLICT DO NOTHING, so a redelivered
// record never duplicates a row; the offsets are committed only after the INSERT succeeded
// (at least once from Kafka, exactly once in the table). Run by peers/peer.sh (KAFKA_BROKERS,
// KAFKA_TOPIC, PG_URL).
const Kafka = require("node-rdkafka");
const { Pool } = require("pg");

const topic = process.env.KAFKA_TOPIC || "chat.messages";
const pool = new Pool({ connectionString: process.env.PG_URL || "postgres://postgres@127.0.0.1:5432/test", max: 1 });
const consumer = new Kafka.KafkaConsumer(
  {
    "metadata.broker.list": process.env.KAFKA_BROKERS || "127.0.0.1:9092",
    "group.id": "nodews-persister",
    "enable.auto.commit": false,
  },
  { "auto.offset.reset": "earliest" },
);
const BATCH = 1000;
let stored = 0;

const INSERT = `INSERT INTO messages (room, seq, id, sender, body, sent_at)
  SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
  ON CONFLICT DO NOTHING`;

async function write(records) {
  const cols = [[], [], [], [], [], []];
  for (const r of records) {
    const m = JSON.parse(r.value);
    cols[0].push(m.room);
    cols[1].push(m.seq);
    cols[2].push(m.id);
    cols[3].push(m.from);
    cols[4].push(m.body);
    cols[5].push(new Date(m.ts));
  }
  await pool.query(INSERT, cols);
}

// The next offset of every partition in the batch (what Kafka stores as committed).
function offsets(records) {
  const next = new Map();
  for (const r of records) next.set(r.partition, r.offset + 1);
  return [...next].map(([partition, offset]) => ({ topic, partition, offset }));
}

function loop() {
  consumer.consume(BATCH, async (err, records) => {
    if (err) {
      console.error("consume:", err.message);
      return setTimeout(loop, 100);
    }
    if (records.length > 0) {
      for (;;) {
        try {
          await write(records);
          break;
        } catch (e) {
          console.error("insert:", e.message);
          await new Promise((r) => setTimeout(r, 500));
        }
      }
      consumer.commit(offsets(records));
      stored += records.length;
    }
    setImmediate(loop);
  });
}

async function main() {
  await pool.query(`CREATE TABLE IF NOT EXISTS messages (
    room    text        NOT NULL,
    seq     bigint      NOT NULL,
    id      text        NOT NULL,
    sender  text        NOT NULL,
    body    text        NOT NULL,
    sent_at timestamptz NOT NULL,
    PRIMARY KEY (room, seq))`);
  consumer.on("event.error", (e) => console.error("kafka:", e.message));
  consumer.on("ready", () => {
    consumer.subscribe([topic]);
    console.log(`persister consuming ${topic}`);
    loop();
  });
  consumer.connect();
  process.on("SIGTERM", () => {
    console.log(`persister: ${stored} records stored`);
    consumer.disconnect(() => pool.end().then(() => process.exit(0)));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
