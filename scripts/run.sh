#!/usr/bin/env bash
# The main job: install what is missing, build in release mode, start a standalone chat server
# in the background and print the URL of its chat page.
#
#   scripts/run.sh          start (or restart) and print the URLs
#   scripts/run.sh stop     stop it
#   scripts/run.sh status   is it running?
#
# Settings: CHAT_LISTEN (default 127.0.0.1:8080) and every other CHAT_* variable of
# `chat-server --help`. Logs go to .run/chat-server.log.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.run
pidfile=$state/chat-server.pid
listen=${CHAT_LISTEN:-127.0.0.1:8080}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
stop() {
  if running; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 100); do running || break; sleep 0.05; done
  fi
  rm -f "$pidfile"
}

case "${1:-start}" in
  stop) stop; echo "stopped"; exit 0 ;;
  status) if running; then echo "running (pid $(cat "$pidfile")) on http://$listen/"; else echo "not running"; exit 1; fi; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

scripts/setup.sh
cargo build --release -p chat-server
mkdir -p "$state"
stop
CHAT_LISTEN=$listen nohup target/release/chat-server > "$state/chat-server.out" 2> "$state/chat-server.log" &
echo $! > "$pidfile"
for _ in $(seq 100); do
  grep -q "listening on" "$state/chat-server.out" 2>/dev/null && break
  running || { cat "$state/chat-server.log" >&2; echo "chat-server failed to start" >&2; exit 1; }
  sleep 0.05
done
url=$(sed -n 's/^listening on //p' "$state/chat-server.out")
curl -fsS "$url/healthz" >/dev/null
echo
echo "chat-server is running (standalone, pid $(cat "$pidfile"), log $state/chat-server.log)"
echo "  chat page: $url/"
echo "  websocket: ${url/http/ws}/ws?user=<name>"
echo "  metrics:   $url/metrics"
echo "  stop with: scripts/run.sh stop"
