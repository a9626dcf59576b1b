#!/usr/bin/env bash
# The published run set (results/README.md), made by one command.
#
#   scripts/results.sh                  the full run set into results/ (about 20 minutes)
#   scripts/results.sh --quick          short durations into .run/results-quick/ (to try it out;
#                                       the figures are not worth publishing)
#   scripts/results.sh [--quick] PART...    only some parts, in this order:
#       standalone   chat-server on all cores (--rate-limit 0): a coarse sweep to find the region,
#                    then REPEATS fine sweeps (about 10 % apart) to the highest rate with delivery
#                    p99 <= 10 ms and zero loss (the headline is their median; a step that missed
#                    only the p99 is run once more before a sweep stops there, so one scheduling
#                    hiccup does not end it), then REPEATS fixed runs at half that rate
#       idle         memory per idle connection: a fresh server's RSS before and with N idle
#                    WebSockets open (100 000, or as many as the open-files limit allows)
#       cluster      scripts/cluster.sh up (Redis, PostgreSQL, tansu, two nodes, the persister):
#                    a fixed-rate run with persistence latency, then a sweep to p99 <= 10 ms
#       persister    persister/bench.sh (chat-persister next to raw \copy), REPEATS times
#       peers        ours next to Socket.IO, Sockudo, Node ws and a naive Rust server, each on
#                    2 nodes on one Redis (scripts/results-peers.sh; results/peers/README.md)
#       presence     the v1.1 figures on the local cluster: presence latency across nodes, Redis
#                    per connect/disconnect, throughput with 5,000 present users, a 10,000-member
#                    room's list (scripts/results-presence.sh; results/presence/README.md)
#       readme       the headline table and the list of runs, between the markers of
#                    OUT/README.md, and OUT/run-set.json (always last; needs no server)
#
# What runs where: everything on this machine, on loopback; the load generator shares the cores
# with the servers. Output: OUT/standalone-sweep/{coarse,run-N}/ (loadgen sweeps: sweep.json,
# sweep.md, rate-R/result.json...), OUT/standalone-half-rate/run-N/, OUT/idle-connections/
# (result.json, report.md, the loadgen run), OUT/cluster-2node-fixed/, OUT/cluster-2node-sweep/,
# OUT/persister/ (run-N.txt, result.json), OUT/run-set.json, OUT/README.md (the table); logs of
# this script's servers in .run/results-logs/. A part that runs again replaces its directories;
# the other parts' results stay. Nothing else in OUT is touched.
#
# Setup is idempotent, as in scripts/run.sh: scripts/setup.sh (with --broker when the cluster or
# the persister part runs: the first tansu install compiles it, ~20 min), scripts/services.sh,
# then one `cargo build --release` for every binary.
#
# Environment: RESULTS_OUT (output directory), RESULTS_REPEATS (3; --quick 1),
# RESULTS_SERVER_THREADS (standalone server threads, default all cores), RESULTS_LOADGEN_THREADS
# (1), RESULTS_IDLE_TARGET (100000; --quick 5000), RESULTS_CLUSTER_RATE (fixed cluster run,
# msg/s, 2000), RESULTS_PERSISTER_ROWS (1000000; --quick 100000), RESULTS_P99_MS (10).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# The peers comparison has its own script (its own rounds, systems and output directory).
if [ "${1:-}" = peers ]; then exec scripts/results-peers.sh; fi
if [ "${1:-}" = presence ]; then exec scripts/results-presence.sh; fi

quick=0
parts=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    standalone | idle | cluster | persister | readme) parts+=("$arg") ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--quick] [standalone|idle|cluster|persister|readme]..." >&2; exit 2 ;;
  esac
done
[ ${#parts[@]} -gt 0 ] || parts=(standalone idle cluster persister readme)
want() { local p; for p in "${parts[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
# `readme` always runs last, also when only other parts were named.
want readme || parts+=(readme)

if [ "$quick" = 1 ]; then
  out=${RESULTS_OUT:-.run/results-quick}
  repeats=${RESULTS_REPEATS:-1}
  coarse_warmup=1 coarse_duration=2
  fine_warmup=1 fine_duration=3
  half_warmup=1 half_duration=5
  idle_target=${RESULTS_IDLE_TARGET:-5000} idle_duration=8
  cluster_warmup=2 cluster_duration=8
  csweep_warmup=1 csweep_duration=3
  persister_rows=${RESULTS_PERSISTER_ROWS:-100000}
else
  out=${RESULTS_OUT:-results}
  repeats=${RESULTS_REPEATS:-3}
  coarse_warmup=1 coarse_duration=4
  fine_warmup=2 fine_duration=10
  half_warmup=2 half_duration=20
  idle_target=${RESULTS_IDLE_TARGET:-100000} idle_duration=20
  cluster_warmup=3 cluster_duration=60
  csweep_warmup=2 csweep_duration=10
  persister_rows=${RESULTS_PERSISTER_ROWS:-1000000}
fi
p99_ms=${RESULTS_P99_MS:-10}
lg_threads=${RESULTS_LOADGEN_THREADS:-1}
server_threads=${RESULTS_SERVER_THREADS:-$(nproc)}
cluster_rate=${RESULTS_CLUSTER_RATE:-2000}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$root/$target_dir ;; esac
bin=$target_dir/release
# Logs of this script's servers and load runs: next to, not in, the published directories.
logs=.run/results-logs/$(basename "$out")
# Room traffic of every standalone and cluster run: 100 rooms of 10 members, one sender per
# room, 100-byte bodies (as the earlier runs in results/).
rooms=100 members=10 senders=100

say() { echo "results: $*" >&2; }
die() { echo "results: error: $*" >&2; exit 1; }

mkdir -p "$out" "$logs"
exec 8>"$logs/.lock"
flock -n 8 || die "another scripts/results.sh writes $out"

# Every connection is a file descriptor: the soft limit up to the hard one (raising the hard
# limit needs CAP_SYS_RESOURCE; the idle part reports when it is the limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# What the run set is of: taken before anything is written.
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- . ":(exclude)$out" 2>/dev/null)" ]; then commit="$commit-dirty"; fi
pressure_before=$(sed -n 's/^some avg10=\([0-9.]*\) avg60=\([0-9.]*\).*/\2/p' /proc/pressure/cpu 2>/dev/null || true)
loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)
export RESULTS_STARTED=$started RESULTS_COMMIT=$commit

# ------------------------------------------------------------------------------------------
# Setup and build
need_broker=0
if want cluster || want persister; then need_broker=1; fi
if [ "${parts[*]}" = readme ]; then
  # Only the table: nothing to set up or build.
  python3 scripts/results-summary.py readme "$out"
  exit 0
fi
# 8>&-: no child may keep the lock after this script is gone.
if [ "$need_broker" = 1 ]; then scripts/setup.sh --broker 8>&-; else scripts/setup.sh 8>&-; fi
if want cluster || want persister; then scripts/services.sh 8>&-; fi
# One cargo invocation for every binary, the same as scripts/run.sh and scripts/cluster.sh
# (one at a time, or with examples and their dev-dependencies, would unify features
# differently: other binaries than the ones people run). persister/bench.sh builds its example.
say "cargo build --release -p chat-server -p chat-persister -p loadgen"
cargo build --release -p chat-server -p chat-persister -p loadgen 8>&- || die "build failed"

# ------------------------------------------------------------------------------------------
# A standalone server of our own on a free port.
server_pid=""
server_start() { # NAME
  local name=$1 o=$logs/$1.out
  "$bin/chat-server" --listen 127.0.0.1:0 --threads "$server_threads" --rate-limit 0 \
    >"$o" 2>"$logs/$name.log" </dev/null 8>&- &
  server_pid=$!
  local i
  for i in $(seq 200); do
    grep -q '^listening on ' "$o" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$logs/$name.log" >&2; die "chat-server exited"; }
    sleep 0.05
  done
  server_http=$(sed -n 's/^listening on //p' "$o" | head -1)
  [ -n "$server_http" ] || die "chat-server did not print its address"
  server_ws=ws://${server_http#http://}
}
server_stop() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  local i
  for i in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
loadgen_pid=""
cleanup() {
  if [ -n "$loadgen_pid" ]; then kill "$loadgen_pid" 2>/dev/null || true; fi
  server_stop
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
metric_sum() { # URL NAME: the sum of a metric over its label sets
  curl -fsS -m 5 "$1/metrics" 2>/dev/null | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $NF} END {print s + 0}'
}
json() { jq -r "$2" "$1" 2>/dev/null; }
lg() { # loadgen with its exit status in $lg_rc (2 = a verdict failure, which is a result too)
  lg_rc=0
  "$bin/loadgen" "$@" --no-progress 8>&- || lg_rc=$?
  [ "$lg_rc" -le 2 ] || say "loadgen exited with $lg_rc"
}

# ------------------------------------------------------------------------------------------
standalone() {
  local dir=$out/standalone-sweep half=$out/standalone-half-rate
  rm -rf "$dir" "$half"
  mkdir -p "$dir" "$half"
  local traffic=(--rooms "$rooms" --members "$members" --senders "$senders" --threads "$lg_threads"
    --p99-ms "$p99_ms")

  # 1. Coarse: x1.5 steps from 2000 msg/s, short steps, only to find the region.
  say "standalone: coarse sweep (${coarse_duration} s steps)"
  server_start standalone-coarse
  lg sweep --url "$server_ws" "${traffic[@]}" --start-rate 2000 --factor 1.5 --retries 0 \
    --warmup "$coarse_warmup" --duration "$coarse_duration" --results-dir "$dir" --name coarse
  server_stop
  local best fail
  best=$(json "$dir/coarse/sweep.json" '.best_rate // 0')
  fail=$(json "$dir/coarse/sweep.json" '[.steps[] | select(.pass | not) | .rate][0] // 0')
  # No passing step (or no sweep.json): start the fine sweeps low.
  [ "${best:-0}" != 0 ] || best=1500
  [ "${fail:-0}" != 0 ] || fail=$(awk -v b="$best" 'BEGIN {print b * 1.5}')
  # 2. Fine: x1.1 steps from 0.7x the coarse result (so a lucky coarse step does not start the
  # fine sweeps above the limit) up to 2x the coarse failure (an unlucky one does not cap
  # them); each sweep stops at its first failing step. A fresh server for each.
  local start max i
  start=$(awk -v b="$best" 'BEGIN {printf "%d", int(b * 0.7 / 100 + 0.5) * 100}')
  max=$(awk -v f="$fail" 'BEGIN {printf "%d", f * 2}')
  for i in $(seq "$repeats"); do
    say "standalone: sweep $i/$repeats from $start msg/s, x1.1 steps of ${fine_duration} s"
    server_start "standalone-sweep-$i"
    lg sweep --url "$server_ws" "${traffic[@]}" --start-rate "$start" --factor 1.1 --retries 1 \
      --max-rate "$max" --warmup "$fine_warmup" --duration "$fine_duration" \
      --results-dir "$dir" --name "run-$i"
    server_stop
  done
  # 3. Half the median highest rate, REPEATS fixed runs.
  local rates median
  rates=$(for i in $(seq "$repeats"); do json "$dir/run-$i/sweep.json" '.best_rate // 0'; done | sort -g)
  median=$(echo "$rates" | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
  [ "${median:-0}" != 0 ] || { say "standalone: no sweep passed a step; no half-rate run"; return 0; }
  local rate_half
  rate_half=$(awk -v m="$median" 'BEGIN {printf "%d", m / 2}')
  for i in $(seq "$repeats"); do
    say "standalone: half rate ($rate_half msg/s, median best $median) run $i/$repeats, ${half_duration} s"
    server_start "standalone-half-$i"
    lg run --url "$server_ws" --rooms "$rooms" --members "$members" --senders "$senders" \
      --threads "$lg_threads" --rate "$rate_half" --warmup "$half_warmup" \
      --duration "$half_duration" --results-dir "$half" --name "run-$i"
    server_stop
  done
}

# ------------------------------------------------------------------------------------------
idle() {
  local dir=$out/idle-connections
  rm -rf "$dir"
  mkdir -p "$dir"
  local fd_limit ports n source_ips limit_reason=""
  fd_limit=$(ulimit -n)
  read -r lo hi < /proc/sys/net/ipv4/ip_local_port_range
  ports=$((hi - lo + 1))
  # Both processes need a descriptor per connection plus their own (listeners, io_uring,
  # eventfds, the load generator's 64).
  n=$idle_target
  if [ $((n + 300)) -gt "$fd_limit" ]; then
    n=$((fd_limit - 300))
    limit_reason="open-files limit: ulimit -n is $fd_limit per process (hard limit $(ulimit -Hn); raising it needs CAP_SYS_RESOURCE), so one server process holds at most about $((fd_limit - 300)) connections"
  fi
  # ~28k ephemeral ports per source address towards one server address.
  source_ips=$(((n + ports * 9 / 10 - 1) / (ports * 9 / 10)))
  say "idle: $n connections (target $idle_target), $source_ips source address(es)${limit_reason:+; $limit_reason}"

  server_start idle
  sleep 1
  local rss0 conns0 sock0
  rss0=$(rss_kb "$server_pid")
  conns0=$(metric_sum "$server_http" chat_connections)
  sock0=$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
  # 2 active members (1 room, 1 sender, 10 msg/s), every other connection only connected.
  "$bin/loadgen" run --url "$server_ws" --connections "$n" --rooms 1 --members 2 --senders 1 \
    --rate 10 --connect-rate 5000 --source-ips "$source_ips" --threads 1 \
    --read-buffer 4096 --write-buffer 4096 --warmup 2 --duration "$idle_duration" \
    --results-dir "$dir" --name loadgen-run --no-plots --no-progress >"$logs/idle-loadgen.out" 2>&1 8>&- &
  loadgen_pid=$!
  local t0=$SECONDS conns=0 peak=0
  while kill -0 "$loadgen_pid" 2>/dev/null && [ $((SECONDS - t0)) -lt $((n / 1000 + 120)) ]; do
    conns=$(metric_sum "$server_http" chat_connections)
    [ "$conns" -gt "$peak" ] && peak=$conns
    [ "$conns" -ge $((conns0 + n)) ] && break
    sleep 0.5
  done
  local connect_s=$((SECONDS - t0))
  # Settle, then two samples 3 s apart (the second is the figure).
  sleep 3
  local rss1 rss2 conns1 sock1
  rss1=$(rss_kb "$server_pid")
  sleep 3
  rss2=$(rss_kb "$server_pid")
  conns1=$(metric_sum "$server_http" chat_connections)
  sock1=$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
  local lg_status=0
  wait "$loadgen_pid" || lg_status=$?
  loadgen_pid=""
  sleep 2
  local rss3 conns3
  rss3=$(rss_kb "$server_pid")
  conns3=$(metric_sum "$server_http" chat_connections)
  server_stop
  [ "$conns1" -gt "$peak" ] && peak=$conns1

  jq -n --argjson target "$idle_target" --argjson n "$n" --argjson fd_limit "$fd_limit" \
    --arg limit_reason "$limit_reason" --argjson source_ips "$source_ips" \
    --argjson ports "$ports" --argjson threads "$server_threads" \
    --argjson conns0 "$conns0" --argjson conns1 "$conns1" --argjson conns3 "$conns3" \
    --argjson peak "$peak" --argjson rss0 "$rss0" --argjson rss1 "$rss1" \
    --argjson rss2 "$rss2" --argjson rss3 "$rss3" --argjson sock0 "${sock0:-0}" \
    --argjson sock1 "${sock1:-0}" --argjson connect_s "$connect_s" \
    --argjson lg_status "$lg_status" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg commit "$commit" '
    ($conns1 - $conns0) as $open |
    {
      what: "chat-server RSS before and with idle WebSocket connections open (standalone, --threads \($threads))",
      date: $date,
      commit: $commit,
      target_connections: $target,
      attempted_connections: $n,
      limit: (if $limit_reason == "" then null else $limit_reason end),
      open_files_limit: $fd_limit,
      ephemeral_ports: $ports,
      source_ips: $source_ips,
      connections_before: $conns0,
      connections_open: $conns1,
      connections_peak: $peak,
      connections_after_close: $conns3,
      active_connections: 2,
      seconds_to_connect: $connect_s,
      rss_bytes_before: ($rss0 * 1024),
      rss_bytes_open_first_sample: ($rss1 * 1024),
      rss_bytes_open: ($rss2 * 1024),
      rss_bytes_after_close: ($rss3 * 1024),
      bytes_per_idle_connection: (if $open > 0 then (($rss2 - $rss0) * 1024 / $open | floor) else null end),
      kernel_tcp_pages_before: $sock0,
      kernel_tcp_pages_open: $sock1,
      kernel_tcp_bytes_per_connection_both_ends: (if $open > 0 then (($sock1 - $sock0) * 4096 / $open | floor) else null end),
      loadgen_exit_status: $lg_status
    }' >"$dir/result.json"
  cp "$logs/idle-loadgen.out" "$dir/loadgen.out"
  python3 scripts/results-summary.py idle-report "$dir"
  say "idle: $(jq -r '"\(.connections_open) open, \(.bytes_per_idle_connection) bytes RSS per idle connection"' "$dir/result.json")"
}

# ------------------------------------------------------------------------------------------
cluster() {
  local fixed=$out/cluster-2node-fixed sweep=$out/cluster-2node-sweep
  rm -rf "$fixed" "$sweep"
  mkdir -p "$out"
  local was_up=0
  if scripts/cluster.sh status >/dev/null 2>&1 8>&-; then
    was_up=1
    say "cluster: reusing the running cluster (its nodes keep the flags they were started with)"
    echo "reused a running cluster" >"$logs/cluster.reused"
  else
    rm -f "$logs/cluster.reused"
  fi
  # The nodes get no per-connection rate limit (CHAT_RATE_LIMIT reaches them).
  CHAT_RATE_LIMIT=0 CHAT_SERVER_BIN=$bin/chat-server scripts/cluster.sh up 8>&-
  say "cluster: fixed rate $cluster_rate msg/s, ${cluster_duration} s (loadgen/scenarios/cluster.toml)"
  lg run --scenario loadgen/scenarios/cluster.toml --rate "$cluster_rate" --threads "$lg_threads" \
    --warmup "$cluster_warmup" --duration "$cluster_duration" --results-dir "$out" \
    --name cluster-2node-fixed
  say "cluster: sweep from 500 msg/s, x1.25 steps of ${csweep_duration} s"
  lg sweep --url ws://127.0.0.1:8081,ws://127.0.0.1:8082 --rooms "$rooms" --members "$members" \
    --senders "$senders" --dm-share 0.1 --threads "$lg_threads" --p99-ms "$p99_ms" --retries 1 \
    --start-rate 500 --factor 1.25 --warmup "$csweep_warmup" --duration "$csweep_duration" \
    --results-dir "$out" --name cluster-2node-sweep
  if [ "$was_up" = 0 ]; then scripts/cluster.sh down 8>&-; fi
}

# ------------------------------------------------------------------------------------------
persister() {
  local dir=$out/persister i
  rm -rf "$dir"
  mkdir -p "$dir"
  for i in $(seq "$repeats"); do
    say "persister: persister/bench.sh $persister_rows ($i/$repeats)"
    persister/bench.sh "$persister_rows" 2>&1 8>&- | tee "$dir/run-$i.txt" ||
      say "persister: bench.sh failed (see $dir/run-$i.txt)"
  done
  python3 scripts/results-summary.py persister "$dir"
}

# ------------------------------------------------------------------------------------------
t_start=$SECONDS
for part in "${parts[@]}"; do
  [ "$part" = readme ] && continue
  t=$SECONDS
  "$part"
  say "$part: done in $((SECONDS - t)) s"
done
cat >"$out/.run-set.env.json" <<EOF
{"started": "$started", "commit": "$commit", "quick": $([ "$quick" = 1 ] && echo true || echo false),
 "parts": "${parts[*]}", "seconds": $((SECONDS - t_start)),
 "loadavg_before": "$loadavg_before", "cpu_pressure_avg60_before": "${pressure_before:-}",
 "server_threads": $server_threads, "loadgen_threads": $lg_threads, "repeats": $repeats,
 "cluster_reused": $([ -f "$logs/cluster.reused" ] && echo true || echo false)}
EOF
python3 scripts/results-summary.py readme "$out"
rm -f "$out/.run-set.env.json"
say "done in $((SECONDS - t_start)) s: $out/README.md, $out/run-set.json"
