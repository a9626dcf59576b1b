#!/usr/bin/env bash
# TLS and permessage-deflate side by side (#17): the server's CPU and the bytes on the wire per
# delivery for the four combinations (ws/wss x deflate off/on) and two chat-like bodies (100 B
# and 4 KiB of words), rounds interleaved (the combinations' order rotates each round), every
# run against a fresh `chat-server --threads 1` (wss: a self-signed RSA 2048 certificate made
# here with openssl): `loadgen transport`, 1,000 connections in rooms of 10, 400 msg/s, 2 + 10 s.
# Writes OUT/runs.jsonl (one result per line, with its round) and OUT/README.md
# (scripts/results-transport.py: medians over rounds, ratios to ws without deflate).
#
#   scripts/results-transport.sh
#
# Environment: RESULTS_OUT (results/transport), RESULTS_ROUNDS (2), TRANSPORT_BODIES
# ("100 4096"), TRANSPORT_RATE (400), TRANSPORT_DURATION (10), TRANSPORT_PORT (8098).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${RESULTS_OUT:-results/transport}
rounds=${RESULTS_ROUNDS:-2}
bodies=${TRANSPORT_BODIES:-100 4096}
rate=${TRANSPORT_RATE:-400}
duration=${TRANSPORT_DURATION:-10}
port=${TRANSPORT_PORT:-8098}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
say() { echo "transport: $*" >&2; }

cargo build --release -p chat-server -p loadgen
# Private copies: another checkout sharing the target directory may rebuild them mid-run.
work=$(mktemp -d)
cp "$target_dir/release/chat-server" "$target_dir/release/loadgen" "$work/"
# CA:FALSE: rustls (webpki) refuses a certificate marked as a CA as the server's own.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
mkdir -p "$out"
: >"$out/runs.jsonl"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
printf '{"date":"%s","commit":"%s","cpu":"%s","cores":%s,"loadavg":"%s"}\n' \
  "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(git describe --always --dirty)" "$cpu" "$(nproc)" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" >"$out/meta.json"
server=""
stop() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; fi
}
trap 'stop; rm -rf "$work"' EXIT
start() { # ws|wss: a fresh server (not in a subshell: stop() needs $server)
  # Nothing else may listen there: with SO_REUSEPORT a second server would share the port.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "transport: something already listens on 127.0.0.1:$port" >&2
    exit 1
  fi
  local tls=()
  if [ "$1" = wss ]; then tls=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem"); fi
  "$work/chat-server" --listen "127.0.0.1:$port" --threads 1 --rate-limit 0 "${tls[@]}" \
    >"$work/server.log" 2>&1 </dev/null &
  server=$!
  for _ in $(seq 100); do grep -q '^listening on' "$work/server.log" && return; sleep 0.1; done
  echo "transport: the server did not start" >&2
  cat "$work/server.log" >&2
  exit 1
}
combos=("ws off" "ws on" "wss off" "wss on")
for r in $(seq 1 "$rounds"); do
  for body in $bodies; do
    for i in 0 1 2 3; do
      read -r scheme deflate <<<"${combos[$(((i + r - 1) % 4))]}"
      say "round $r, $body B, $scheme, deflate $deflate"
      stop
      start "$scheme"
      flags=(--url "$scheme://localhost:$port" --body "$body" --rate "$rate" --warmup 2
        --duration "$duration" --server-pid "$server")
      if [ "$scheme" = wss ]; then flags+=(--ca "$work/cert.pem"); fi
      if [ "$deflate" = on ]; then flags+=(--deflate); fi
      # Exit 2 (something lost) still prints the result: it is recorded, and the README says so.
      line=$("$work/loadgen" transport "${flags[@]}") || [ $? -eq 2 ] || exit 1
      echo "{\"round\":$r,${line#\{}" >>"$out/runs.jsonl"
    done
  done
done
stop
python3 scripts/results-transport.py "$out" "$rounds"
