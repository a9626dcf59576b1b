#!/usr/bin/env bash
# What lossless failover costs on the hot path: accepted messages/s of one chat-server node in
# cluster mode against a private Redis master with one replica, with `--redis-replicas 0`
# (nothing waited for) and `--redis-replicas 1` (WAIT before anything is shown, see
# server/src/bus/replication.rs), interleaved round by round, beside the Redis ceiling of the
# same Lua publish step (redis-benchmark, EVALSHA pipelined 64, on the same master).
#
#   scripts/bench-replicas.sh [rounds] [seconds] [threads]
#
# Then the same two settings at an ordinary load (400 msg/s offered, 20 rooms of 10, verified
# by `loadgen run`), interleaved: ack p50/p99 and server CPU per delivery.
#
# Prints each run and the medians; the machine should be quiet (it is shared with the load).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
threads=${3:-2}
master=6391
replica=6392
port=9192
dir=$(mktemp -d)
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p chat-server -p loadgen

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for p in $master $replica; do
  mkdir -p "$dir/$p"
  redis-server --port "$p" --bind 127.0.0.1 --dir "$dir/$p" --save "" --appendonly no \
    --daemonize no >"$dir/$p.log" 2>&1 &
  pids+=($!)
done
for p in $master $replica; do
  until [ "$(redis-cli -p "$p" ping 2>/dev/null)" = PONG ]; do sleep 0.1; done
done
redis-cli -p $replica replicaof 127.0.0.1 $master >/dev/null
until redis-cli -p $replica info replication | grep -q 'master_link_status:up'; do sleep 0.1; done

start_server() { # replicas; sets $server
  redis-cli -p $master flushall >/dev/null
  RUST_LOG=warn "$target/release/chat-server" --listen 127.0.0.1:$port --threads "$threads" \
    --redis "redis://127.0.0.1:$master" --redis-replicas "$1" --rate-limit 0 >/dev/null 2>&1 &
  server=$!
  until curl -fs "127.0.0.1:$port/healthz" >/dev/null 2>&1; do sleep 0.1; done
}

run() { # replicas -> acked msgs/s
  start_server "$1"
  local out
  out=$("$target/release/loadgen" flood --url ws://127.0.0.1:$port --conns 20 --window 64 \
    --rooms 10 --body 100 --duration "$seconds")
  kill $server
  wait $server 2>/dev/null || true
  echo "$out" | sed 's/.*: \([0-9]*\) acked msgs\/s.*/\1/'
}

lua=$(python3 -c 'import re;print(re.search(r"pub const PUBLISH_LUA: &str = r#\"(.*?)\"#;",open("server/src/bus/redis.rs").read(),re.S).group(1))')
sha=$(redis-cli -p $master SCRIPT LOAD "$lua")
body=$(printf 'x%.0s' $(seq 100))
head='{"type":"msg","room":"bench","seq":'
tail=',"id":"0123456789abcdef-1","from":"flood1","ts":1795717302963,"body":"'$body'","cid":"1"}'
ceiling() {
  redis-benchmark -p $master -q -P 64 -n 300000 -r 1000000000 EVALSHA "$sha" 3 \
    'chat:{b}:seq' 'chat:{b}:log' 'chat:{b}:c:u:__rand_int__' \
    "$head" "$tail" 0 1000 300 p 'chat:{b}:ch' | tr '\r' '\n' | grep 'requests per second' |
    tail -1 | sed 's/.*: \([0-9.]*\) requests per second.*/\1/'
}

zero=() one=() ceil=()
for r in $(seq "$rounds"); do
  a=$(run 0); b=$(run 1); redis-cli -p $master flushall >/dev/null; c=$(ceiling)
  zero+=("$a"); one+=("$b"); ceil+=("$c")
  echo "round $r: --redis-replicas 0: $a acked msgs/s   --redis-replicas 1: $b acked msgs/s   Lua ceiling: $c/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
m0=$(median "${zero[@]}"); m1=$(median "${one[@]}"); mc=$(median "${ceil[@]}")
awk -v a="$m0" -v b="$m1" -v c="$mc" 'BEGIN {
  printf "medians: replicas 0 %d/s (%.2f of the ceiling), replicas 1 %d/s (%.2f of the ceiling), ceiling %d/s; replicas 1 / replicas 0 = %.2f\n",
    a, a / c, b, b / c, c, b / a }'

ordinary() { # replicas -> "ack_p50_ms ack_p99_ms cpu_us_per_delivery"
  start_server "$1"
  "$target/release/loadgen" run --name "r$1" --results-dir "$dir/results" \
    --url ws://127.0.0.1:$port --rooms 20 --members 10 --rate 400 --warmup 2 --duration 10 \
    --server-pids "$server" >/dev/null 2>&1
  kill $server
  wait $server 2>/dev/null || true
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); a=r["latency"]["ack"]
print(a["p50_ms"], a["p99_ms"], round(r["server_cpu_us_per_delivered"] or 0, 2), "ok" if r["verdict"]["ok"] else "NOT VERIFIED")' \
    "$dir/results/r$1/result.json"
}
p0=() p1=()
for r in $(seq "$rounds"); do
  a=$(ordinary 0); b=$(ordinary 1)
  p0+=("$a"); p1+=("$b")
  echo "400 msg/s round $r: --redis-replicas 0: ack p50/p99 ms, CPU us/delivery: $a   --redis-replicas 1: $b"
done
col() { local i=$1; shift; printf '%s\n' "$@" | awk -v i="$i" '{print $i}'; }
for n in 0 1; do
  if [ $n = 0 ]; then set -- "${p0[@]}"; else set -- "${p1[@]}"; fi
  echo "400 msg/s medians, --redis-replicas $n: ack p50 $(median $(col 1 "$@")) ms, p99 $(median $(col 2 "$@")) ms, server CPU $(median $(col 3 "$@")) us/delivery"
done
