// The chat server both Node peers run (peers/nodews/server.js and peers/nodews-kafka/server.js):
// Node.js `ws` + `ioredis` pub/sub speaking the project's protocol (/work/shared/PROTOCOL.md:
// join / send -> msg to every member / ack). Per `send` one INCR for the room's seq and one
// PUBLISH to the room's channel (awaited round trips, no batching); every node PSUBSCRIBEs to
// all rooms and fans out to its local members. `persist(room, json)`, when given, is started
// before the PUBLISH and awaited after it: the ack waits for it, and a failure answers
// `unavailable` instead. Returns the HTTP server (path /ws), not yet listening.
const http = require("http");
const { WebSocketServer } = require("ws");
const Redis = require("ioredis");

function chatServer({ redisUrl, persist }) {
  const node = Math.random().toString(16).slice(2, 10);
  const redis = new Redis(redisUrl);
  const sub = new Redis(redisUrl);
  const rooms = new Map(); // room -> Set of sockets on this node
  let counter = 0;

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
        const durable = persist ? persist(m.room, json) : null;
        await redis.publish(`room:${m.room}`, json);
        if (durable) {
          try {
            await durable;
          } catch {
            return error(ws, "unavailable", m.cid);
          }
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
  return server;
}

module.exports = { chatServer };
