"use strict";
// PROTOCOL v1.1 for the chat page: presence, typing indicators and read pointers (unread
// counts). chat.js calls `chatLive(core)` once and then the returned hooks; `core` carries the
// page state `S` and the few helpers needed here.
window.chatLive = function (core) {
  const { S, $, send } = core;
  const TYPING_SEND_MS = 1000;   // the server drops more than 1 per user per room per second
  const TYPING_SHOW_MS = 3000;   // how long "x is typing…" stays after the last `typing`
  const lastTypingSent = new Map();   // room -> ms timestamp
  const readQueue = new Set();   // rooms whose read pointer should be sent
  let readTimer = null;
  let typingTimer = null;

  // ---- unread / read pointers ----------------------------------------------------------------
  // r.top: highest seq known in the room; r.read: the user's read pointer (null = unknown,
  // then the page counts live messages itself, as a v1 page did).
  function unreadOf(r) {
    if (r.read === null) return r.unread;
    return Math.max(0, r.top - r.read);
  }
  function raiseTop(r, seq) {
    if (typeof seq === "number" && seq > r.top) r.top = seq;
  }
  function setRead(r, seq) {
    if (typeof seq !== "number") return false;
    if (r.read !== null && seq <= r.read) return false;
    r.read = seq;
    r.unread = 0;
    return true;
  }
  // The user looks at `r` (it is the current room): everything in it up to `top` is read.
  function markRead(r) {
    if (r.name !== S.current || r.top <= 0) return;
    if (r.read !== null && r.read >= r.top) return;
    setRead(r, r.top);
    readQueue.add(r.name);
    if (readTimer === null) readTimer = setTimeout(flushReads, 50);
  }
  function flushReads() {
    readTimer = null;
    for (const name of readQueue) {
      const r = S.rooms.get(name);
      if (r && r.top > 0 && S.conn === "connected") send({ type: "read", room: name, seq: r.top });
    }
    readQueue.clear();
  }

  // ---- hooks called by chat.js ---------------------------------------------------------------
  // A message was stored (`isLive`: a `msg` frame) or acked.
  function seen(r, m, isLive) {
    raiseTop(r, m.seq);
    if (isLive && r.typing.delete(m.from)) renderInfo();
    markRead(r);
  }
  // `joined` or `resumed`: the latest seq and the user's read pointer.
  function joined(r, m) {
    raiseTop(r, m.seq);
    if (typeof m.read === "number") {
      r.serverRead = m.read;
      setRead(r, m.read);
    }
    if (!r.dm || r.name === S.current) send({ type: "presence", room: r.name });
    markRead(r);
    core.renderRooms();
  }
  function viewed(r) {
    r.unread = 0;
    markRead(r);
    if (r.dm && r.presence === null && S.conn === "connected") {
      send({ type: "presence", room: r.name });
    }
  }
  function disconnected() {
    for (const r of S.rooms.values()) { r.presence = null; r.typing.clear(); }
    readQueue.clear();
    renderInfo();
  }
  function onMessage(m) {
    const r = typeof m.room === "string" ? S.rooms.get(m.room) : undefined;
    if (!r) return;
    switch (m.type) {
      case "presence":
        if (Array.isArray(m.users)) r.presence = new Set(m.users.map(String));
        else if (r.presence === null) r.presence = new Set();
        r.presenceCount = typeof m.count === "number" ? m.count : r.presence.size;
        break;
      case "online":
      case "offline": {
        if (r.presence === null) return;   // the `presence` answer brings the full list
        const had = r.presence.has(m.user);
        if (m.type === "online" && !had) { r.presence.add(String(m.user)); r.presenceCount += 1; }
        if (m.type === "offline" && had) { r.presence.delete(m.user); r.presenceCount -= 1; }
        if (m.type === "offline") r.typing.delete(m.user);
        break;
      }
      case "typing":
        if (typeof m.from !== "string" || m.from === S.user) return;
        r.typing.set(m.from, Date.now() + TYPING_SHOW_MS);
        break;
      case "read":
        // The server's answer to our own `read`, or another tab or device of the user read.
        if (typeof m.seq === "number" && !(r.serverRead >= m.seq)) r.serverRead = m.seq;
        raiseTop(r, m.seq);
        if (setRead(r, m.seq)) core.renderRooms();
        return;
      default:
        return;
    }
    renderInfo();
  }

  // ---- presence and typing display -----------------------------------------------------------
  function renderInfo() {
    const r = S.current !== null ? S.rooms.get(S.current) : null;
    const list = $("presence");
    const users = r && r.presence ? Array.from(r.presence).sort() : [];
    list.replaceChildren();
    for (const u of users) {
      const li = document.createElement("li");
      li.dataset.user = u;
      li.textContent = u === S.user ? u + " (you)" : u;
      list.append(li);
    }
    const count = r && r.presence ? r.presenceCount : 0;
    list.dataset.count = String(count);
    list.dataset.room = r ? r.name : "";
    $("presence-count").textContent = r && r.presence ? String(count) : "";
    renderTyping();
  }
  function renderTyping() {
    clearTimeout(typingTimer);
    typingTimer = null;
    const r = S.current !== null ? S.rooms.get(S.current) : null;
    const now = Date.now();
    const who = [];
    let next = Infinity;
    if (r) {
      for (const [u, until] of r.typing) {
        if (until <= now) { r.typing.delete(u); continue; }
        who.push(u);
        next = Math.min(next, until);
      }
    }
    who.sort();
    const el = $("typing");
    el.dataset.users = who.join(" ");
    if (who.length === 0) el.textContent = "";
    else if (who.length === 1) el.textContent = who[0] + " is typing\u2026";
    else if (who.length === 2) el.textContent = who[0] + " and " + who[1] + " are typing\u2026";
    else el.textContent = "several people are typing\u2026";
    if (next !== Infinity) typingTimer = setTimeout(renderTyping, next - now + 20);
  }
  // Other rooms' typing entries expire too, even while nobody looks at them.
  setInterval(() => {
    const now = Date.now();
    for (const r of S.rooms.values()) {
      for (const [u, until] of r.typing) if (until <= now) r.typing.delete(u);
    }
  }, 5000);

  // Tells the room the user is typing, at most once a second.
  $("text").addEventListener("input", () => {
    const room = S.current;
    if (room === null || S.conn !== "connected" || !$("text").value.trim()) return;
    const r = S.rooms.get(room);
    if (!r || (!r.dm && !r.joined)) return;
    const now = Date.now();
    if (now - (lastTypingSent.get(room) || 0) < TYPING_SEND_MS) return;
    lastTypingSent.set(room, now);
    send({ type: "typing", room });
  });

  // ---- debugging -----------------------------------------------------------------------------
  function exposeDebug() {
    window.chatState = {
      get connection() { return S.conn; },
      get user() { return S.user; },
      get current() { return S.current; },
      get rooms() {
        const out = {};
        for (const r of S.rooms.values()) {
          out[r.name] = { dm: r.dm, joined: r.joined, lastSeq: r.lastSeq, oldest: r.oldest,
                          count: r.msgs.size, unread: unreadOf(r), hidden: r.hidden,
                          read: r.read, serverRead: r.serverRead, top: r.top,
                          presence: r.presence ? Array.from(r.presence).sort() : null,
                          typing: Array.from(r.typing.keys()).sort() };
        }
        return out;
      },
      get lastSeqs() {
        const out = {};
        for (const r of S.rooms.values()) out[r.name] = r.lastSeq;
        return out;
      },
      get pending() { return Array.from(S.pending.values()).map((p) => ({ ...p })); },
    };
    // Lets tests (and curious humans) cut the connection: drop() closes it and stays offline
    // until reconnect() is called, which then resumes every conversation.
    window.chatDebug = {
      drop() {
        S.holdReconnect = true;
        clearTimeout(S.reconnectTimer);
        if (S.ws) S.ws.close(4000, "debug drop");
        else core.setConn("disconnected", "disconnected (held)");
      },
      reconnect() { S.holdReconnect = false; S.attempt = 0; core.connect(); },
    };
  }

  return { unreadOf, seen, joined, viewed, disconnected, onMessage, renderInfo, exposeDebug };
};
