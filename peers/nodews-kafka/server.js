// The classic stack with the durable log of the original design: Node.js `ws` + `ioredis`
// pub/sub (exactly the nodews server: peers/nodews/chat.js) plus Kafka through `node-rdkafka`:
// per `send` an INCR of the room's seq, then the finished `msg` is PUBLISHed to the room's
// channel and produced to Kafka (idempotent producer, acks=all, key = room, value = the msg
// JSON), and the `ack` goes out once the delivery report says the broker has it. A separate Node process
// (persister.js) writes the topic to PostgreSQL. Configuration: peers/README.md.
// Run by peers/peer.sh (PORT, REDIS_URL, KAFKA_BROKERS, KAFKA_TOPIC); listens on 127.0.0.1 only.
const Kafka = require("node-rdkafka");
const { chatServer } = require("../nodews/chat");

const port = Number(process.env.PORT || 9113);
const topic = process.env.KAFKA_TOPIC || "chat.messages";

// The producer as node-rdkafka's README sets one up (dr_cb + a poll interval), with the
// durability settings of the design: idempotence (which implies acks=all, set explicitly too).
const producer = new Kafka.Producer({
  "metadata.broker.list": process.env.KAFKA_BROKERS || "127.0.0.1:9092",
  "enable.idempotence": true,
  acks: "all",
  dr_cb: true,
});
const pending = new Map(); // opaque -> resolve/reject of the delivery
let nextOpaque = 0;
producer.on("delivery-report", (err, report) => {
  const p = pending.get(report.opaque);
  pending.delete(report.opaque);
  if (p) err ? p.reject(err) : p.resolve();
});
producer.on("event.error", (err) => console.error("kafka:", err.message));
// The README polls every 100 ms; delivery reports wait for the next poll, so 10 ms keeps the
// ack from waiting up to 100 ms on a report that is already there.
producer.setPollInterval(10);
function produce(room, value) {
  return new Promise((resolve, reject) => {
    const opaque = nextOpaque++;
    pending.set(opaque, { resolve, reject });
    try {
      producer.produce(topic, null, Buffer.from(value), room, Date.now(), opaque);
    } catch (err) {
      pending.delete(opaque);
      reject(err);
    }
  });
}

const server = chatServer({ redisUrl: process.env.REDIS_URL || "redis://127.0.0.1:6379", persist: produce });

producer.connect({}, (err) => {
  if (err) {
    console.error("kafka connect:", err.message);
    process.exit(1);
  }
  server.listen(port, "127.0.0.1", () => console.log(`ws listening on 127.0.0.1:${port}, producing to ${topic}`));
});
