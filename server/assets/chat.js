"use strict";
(function () {
  const USER_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  const MAX_BODY_BYTES = 16 * 1024;
  const HISTORY_PAGE = 50;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const $ = (id) => document.getElementById(id);
  const enc = new TextEncoder();

  // ---- state ---------------------------------------------------------------------------------
  // rooms: name -> {
  //   name, dm: bool, joined: bool (server confirmed membership on this connection),
  //   lastSeq: highest seq such that every message up to it was delivered (null = unknown yet),
  //   msgs: Map seq -> {room, seq, id, from, ts, body, cid, provisional},
  //   oldest: lowest seq held, unread: count, historyQueue: ["latest"|"older"], noOlder: bool }
  const S = {
    user: null,
    ws: null,
    conn: "disconnected",       // disconnected | connecting | connected | reconnecting
    attempt: 0,
    reconnectTimer: null,
    holdReconnect: false,       // debug: chatDebug.drop() keeps the page offline
    rooms: new Map(),
    current: null,
    pending: new Map(),         // cid -> {cid, room, to, body, ts, state: "pending"|"failed"}
    acked: new Map(),           // cid -> seq for own messages acked before their msg arrived
    cidCounter: 0,
  };
  // v1.1 (presence, typing, read pointers) lives in chat-live.js.
  const ext = window.chatLive({ S, $, send, renderRooms, displayName, setConn, connect });

  // ---- small helpers -------------------------------------------------------------------------
  function roomValid(name) {
    const n = Array.from(name).length;
    return n >= 1 && n <= 128 && !/\s/.test(name);
  }
  function dmRoom(a, b) { return a < b ? "dm:" + a + ":" + b : "dm:" + b + ":" + a; }
  function dmPeer(room) {
    const parts = room.slice(3).split(":");
    if (parts.length !== 2) return room;
    return parts[0] === S.user ? parts[1] : parts[0];
  }
  function displayName(room) { return room.startsWith("dm:") ? "@" + dmPeer(room) : "#" + room; }
  function newCid() {
    const r = new Uint32Array(2);
    crypto.getRandomValues(r);
    S.cidCounter += 1;
    return "c" + Date.now().toString(36) + "-" + S.cidCounter.toString(36) + "-" +
      r[0].toString(36) + r[1].toString(36);
  }
  function fmtTime(ts) {
    const d = new Date(ts);
    const today = new Date();
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return d.toDateString() === today.toDateString() ? hm : d.toLocaleDateString() + " " + hm;
  }
  let errorTimer = null;
  function notice(text, kind) {
    const el = $("error");
    el.textContent = text;
    el.title = text;
    el.className = kind === "info" ? "info" : "";
    clearTimeout(errorTimer);
    if (text) errorTimer = setTimeout(() => { el.textContent = ""; el.title = ""; }, 15000);
  }
  function setConn(state, text) {
    S.conn = state;
    const el = $("status");
    el.className = state;
    el.textContent = text || state;
    updateControls();
  }
  function updateControls() {
    const haveRoom = S.current !== null;
    $("send").disabled = !haveRoom;
    $("text").disabled = !haveRoom;
    $("join").disabled = S.user === null;
    $("dm-open").disabled = S.user === null;
    const r = haveRoom ? S.rooms.get(S.current) : null;
    $("older").hidden = !r || r.noOlder || r.msgs.size === 0;
    $("empty").hidden = S.user !== null && (!!r && r.msgs.size + pendingIn(S.current) > 0);
    if (S.user !== null) {
      $("empty").textContent = r ? "No messages yet." : "Join a room or open a DM.";
    }
    ext.renderInfo();
  }
  function pendingIn(room) {
    let n = 0;
    for (const p of S.pending.values()) if (p.room === room && p.seq === undefined) n += 1;
    return n;
  }

  // ---- rooms ---------------------------------------------------------------------------------
  function ensureRoom(name) {
    let r = S.rooms.get(name);
    if (!r) {
      r = { name, dm: name.startsWith("dm:"), joined: false, lastSeq: null, msgs: new Map(),
            oldest: null, unread: 0, historyQueue: [], noOlder: false, hidden: false,
            read: null, serverRead: null, top: 0, presence: null, typing: new Map() };
      S.rooms.set(name, r);
      renderRooms();
    } else if (r.hidden) {
      r.hidden = false;
      renderRooms();
    }
    return r;
  }
  function renderRooms() {
    const ul = $("rooms");
    const names = Array.from(S.rooms.values()).filter((r) => !r.hidden).map((r) => r.name);
    names.sort((a, b) => (a.startsWith("dm:") - b.startsWith("dm:")) || (a < b ? -1 : a > b ? 1 : 0));
    ul.replaceChildren();
    for (const name of names) {
      const r = S.rooms.get(name);
      const li = document.createElement("li");
      li.dataset.room = name;
      if (name === S.current) li.className = "current";
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = displayName(name);
      label.title = name;
      const unread = document.createElement("span");
      unread.className = "unread";
      const n = ext.unreadOf(r);
      unread.textContent = n ? String(n) : "";
      li.dataset.unread = String(n);
      const close = document.createElement("button");
      close.className = "plain";
      close.type = "button";
      close.textContent = "\u00d7";
      close.title = r.dm ? "close conversation" : "leave room";
      close.addEventListener("click", (e) => { e.stopPropagation(); leaveRoom(name); });
      li.append(label, unread, close);
      li.addEventListener("click", () => selectRoom(name));
      ul.append(li);
    }
  }
  function selectRoom(name) {
    const r = S.rooms.get(name);
    if (!r) return;
    r.hidden = false;
    r.unread = 0;
    S.current = name;
    $("room-title").textContent = displayName(name);
    ext.viewed(r);
    renderRooms();
    renderMessages(true);
    $("text").focus();
  }
  function joinRoom(name) {
    if (!roomValid(name)) { notice("room names are 1-128 characters without spaces"); return; }
    if (name.startsWith("dm:")) { notice("dm: rooms are reserved; use the DM box"); return; }
    const r = ensureRoom(name);
    if (!r.joined && S.conn === "connected") {
      if (r.lastSeq === null) send({ type: "join", room: name });
      else send({ type: "resume", room: name, after: r.lastSeq });
    }
    selectRoom(name);
  }
  function openDm(peer) {
    if (!USER_RE.test(peer)) { notice("user names are 1-64 of A-Z a-z 0-9 _ . -"); return; }
    const name = dmRoom(S.user, peer);
    const r = ensureRoom(name);
    if (r.lastSeq === null && r.historyQueue.length === 0 && S.conn === "connected") {
      requestHistory(r, null);
    }
    selectRoom(name);
  }
  function leaveRoom(name) {
    const r = S.rooms.get(name);
    if (!r) return;
    if (r.dm) {
      r.hidden = true;   // membership of a DM is implicit; new messages bring it back
    } else {
      if (S.conn === "connected") send({ type: "leave", room: name });
      S.rooms.delete(name);
      for (const [cid, p] of S.pending) if (p.room === name) S.pending.delete(cid);
    }
    if (S.current === name) {
      S.current = null;
      $("room-title").textContent = "no room selected";
      const next = Array.from(S.rooms.values()).find((x) => !x.hidden);
      if (next) { selectRoom(next.name); return; }
      renderMessages(true);
    }
    renderRooms();
  }
  function requestHistory(r, before) {
    const req = { type: "history", room: r.name, limit: HISTORY_PAGE };
    if (before !== null) req.before = before;
    if (send(req)) r.historyQueue.push(before === null ? "latest" : "older");
  }

  // ---- messages ------------------------------------------------------------------------------
  function awaitingAck(m) {
    return m.from === S.user && typeof m.cid === "string" && S.pending.has(m.cid);
  }
  function msgElement(m) {
    const li = document.createElement("li");
    li.className = "msg" + (m.from === S.user ? " mine" : "") + (awaitingAck(m) ? " pending" : "");
    li.dataset.room = m.room;
    li.dataset.seq = String(m.seq);
    li.dataset.from = m.from;
    if (m.id) li.dataset.id = m.id;
    const meta = document.createElement("div");
    meta.className = "meta";
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = m.from;
    const time = document.createElement("time");
    time.className = "time";
    time.dateTime = new Date(m.ts).toISOString();
    time.title = new Date(m.ts).toLocaleString() + " \u00b7 #" + m.seq;
    time.textContent = fmtTime(m.ts);
    meta.append(from, time);
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = m.body;
    li.append(meta, body);
    return li;
  }
  function pendingElement(p) {
    const li = document.createElement("li");
    li.className = "msg mine " + p.state;
    li.dataset.room = p.room;
    li.dataset.from = S.user;
    li.dataset.cid = p.cid;
    const meta = document.createElement("div");
    meta.className = "meta";
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = S.user;
    const state = document.createElement("span");
    state.className = "state";
    state.addEventListener("click", () => retry(p.cid));
    meta.append(from, state);
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = p.body;
    li.append(meta, body);
    return li;
  }
  function nearBottom() {
    const s = $("scroller");
    return s.scrollHeight - s.scrollTop - s.clientHeight < 60;
  }
  function scrollToBottom() { const s = $("scroller"); s.scrollTop = s.scrollHeight; }

  // Full render of the current room: stored messages by seq, then own messages awaiting a seq.
  function renderMessages(toBottom) {
    const ul = $("messages");
    const stick = toBottom || nearBottom();
    ul.replaceChildren();
    const r = S.current !== null ? S.rooms.get(S.current) : null;
    if (r) {
      const seqs = Array.from(r.msgs.keys()).sort((a, b) => a - b);
      for (const seq of seqs) ul.append(msgElement(r.msgs.get(seq)));
      for (const p of S.pending.values()) {
        if (p.room === r.name && p.seq === undefined) ul.append(pendingElement(p));
      }
    }
    updateControls();
    if (stick) scrollToBottom();
  }
  // Inserts one stored message into the visible list at its seq position (or replaces it).
  function showMessage(m) {
    if (m.room !== S.current) return;
    const ul = $("messages");
    const stick = nearBottom();
    const el = msgElement(m);
    const old = ul.querySelector('.msg[data-seq="' + m.seq + '"]');
    if (old) { old.replaceWith(el); return; }
    let before = null;
    for (const child of ul.children) {
      if (!child.dataset.seq || Number(child.dataset.seq) > m.seq) { before = child; break; }
    }
    ul.insertBefore(el, before);
    updateControls();
    if (stick) scrollToBottom();
  }
  function removePendingElement(cid) {
    const el = $("messages").querySelector('.msg[data-cid="' + CSS.escape(cid) + '"]');
    if (el) el.remove();
  }

  // Stores a message from the server. `live`: it came as a `msg` frame (live or replayed by
  // resume), which the server delivers in seq order, so everything up to it has been seen.
  function storeMessage(m, live) {
    if (typeof m.room !== "string" || typeof m.seq !== "number") return false;
    const isNew = !S.rooms.has(m.room);
    if (isNew && !m.room.startsWith("dm:")) return false;   // a room we just left
    const r = ensureRoom(m.room);
    const existing = r.msgs.get(m.seq);
    if (existing && !existing.provisional) {
      if (live && (r.lastSeq === null || m.seq > r.lastSeq)) r.lastSeq = m.seq;
      return false;   // duplicate (room, seq)
    }
    const rec = { room: m.room, seq: m.seq, id: m.id, from: String(m.from),
                  ts: typeof m.ts === "number" ? m.ts : Date.now(), body: String(m.body),
                  cid: m.cid, provisional: false };
    r.msgs.set(m.seq, rec);
    if (r.oldest === null || m.seq < r.oldest) r.oldest = m.seq;
    if (m.seq === 1) r.noOlder = true;
    if (live && (r.lastSeq === null || m.seq > r.lastSeq)) r.lastSeq = m.seq;
    ext.seen(r, rec, live);
    // Our own message came back: it has its seq, and stays "pending" until its ack.
    if (awaitingAck(rec)) {
      S.pending.get(rec.cid).seq = rec.seq;
      removePendingElement(rec.cid);
    }
    if (!existing && live && m.room !== S.current && m.from !== S.user) {
      r.unread += 1;
      renderRooms();
    }
    if (isNew && r.dm && live) {
      // A conversation someone else started: show it, with what was said before.
      if (S.current === null) selectRoom(r.name);
      if (m.seq > 1) requestHistory(r, m.seq);
    }
    showMessage(rec);
    return true;
  }

  // ---- sending -------------------------------------------------------------------------------
  function send(obj) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
    S.ws.send(JSON.stringify(obj));
    return true;
  }
  function transmit(p) {
    if (p.to !== undefined) return send({ type: "dm", to: p.to, cid: p.cid, body: p.body });
    return send({ type: "send", room: p.room, cid: p.cid, body: p.body });
  }
  function sendText() {
    const text = $("text").value.replace(/\s+$/, "");
    if (!text.trim()) return;
    if (S.current === null) { notice("join a room first"); return; }
    if (enc.encode(text).length > MAX_BODY_BYTES) { notice("message is longer than 16 KiB"); return; }
    const p = { cid: newCid(), room: S.current, body: text, ts: Date.now(), state: "pending" };
    if (S.current.startsWith("dm:")) p.to = dmPeer(S.current);
    S.pending.set(p.cid, p);
    $("text").value = "";
    $("messages").append(pendingElement(p));
    updateControls();
    scrollToBottom();
    transmit(p);   // when offline it goes out after the reconnect (same cid: delivered once)
  }
  function retry(cid) {
    const p = S.pending.get(cid);
    if (!p || p.state !== "failed") return;
    p.state = "pending";
    const el = $("messages").querySelector('.msg[data-cid="' + CSS.escape(cid) + '"]');
    if (el) el.replaceWith(pendingElement(p));
    transmit(p);
  }

  // ---- server messages -----------------------------------------------------------------------
  function onServerMessage(m) {
    switch (m.type) {
      case "msg":
        storeMessage(m, true);
        break;
      case "ack": {
        const p = S.pending.get(m.cid);
        if (!p) break;
        S.pending.delete(m.cid);
        const r = S.rooms.get(m.room);
        if (!r) { removePendingElement(m.cid); break; }
        const have = r.msgs.get(m.seq);
        if (!have) {
          // The ack overtook our own msg: show it with its seq now; the msg completes it.
          // (lastSeq does not move: messages before it may still be on their way.)
          const rec = { room: m.room, seq: m.seq, id: m.id, from: S.user, ts: p.ts, body: p.body,
                        cid: m.cid, provisional: true };
          r.msgs.set(m.seq, rec);
          if (r.oldest === null || m.seq < r.oldest) r.oldest = m.seq;
          removePendingElement(m.cid);
          ext.seen(r, rec, false);
          showMessage(rec);
        } else {
          removePendingElement(m.cid);
          showMessage(have);   // drops its "pending" look
        }
        break;
      }
      case "joined": {
        const r = S.rooms.get(m.room);
        if (!r) break;   // left again before the reply
        r.joined = true;
        ext.joined(r, m);
        if (r.lastSeq === null) {
          r.lastSeq = m.seq;
          if (m.seq === 0) r.noOlder = true;
          else requestHistory(r, null);
        }
        updateControls();
        break;
      }
      case "left":
        break;
      case "history": {
        const r = S.rooms.get(m.room);
        if (!r) break;
        const kind = r.historyQueue.shift() || "latest";
        const msgs = Array.isArray(m.messages) ? m.messages : [];
        const s = $("scroller");
        const fromBottom = s.scrollHeight - s.scrollTop;
        for (const x of msgs) storeMessage(x, false);
        if (kind === "latest") {
          // A latest page is the baseline for a room we receive without having joined (DMs).
          if (r.lastSeq === null) {
            r.lastSeq = msgs.reduce((a, x) => Math.max(a, x.seq), 0);
          }
          if (msgs.length < HISTORY_PAGE) r.noOlder = true;
          if (m.room === S.current) scrollToBottom();
        } else {
          if (msgs.length === 0 || msgs.length < HISTORY_PAGE) r.noOlder = true;
          if (m.room === S.current) s.scrollTop = s.scrollHeight - fromBottom;
        }
        // Seqs are dense: a page that reaches lastSeq + 1 extends what we know we have seen.
        while (r.lastSeq !== null && r.msgs.has(r.lastSeq + 1) && !r.msgs.get(r.lastSeq + 1).provisional) {
          r.lastSeq += 1;
        }
        updateControls();
        break;
      }
      case "resumed": {
        const r = S.rooms.get(m.room);
        if (!r) break;
        if (!r.dm) r.joined = true;
        ext.joined(r, m);
        if (typeof m.seq === "number" && (r.lastSeq === null || m.seq > r.lastSeq)) r.lastSeq = m.seq;
        if (m.complete === false) {
          notice("some older messages in " + displayName(m.room) + " could not be recovered", "info");
        }
        break;
      }
      case "error": {
        const text = (m.code || "error") + ": " + (m.message || "");
        notice(text);
        if (m.cid && S.pending.has(m.cid)) {
          const p = S.pending.get(m.cid);
          p.state = "failed";
          const el = $("messages").querySelector('.msg[data-cid="' + CSS.escape(m.cid) + '"]');
          if (el) el.replaceWith(pendingElement(p));
        }
        break;
      }
      default:
        ext.onMessage(m);
        break;   // other unknown types are ignored (forward compatibility)
    }
  }

  // ---- connection ----------------------------------------------------------------------------
  function wsUrl(user) {
    const page = new URLSearchParams(location.search);
    let host = location.host;
    // Opened from a file (development): ?server=host:port says where the server is.
    if (!host) host = page.get("server") || "127.0.0.1:8080";
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let url = proto + "//" + host + "/ws?user=" + encodeURIComponent(user);
    const token = page.get("token");   // servers started with a JWT secret want ?token=
    if (token) url += "&token=" + encodeURIComponent(token);
    return url;
  }
  function connect() {
    clearTimeout(S.reconnectTimer);
    S.reconnectTimer = null;
    if (S.user === null || S.holdReconnect) return;
    setConn(S.attempt === 0 ? "connecting" : "reconnecting", S.attempt === 0 ? "connecting" : "reconnecting\u2026");
    const ws = new WebSocket(wsUrl(S.user));
    S.ws = ws;
    ws.onopen = () => {
      if (S.ws !== ws) return;
      S.attempt = 0;
      setConn("connected");
      onConnected();
    };
    ws.onmessage = (ev) => {
      if (S.ws !== ws || typeof ev.data !== "string") return;
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m && typeof m === "object") onServerMessage(m);
    };
    ws.onclose = (ev) => {
      if (S.ws !== ws) return;
      S.ws = null;
      for (const r of S.rooms.values()) { r.joined = false; r.historyQueue = []; }
      ext.disconnected();
      scheduleReconnect(ev.code);
    };
    ws.onerror = () => {};   // onclose follows
  }
  function scheduleReconnect(code) {
    if (S.user === null) { setConn("disconnected"); return; }
    if (S.holdReconnect) { setConn("disconnected", "disconnected (held)"); return; }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, S.attempt));
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    S.attempt += 1;
    setConn("reconnecting", "disconnected" + (code ? " (" + code + ")" : "") +
      ", retrying in " + Math.ceil(delay / 1000) + " s");
    S.reconnectTimer = setTimeout(connect, delay);
  }
  // (Re)establishes every conversation on a fresh connection, then re-sends what was not acked.
  function onConnected() {
    for (const r of S.rooms.values()) {
      if (r.lastSeq !== null) {
        send({ type: "resume", room: r.name, after: r.lastSeq });
      } else if (r.dm) {
        requestHistory(r, null);
      } else {
        send({ type: "join", room: r.name });
      }
    }
    // Same cid again: the server treats it as the same message (delivered once).
    for (const p of S.pending.values()) if (p.state === "pending") transmit(p);
  }
  function start(user) {
    if (!USER_RE.test(user)) {
      $("user").classList.add("invalid");
      notice("user names are 1-64 of A-Z a-z 0-9 _ . -");
      return;
    }
    $("user").classList.remove("invalid");
    if (user === S.user && S.ws) return;
    if (user !== S.user) {
      // Another identity: its conversations are not ours.
      S.rooms.clear();
      S.pending.clear();
      S.current = null;
      $("room-title").textContent = "no room selected";
      renderRooms();
      renderMessages(true);
    }
    if (S.ws) { const old = S.ws; S.ws = null; old.close(1000); }
    S.user = user;
    S.attempt = 0;
    S.holdReconnect = false;
    $("me").textContent = "signed in as " + user;
    $("connect").textContent = "Switch";
    notice("");
    connect();
  }

  // ---- UI wiring -----------------------------------------------------------------------------
  $("connect").addEventListener("click", () => start($("user").value.trim()));
  $("user").addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); start($("user").value.trim()); }
  });
  $("user").addEventListener("input", () => $("user").classList.remove("invalid"));
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("room").value.trim();
    if (!name) return;
    joinRoom(name);
    if (S.rooms.has(name)) $("room").value = "";
  });
  $("dm-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const peer = $("dm-user").value.trim();
    if (!peer) return;
    openDm(peer);
    if (USER_RE.test(peer)) $("dm-user").value = "";
  });
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); sendText(); });
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendText(); }
  });
  $("older").addEventListener("click", () => {
    const r = S.current !== null ? S.rooms.get(S.current) : null;
    if (!r || r.oldest === null || r.noOlder) return;
    if (!r.historyQueue.includes("older")) requestHistory(r, r.oldest);
  });
  $("scroller").addEventListener("scroll", () => {
    if ($("scroller").scrollTop === 0 && !$("older").hidden) $("older").click();
  });
  window.addEventListener("online", () => { if (!S.ws && S.user !== null) connect(); });

  const prefill = new URLSearchParams(location.search).get("user");
  if (prefill) $("user").value = prefill;
  updateControls();

  ext.exposeDebug();
})();
