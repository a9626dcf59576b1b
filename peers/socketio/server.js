// Socket.IO 4 rooms server with the Redis adapter, written the way the Socket.IO docs write
// one (https://socket.io/docs/v4/redis-adapter/, /rooms/, /emitting-events/#acknowledgements):
// `join` puts the socket in a room, `send` broadcasts to the room with `io.to(room).emit`
// (every member, the sender included, on every node through Redis) and acknowledges.
// Nothing is tuned: default server options, default adapter options.
// Run by peers/peer.sh (PORT, REDIS_URL); listens on 127.0.0.1 only.
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 9101);
const pubClient = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
const subClient = pubClient.duplicate();

Promise.all([pubClient.connect(), subClient.connect()]).then(() => {
  const httpServer = createServer();
  const io = new Server(httpServer, { adapter: createAdapter(pubClient, subClient) });
  io.on("connection", (socket) => {
    socket.on("join", ({ room }, ack) => {
      socket.join(room);
      ack({ room });
    });
    socket.on("send", ({ room, cid, body }, ack) => {
      if (!socket.rooms.has(room)) return ack({ room, cid, error: "not_joined" });
      io.to(room).emit("msg", { room, cid, body });
      ack({ room, cid });
    });
  });
  httpServer.listen(port, "127.0.0.1", () => console.log(`socket.io listening on 127.0.0.1:${port}`));
});
