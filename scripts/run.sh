#!/usr/bin/env bash
# The main job: install what is missing, build, start a local cluster (Redis, PostgreSQL, the
# tansu broker, two chat-server nodes, the persister) and run a short load test against it
# that prints a latency report. The cluster keeps running afterwards.
#
#   scripts/run.sh               cluster + 20 s load run (loadgen/scenarios/cluster.toml)
#   scripts/run.sh standalone    one standalone server on 127.0.0.1:8080 (no Redis/Kafka/PG)
#   scripts/run.sh stop          stop the cluster and the standalone server
#
# Load-run results land in .run/results/<name>/ (result.json, report.md, SVG plots); the
# published runs live in results/ (see results/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
state=.run
pidfile=$state/chat-server.pid
listen=${CHAT_LISTEN:-127.0.0.1:8080}

standalone_running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
standalone_stop() {
  if standalone_running; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 100); do standalone_running || break; sleep 0.05; done
  fi
  rm -f "$pidfile"
}

# Where cargo puts the release binaries (CARGO_TARGET_DIR is honoured, as cluster.sh does).
bin=${CARGO_TARGET_DIR:-target}/release

standalone() {
  scripts/setup.sh
  cargo build --release -p chat-server
  mkdir -p "$state"
  standalone_stop
  CHAT_LISTEN=$listen nohup "$bin/chat-server" > "$state/chat-server.out" 2> "$state/chat-server.log" &
  echo $! > "$pidfile"
  for _ in $(seq 100); do
    grep -q "listening on" "$state/chat-server.out" 2>/dev/null && break
    standalone_running || { cat "$state/chat-server.log" >&2; echo "chat-server failed to start" >&2; exit 1; }
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
}

cluster_and_load() {
  scripts/setup.sh --broker
  scripts/services.sh
  cargo build --release -p chat-server -p chat-persister -p loadgen
  scripts/cluster.sh up
  name="main-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$state/results"
  status=0
  "$bin/loadgen" run --scenario loadgen/scenarios/cluster.toml \
    --duration "${RUN_SECONDS:-20}" --name "$name" --results-dir "$state/results" || status=$?
  echo
  cat "$state/results/$name/report.md" 2>/dev/null || true
  echo
  echo "results:   $state/results/$name/ (result.json, report.md, plots)"
  echo "chat page: http://127.0.0.1:8081/  (second node: 8082)"
  echo "the cluster keeps running; stop it with: scripts/run.sh stop"
  return $status
}

case "${1:-cluster}" in
  cluster) cluster_and_load ;;
  standalone) standalone ;;
  stop) standalone_stop; scripts/cluster.sh down; echo "stopped" ;;
  *) echo "usage: $0 [cluster|standalone|stop]" >&2; exit 2 ;;
esac
