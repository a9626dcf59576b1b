#!/usr/bin/env bash
# One server setting against CPU and latency (#14): for each value of a CHAT_* variable (a
# chat-server flag's environment form), the server is started afresh with it, rounds
# interleaved, one verified loadgen run per rate (100 rooms x 10 members, one sender per
# room, 100 B bodies, 2 + 10 s, --floor). Writes VALUE-RATE-round-N/ and README.md.
#
#   scripts/results-knob.sh CHAT_KAFKA_LINGER_MS "1 5 20"            the 2-node cluster
#   scripts/results-knob.sh CHAT_IO_DRIVER "auto epoll" standalone   one server, 2 threads
#
#   cluster      scripts/cluster.sh (two nodes on Redis, Kafka in the path, the persister),
#                brought down and up for every value
#   standalone   chat-server --threads 2 on 127.0.0.1:8097
#
# Environment: RESULTS_OUT (results/knobs/VAR-MODE, lower case), KNOB_RATES ("400 4000"),
# RESULTS_ROUNDS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
var=${1:?usage: $0 CHAT_VARIABLE \"VALUES\" [cluster|standalone]}
values=${2:?usage: $0 CHAT_VARIABLE \"VALUES\" [cluster|standalone]}
mode=${3:-cluster}
case "$var" in CHAT_*) ;; *) echo "knob: $var is not a CHAT_* variable" >&2; exit 2 ;; esac
case "$mode" in cluster | standalone) ;; *) echo "knob: mode is cluster or standalone" >&2; exit 2 ;; esac
out=${RESULTS_OUT:-results/knobs/$(echo "$var-$mode" | tr 'A-Z_' 'a-z-')}
rates=${KNOB_RATES:-400 4000}
rounds=${RESULTS_ROUNDS:-2}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
bin=$target_dir/release
say() { echo "knob: $*" >&2; }

cargo build --release -p chat-server -p chat-persister -p loadgen
mkdir -p "$out"
server=""
stop() {
  if [ "$mode" = cluster ]; then scripts/cluster.sh down >/dev/null 2>&1 || true; fi
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; fi
}
trap stop EXIT
urls=""
start() { # VALUE: the server(s) with VAR=VALUE; sets urls (not in a subshell: stop() needs $server)
  if [ "$mode" = cluster ]; then
    env "$var=$1" CHAT_RATE_LIMIT=0 scripts/cluster.sh up >/dev/null
    urls=ws://127.0.0.1:8081,ws://127.0.0.1:8082
  else
    # Nothing else may listen there: with SO_REUSEPORT a second server would share the port.
    if curl -fsS -m 1 http://127.0.0.1:8097/healthz >/dev/null 2>&1; then
      echo "knob: something already serves 127.0.0.1:8097" >&2
      exit 1
    fi
    env "$var=$1" "$bin/chat-server" --listen 127.0.0.1:8097 --threads 2 --rate-limit 0 \
      >"$out/.server.log" 2>&1 </dev/null &
    server=$!
    for _ in $(seq 100); do curl -fsS -m 1 http://127.0.0.1:8097/healthz >/dev/null 2>&1 && break; sleep 0.1; done
    urls=ws://127.0.0.1:8097
  fi
}
for r in $(seq 1 "$rounds"); do
  for value in $values; do
    stop
    start "$value"
    for rate in $rates; do
      name=$value-$rate-round-$r
      say "$var=$name"
      rm -rf "${out:?}/$name"
      "$bin/loadgen" run --url "$urls" --rooms 100 --members 10 --senders 100 --rate "$rate" \
        --warmup 2 --duration 10 --floor --no-plots --results-dir "$out" --name "$name" >&2
    done
  done
done
stop
rm -f "$out/.server.log"
python3 scripts/results-knob.py "$out" "$var" "$mode" "$rounds"
