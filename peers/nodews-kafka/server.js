// The classic stack with the durable log of the original design: Node.js `ws` + `ioredis`
// pub/sub (exactly peers/nodews/server.js) plus Kafka through `node-rdkafka`: per `send` an
// INCR of the room's seq, then the finished `msg` is PUBLISHed to the room's channel and
// produced to Kafka (idempotent producer, acks=all, key = room, value = the msg JSON), and the
// `ack` goes out once the delivery report says the broker has it. A separate Node process
// (persister.js) writes the topic to PostgreSQL. Configuration: peers/README.md.
// Run by peers/peer.sh (PORT, REDIS_URL, KAFKA_BROKERS, KAFKA_TOPIC); listens on 127.0.0.1 only.
const http = require("http");
const { WebSocketServer } = require("ws");
const Redis = require("ioredis");
const Kafka = require("node-rdkafka");

const port = Number(process.env.PORT || 9113);
const url = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const topic = process.env.KAFKA_TOPIC || "chat.messages";
const node = Math.random().toString(16).slice(2, 10);
const redis = new Redis(url);
const sub = new Redis(url);
const rooms = new Map(); // room -> Set of sockets on this node
let counter = 0;

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

sub.psubscribe("room:*");
sub.on("pmessage", (_pattern, channel, message) => {
  const members = rooms.get(channel.slice(5));
  if (members) for (const ws of members) ws.send(message);
});

function error(ws, code, cid) {
  ws.send(JSON.stringify({ type: "error", code, message: code, cid }));
}

const server = http.createServer((_req, res) => res.writeHead(404).end());
const wss = new WebSocketServer({ server, path: "/ws" });
wss.on("connection", (ws, req) => {
  const user = new URL(req.url, "http://x").searchParams.get("user") || "anonymous";
  const joined = new Set();
  ws.on("message", async (data) => {
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      return error(ws, "bad_request");
    }
    if (m.type === "join") {
      let members = rooms.get(m.room);
      if (!members) rooms.set(m.room, (members = new Set()));
      members.add(ws);
      joined.add(m.room);
      const seq = Number((await redis.get(`seq:${m.room}`)) || 0);
      ws.send(JSON.stringify({ type: "joined", room: m.room, seq }));
    } else if (m.type === "send") {
      if (!joined.has(m.room)) return error(ws, "not_joined", m.cid);
      const seq = await redis.incr(`seq:${m.room}`);
      const id = `${node}-${(counter++).toString(16)}`;
      const msg = { type: "msg", room: m.room, seq, id, from: user, ts: Date.now(), body: m.body, cid: m.cid };
      const json = JSON.stringify(msg);
      const durable = produce(m.room, json);
      await redis.publish(`room:${m.room}`, json);
      try {
        await durable;
      } catch {
        return error(ws, "unavailable", m.cid);
      }
      ws.send(JSON.stringify({ type: "ack", cid: m.cid, room: m.room, seq, id }));
    } else {
      error(ws, "bad_request", m.cid);
    }
  });
  ws.on("close", () => {
    for (const room of joined) {
      const members = rooms.get(room);
      members.delete(ws);
      if (members.size === 0) rooms.delete(room);
    }
  });
});

producer.connect({}, (err) => {
  if (err) {
    console.error("kafka connect:", err.message);
    process.exit(1);
  }
  server.listen(port, "127.0.0.1", () => console.log(`ws listening on 127.0.0.1:${port}, producing to ${topic}`));
});
