// The classic stack: Node.js `ws` + `ioredis` pub/sub, speaking the project's protocol
// (/work/shared/PROTOCOL.md: join / send -> msg to every member / ack) as a Node team writes
// it first: per message one INCR for the room's seq and one PUBLISH to the room's channel
// (two awaited round trips, no batching), every node PSUBSCRIBEd to all rooms and fanning
// out to its local members (the server itself: chat.js, shared with nodews-kafka). No Kafka
// or PostgreSQL (see peers/README.md). Default options.
// Run by peers/peer.sh (PORT, REDIS_URL); listens on 127.0.0.1 only.
const { chatServer } = require("./chat");

const port = Number(process.env.PORT || 9111);
const server = chatServer({ redisUrl: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
server.listen(port, "127.0.0.1", () => console.log(`ws listening on 127.0.0.1:${port}`));
