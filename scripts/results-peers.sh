#!/usr/bin/env bash
# Ours next to the systems users run today (peers/README.md): `scripts/results.sh peers` runs
# this. Output: results/peers/ (README.md table, result files, SVG charts).
#
# For every system (ours on 2 nodes and standalone, then each peer of peers/peer.sh, 2 nodes on
# the same Redis), in interleaved rounds (A B C D ..., A B C D ..., each system started fresh
# for its turn):
#   * fixed rates (400 and 4,000 msg/s offered; 1,000 connections, 100 rooms of 10, one sender
#     per room, 100 B bodies): latency from the intended send time, every delivery verified,
#     server CPU (every process of the system, from /proc) and Redis CPU over the load run,
#     each divided by the deliveries;
#   * once per system: a sweep to the highest rate with delivery p99 <= 10 ms and zero loss;
#   * once per system: RSS (all its processes) per idle connection with 10,000 idle WebSockets.
#
# With Kafka and PostgreSQL in the path (PEERS_SYSTEMS="ours ours-kafka nodews nodews-kafka",
# say): ours-kafka (chat-server --kafka + chat-persister) and nodews-kafka (Node ws + ioredis +
# node-rdkafka + a Node persister on `pg`) start their own broker and database (peers/peer.sh);
# their server CPU covers both nodes and the persister, and each run also records the broker's
# and the PostgreSQL backends' CPU (service-cpu.json beside result.json; read from /proc around
# the whole loadgen run, connection setup included) and, after a turn's rates, the rows the
# persister wrote next to the messages acked (rows-round-N.json).
#
# Environment: PEERS_SYSTEMS (default: ours ours-single socketio sockudo nodews naive; also
# ours-kafka nodews-kafka),
# PEERS_ROUNDS (3), PEERS_RATES ("400 4000"), PEERS_WARMUP (2), PEERS_DURATION (10),
# PEERS_SWEEP_RATES (400,1000,2000,3000,4000,6000,8000,10000; empty: no sweep), PEERS_SWEEP_DURATION
# (5), PEERS_IDLE (10000; 0: skip), RESULTS_OUT (results) -> OUT/peers/, PEERS_OUT (the output
# directory itself, instead of OUT/peers/: a partial run kept apart from the full one),
# PEERS_LOADGEN (a prebuilt loadgen: skips the build), PEERS_LOADGEN_ARGS (more `loadgen run`
# flags for the fixed-rate runs: `--floor` measures the kernel floor after each run, so that
# result.json holds `floor` and `server_cpu_vs_floor` beside the server's CPU).
# Installs what is missing (peers/peer.sh install: Sockudo compiles for 8-15 minutes once).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
systems=${PEERS_SYSTEMS:-ours ours-single socketio sockudo nodews naive}
rounds=${PEERS_ROUNDS:-3}
rates=${PEERS_RATES:-400 4000}
warmup=${PEERS_WARMUP:-2}
duration=${PEERS_DURATION:-10}
sweep_rates=${PEERS_SWEEP_RATES-400,1000,2000,3000,4000,6000,8000,10000}
sweep_duration=${PEERS_SWEEP_DURATION:-5}
idle_n=${PEERS_IDLE:-10000}
out=${PEERS_OUT:-${RESULTS_OUT:-results}/peers}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$root/$target_dir ;; esac
lg=${PEERS_LOADGEN:-$target_dir/release/loadgen}
logs=.run/results-logs/peers
redis_host=127.0.0.1 redis_port=6379

say() { echo "results-peers: $*" >&2; }
die() { echo "results-peers: error: $*" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$out" "$logs"

if [ -z "${PEERS_LOADGEN:-}" ]; then
  say "cargo build --release -p chat-server -p chat-persister -p loadgen"
  cargo build --release -p chat-server -p chat-persister -p loadgen || die "build failed"
fi
for s in $systems; do
  t0=$SECONDS
  peers/peer.sh install "$s" || die "installing $s failed"
  echo "{\"system\": \"$s\", \"install_seconds_this_run\": $((SECONDS - t0))}" >"$logs/install-$s.json"
done

redis_pid=$(redis-cli -h $redis_host -p $redis_port info server 2>/dev/null | sed -n 's/^process_id:\([0-9]*\).*/\1/p')
[ -n "$redis_pid" ] || die "no Redis on $redis_host:$redis_port (scripts/services.sh starts one)"

rss_kb() {
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

current=""
cleanup() { [ -z "$current" ] || peers/peer.sh stop "$current" || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
start() { current=$1; peers/peer.sh start "$1" >/dev/null; sleep 1; }
stop() { peers/peer.sh stop "$1"; current=""; }

# The running system's processes, comma-separated (loadgen --server-pids: CPU from /proc,
# read by the load generator right after its connections are set up and after the drain).
pid_list() { peers/peer.sh pids "$1" | tr ' ' ','; }

# Clock ticks of user + system CPU of the given processes (comma-separated), from /proc.
ticks() {
  local pid total=0
  for pid in ${1//,/ }; do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

# One loadgen run against the running system $1 at rate $2 into $3/.
measure() {
  local s=$1 rate=$2 dir=$3 svc="" broker="" pg="" b0=0 p0=0
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  case "$s" in
    *-kafka)
      svc=$(peers/peer.sh service-pids "$s")
      broker=$(echo "$svc" | sed -n 's/.*broker=\([0-9]*\).*/\1/p')
      pg=$(echo "$svc" | sed -n 's/.*pg=\([0-9,]*\).*/\1/p')
      b0=$(ticks "$broker") p0=$(ticks "$pg")
      ;;
  esac
  "$lg" run --url "$(peers/peer.sh urls "$s")" --protocol "$(peers/peer.sh protocol "$s")" \
    --server-pids "$(pid_list "$s")" --redis-pid "$redis_pid" \
    --connections 1000 --rooms 100 --members 10 --senders 100 --body 100 --rate "$rate" \
    --warmup "$warmup" --duration "$duration" --results-dir "$(dirname "$dir")" \
    --name "$(basename "$dir")" --no-plots --no-progress ${PEERS_LOADGEN_ARGS:-} \
    >"$logs/last-run.out" 2>&1 || true
  if [ -n "$svc" ] && [ -d "$dir" ]; then
    # PostgreSQL backends that connected during the run count from 0 (their whole life).
    local pg1 new="" pid
    pg1=$(peers/peer.sh service-pids "$s" | sed -n 's/.*pg=\([0-9,]*\).*/\1/p')
    for pid in ${pg1//,/ }; do case ",$pg," in *",$pid,"*) ;; *) new="$new${new:+,}$pid" ;; esac; done
    cat >"$dir/service-cpu.json" <<EOF
{"broker_pid": ${broker:-0}, "broker_cpu_seconds": $(awk "BEGIN {print ($(ticks "$broker") - $b0) / $hz}"),
 "pg_pids": "$pg${pg:+${new:+,}}$new", "pg_cpu_seconds": $(awk "BEGIN {print ($(ticks "$pg") - $p0 + $(ticks "$new")) / $hz}")}
EOF
  fi
  say "$s @ $rate msg/s: $(sed -n 4p "$logs/last-run.out") | $(grep '^server CPU' "$logs/last-run.out")"
}

# After a -kafka system's turn: wait until its persister stops adding rows (30 s at most), then
# record the rows next to the messages acked in the turn's runs.
check_rows() { # SYSTEM ROUND
  local s=$1 round=$2 rows=-1 last=-2 n acked=0 rate f
  for n in $(seq 30); do
    rows=$(peers/peer.sh rows "$s" 2>/dev/null || echo -1)
    [ "$rows" = "$last" ] && break
    last=$rows
    sleep 1
  done
  for rate in $rates; do
    f=$out/$s/rate-$rate/round-$round/result.json
    [ -f "$f" ] && acked=$((acked + $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['counters']['acked'])" "$f")))
  done
  echo "{\"system\": \"$s\", \"round\": $round, \"rows\": $rows, \"acked\": $acked}" >"$out/$s/rows-round-$round.json"
  say "$s round $round: $rows rows in PostgreSQL, $acked messages acked"
}

for round in $(seq "$rounds"); do
  for s in $systems; do
    say "round $round/$rounds: $s"
    start "$s"
    for rate in $rates; do measure "$s" "$rate" "$out/$s/rate-$rate/round-$round"; done
    case "$s" in *-kafka) check_rows "$s" "$round" ;; esac
    stop "$s"
  done
done

if [ -n "$sweep_rates" ]; then
  for s in $systems; do
    say "sweep: $s ($sweep_rates msg/s, ${sweep_duration} s steps, p99 <= 10 ms)"
    start "$s"
    rm -rf "$out/$s/sweep"
    "$lg" sweep --url "$(peers/peer.sh urls "$s")" --protocol "$(peers/peer.sh protocol "$s")" \
      --server-pids "$(pid_list "$s")" --redis-pid "$redis_pid" --connections 1000 --rooms 100 --members 10 --senders 100 --body 100 \
      --rates "$sweep_rates" --p99-ms 10 --retries 1 --warmup 1 --duration "$sweep_duration" \
      --results-dir "$out/$s" --name sweep --no-progress >"$logs/sweep-$s.out" 2>&1 || true
    stop "$s"
  done
fi

if [ "$idle_n" -gt 0 ]; then
  for s in $systems; do
    say "idle: $s with $idle_n idle connections"
    start "$s"
    read -ra pids <<<"$(peers/peer.sh pids "$s")"
    rss0=$(rss_kb "${pids[@]}")
    rm -rf "$out/$s/idle"
    mkdir -p "$out/$s/idle"
    # 2 active members (1 room, 1 sender, 10 msg/s); every other connection only connected.
    "$lg" run --url "$(peers/peer.sh urls "$s")" --protocol "$(peers/peer.sh protocol "$s")" \
      --connections "$idle_n" --rooms 1 --members 2 --senders 1 --rate 10 --connect-rate 2000 \
      --read-buffer 4096 --write-buffer 4096 --warmup 1 --duration $((idle_n / 2000 + 12)) \
      --results-dir "$out/$s/idle" --name loadgen-run --no-plots --no-progress \
      >"$logs/idle-$s.out" 2>&1 &
    lg_pid=$!
    ports=$(peers/peer.sh urls "$s" | tr ',' '\n' | sed 's/.*://' | sed 's/^/sport = :/' | paste -sd'|' | sed 's/|/ or /g')
    conns=0
    for i in $(seq 120); do
      conns=$(ss -Htn state established "( $ports )" | wc -l)
      [ "$conns" -ge "$idle_n" ] && break
      sleep 0.5
    done
    sleep 3
    rss1=$(rss_kb "${pids[@]}")
    wait "$lg_pid" || true
    cat >"$out/$s/idle/idle.json" <<EOF
{"system": "$s", "target": $idle_n, "connections": $conns, "rss_kb_before": $rss0,
 "rss_kb_open": $rss1, "bytes_per_connection": $(( (rss1 - rss0) * 1024 / (conns > 0 ? conns : 1) ))}
EOF
    say "idle: $s: $conns connections, $(( (rss1 - rss0) * 1024 / (conns > 0 ? conns : 1) )) bytes each"
    stop "$s"
  done
fi

cp "$logs"/install-*.json "$out/" 2>/dev/null || true
python3 scripts/peers-summary.py "$out"
say "done: $out/README.md"
