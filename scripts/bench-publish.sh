#!/usr/bin/env bash
# Side by side on this machine: accepted messages/s of one chat-server node in cluster mode
# (loadgen flood against it, Redis on 127.0.0.1:6379) and the Redis ceiling for the same Lua
# publish step (redis-benchmark, EVALSHA pipelined). Prints both and their ratio, plus the
# messages per Redis round trip the node achieved.
#
#   scripts/bench-publish.sh [threads] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-1}
seconds=${2:-10}
port=9191
redis="redis://127.0.0.1:6379"
cargo build --release -q -p chat-server -p loadgen

# The publish script exactly as the server loads it.
lua=$(python3 -c 'import re;print(re.search(r"pub const PUBLISH_LUA: &str = r#\"(.*?)\"#;",open("server/src/bus/redis.rs").read(),re.S).group(1))')
sha=$(redis-cli SCRIPT LOAD "$lua")

RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/release/chat-server" --listen 127.0.0.1:$port --threads "$threads" --redis "$redis" --rate-limit 0 >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 1
node=$("${CARGO_TARGET_DIR:-target}/release/loadgen" flood --url ws://127.0.0.1:$port --conns 20 --window 64 --rooms 10 --body 100 --duration "$seconds")
echo "$node"
metrics=$(curl -s 127.0.0.1:$port/metrics)
trips=$(echo "$metrics" | awk '/^chat_redis_round_trips_total/ {print $2}')
published=$(echo "$metrics" | awk '/^chat_redis_published_total/ {print $2}')
kill $server; trap - EXIT

body=$(printf 'x%.0s' $(seq 100))
head='{"type":"msg","room":"bench","seq":'
tail=',"id":"0123456789abcdef-1","from":"flood1","ts":1795717302963,"body":"'$body'","cid":"1"}'
redis-cli DEL 'chat:{bench-publish}:seq' 'chat:{bench-publish}:log' >/dev/null
ceiling=$(redis-benchmark -q -P 64 -n 300000 -r 1000000000 EVALSHA "$sha" 3 \
  'chat:{bench-publish}:seq' 'chat:{bench-publish}:log' 'chat:{bench-publish}:c:u:__rand_int__' \
  "$head" "$tail" 0 1000 300 p 'chat:{bench-publish}:ch' | tr '\r' '\n' | grep 'requests per second' | tail -1 \
  | sed 's/.*: \([0-9.]*\) requests per second.*/\1/')
redis-cli EVAL "for _,k in ipairs(redis.call('KEYS','chat:{bench-publish}*')) do redis.call('DEL',k) end return 1" 0 >/dev/null
accepted=$(echo "$node" | sed 's/.*: \([0-9]*\) acked msgs\/s.*/\1/')
echo "redis-benchmark EVALSHA (same script, pipelined 64): $ceiling/s"
awk -v a="$accepted" -v c="$ceiling" -v t="$trips" -v p="$published" 'BEGIN {
  printf "node/ceiling: %.2f   messages per Redis round trip: %.0f\n", a / c, p / t }'
