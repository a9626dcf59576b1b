#!/usr/bin/env bash
# The v1.1 figures (presence, typing, read pointers) on the local cluster of scripts/cluster.sh
# (two nodes on one Redis, Kafka, PostgreSQL, the persister), written to results/presence/
# (RESULTS_OUT): each run's loadgen result directory, the raw figures in figures.jsonl and a
# README table (scripts/results-presence.py).
#
#   scripts/results-presence.sh          (about 6 minutes; scripts/results.sh presence runs it)
#
#   mix      400 msg/s (100 rooms x 10 members, 100 senders, 100 B) with the v1.1 mix beside
#            it: 200 churning users (4 s period: 50 joins/s and 50 leaves/s), 100 typing/s,
#            200 reads/s; everything verified; presence event latency, device on the churner's
#            node and on the other node
#   churn    Redis commands and CPU per connect/disconnect: ROUNDS pairs of runs at 1 msg/s,
#            one with 1,000 churning users (2 s period: 500 joins/s, 500 leaves/s), one without;
#            INFO commandstats and Redis's CPU, differenced between the two
#   present  accepted msg/s (loadgen flood, closed loop) with and without 5,000 present users
#            (held by a loadgen run beside it), ROUNDS interleaved pairs
#   list     loadgen presence-list: time to list a 10,000-member room (members on both nodes)
#
# Environment: RESULTS_OUT (results/presence), RESULTS_ROUNDS (3), CLUSTER_* as for
# scripts/cluster.sh. The cluster is brought up if it is not running, and left running.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${RESULTS_OUT:-results/presence}
rounds=${RESULTS_ROUNDS:-3}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
bin=$target_dir/release
redis_port=${CLUSTER_REDIS_PORT:-6379}
urls=ws://127.0.0.1:8081,ws://127.0.0.1:8082
say() { echo "presence: $*" >&2; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
say "cargo build --release -p chat-server -p chat-persister -p loadgen"
cargo build --release -p chat-server -p chat-persister -p loadgen
scripts/cluster.sh up >&2
redis_pid=$(redis-cli -p "$redis_port" info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p')
mkdir -p "$out"
rm -rf "${out:?}"/mix "${out:?}"/churn-* "${out:?}"/figures.json
figures=$out/figures.jsonl
: >"$figures"

# Total Redis command calls so far (INFO commandstats), and the calls of each command as JSON.
redis_calls() {
  redis-cli -p "$redis_port" info commandstats | tr -d '\r' |
    python3 -c 'import sys, json
d = {}
for l in sys.stdin:
    if l.startswith("cmdstat_"):
        name, rest = l[8:].split(":", 1)
        d[name] = int(rest.split(",")[0].split("=")[1])
print(json.dumps(d))'
}

run() { # NAME ARGS... : a loadgen run into $out/NAME
  local name=$1
  shift
  "$bin/loadgen" run --url "$urls" --results-dir "$out" --name "$name" --no-plots \
    --redis-pid "$redis_pid" "$@" >&2
}

say "mix: 400 msg/s with churn, typing and reads"
run mix --rooms 100 --members 10 --senders 100 --rate 400 --warmup 2 --duration 20 \
  --churn 200 --churn-period 4 --typing-rate 100 --read-rate 200
echo "{\"part\":\"mix\",\"dir\":\"mix\"}" >>"$figures"

for r in $(seq 1 "$rounds"); do
  for churn in 1000 0; do
    name=churn-$churn-round-$r
    say "$name"
    before=$(redis_calls)
    run "$name" --rooms 100 --members 1 --senders 1 --rate 1 --warmup 1 --duration 10 \
      --churn "$churn" --churn-period 2
    after=$(redis_calls)
    echo "{\"part\":\"churn\",\"dir\":\"$name\",\"churn\":$churn,\"round\":$r,\"before\":$before,\"after\":$after}" >>"$figures"
  done
done

for r in $(seq 1 "$rounds"); do
  for present in 0 5000; do
    say "present $present, round $r"
    holder=""
    if [ "$present" -gt 0 ]; then
      "$bin/loadgen" run --url "$urls" --results-dir "$out/.holders" --name "present-$r" \
        --no-plots --rooms 1 --members 1 --senders 1 --rate 1 --warmup 0 --duration 25 \
        --present "$present" --connect-rate 5000 >"$out/.holder.log" 2>&1 &
      holder=$!
      # The holder's users are in once both nodes count them (its setup joins them all first).
      for _ in $(seq 1 120); do
        conns=0
        for port in 8081 8082; do
          n=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^chat_connections[{ ]/ {s += $NF} END {print s + 0}')
          conns=$((conns + n))
        done
        [ "$conns" -ge "$present" ] && break
        sleep 0.5
      done
      sleep 2
    fi
    line=$("$bin/loadgen" flood --url "$urls" --conns 20 --rooms 10 --window 64 --duration 10)
    echo "$line" >&2
    rate=$(echo "$line" | sed -n 's/.*: \([0-9]*\) acked msgs\/s.*/\1/p')
    echo "{\"part\":\"present\",\"present\":$present,\"round\":$r,\"acked_per_s\":$rate}" >>"$figures"
    if [ -n "$holder" ]; then wait "$holder" || { cat "$out/.holder.log" >&2; exit 1; }; fi
  done
done
rm -rf "$out/.holders" "$out/.holder.log"

say "list: a 10,000-member room"
"$bin/loadgen" presence-list --url "$urls" --members 10000 --repeat 50 >"$out/presence-list.json"
echo "{\"part\":\"list\",\"file\":\"presence-list.json\"}" >>"$figures"

python3 scripts/results-presence.py "$out"
say "wrote $out/README.md"
