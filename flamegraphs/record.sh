#!/usr/bin/env bash
# CPU flamegraphs of chat-server under a verified loadgen run.
#
#   flamegraphs/record.sh                     standalone server, 100 rooms x 10 members, 5000 msg/s
#   flamegraphs/record.sh standalone NAME     the same, written as flamegraphs/NAME.svg
#   flamegraphs/record.sh cluster [NAME]      both nodes of the 2-node cluster of scripts/cluster.sh
#
# What it does, installing what is missing (idempotent):
#   1. perf (apt package linux-perf) and inferno (cargo install into the tools cache
#      ${CHAT_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-tools}, like scripts/broker.sh does for
#      tansu);
#   2. cargo build --release -p chat-server -p chat-persister -p loadgen (the set scripts/cluster.sh
#      builds) into target/flamegraphs/ with CARGO_PROFILE_RELEASE_DEBUG=limited: the release
#      profile's own `line-tables-only` names inlined frames without their path (`poll_batch`,
#      `{async_fn#0}`), `limited` gives them their full paths (`...::write_loop::{{closure}}`);
#      same optimizations, a separate directory so the normal release build is not touched;
#   3. starts the server: standalone on 127.0.0.1:$FG_PORT with --threads $FG_THREADS, or for
#      `cluster` reuses a healthy scripts/cluster.sh cluster (else runs `scripts/cluster.sh up`
#      and `down` at the end; nothing in Redis is flushed, loadgen's rooms are fresh per run);
#   4. runs `loadgen run` and, once messages flow and the warm-up has passed, records every
#      server process with `perf record -F $FG_FREQ --call-graph $FG_CALL_GRAPH` for the measured
#      $FG_DURATION seconds;
#      and, over the same seconds, `perf stat --per-thread` (task-clock, context switches,
#      syscalls) of each process;
#   5. folds the stacks with inferno and writes, per recorded process P:
#        flamegraphs/P.svg          the flamegraph (click to zoom, Ctrl-F to search)
#        flamegraphs/P.txt          top frames: self and inclusive shares, and categories
#        flamegraphs/P.stat.txt     perf stat per thread over the recorded seconds
#      then flamegraphs/accounting.py writes flamegraphs/NAME.accounting.md: CPU, context
#      switches and syscalls per message and per delivery, by thread and by category;
#      and the loadgen result in flamegraphs/NAME/ (result.json, report.md, scenario.toml).
#      P is NAME for standalone, NAME-node-PORT for each cluster node. perf.data, the folded
#      stacks and the logs stay in target/flamegraphs/work/.
#
# Environment (defaults in brackets):
#   FG_RATE [5000] FG_ROOMS [100] FG_MEMBERS [10] FG_SENDERS [= rooms] FG_BODY [100]
#   FG_WARMUP [3] FG_DURATION [15]            loadgen scenario (msg/s, seconds)
#   FG_THREADS [1] FG_PORT [8097]             standalone server
#   FG_SERVER_BIN                             another chat-server binary to record (e.g. an older
#                                             build, for before/after; the build still runs,
#                                             unless FG_LOADGEN_BIN is given too)
#   FG_LOADGEN_BIN                            another loadgen binary
#   FG_NOTE                                   what the recorded binary is, for the flamegraph's
#                                             subtitle (default: the commit checked out here)
#   FG_SERVER_ARGS                            extra chat-server flags (standalone)
#   FG_FREQ [499] FG_CALL_GRAPH [dwarf,16384] perf sampling frequency and unwinder
#   FG_KEEP_CLUSTER [0]                       1: leave a cluster this script started running
#   CHAT_* variables reach cluster nodes the script starts (scripts/cluster.sh), e.g. CHAT_THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=${1:-standalone}
case "$mode" in
  standalone | cluster) ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [standalone|cluster] [NAME]" >&2; exit 2 ;;
esac
name=${2:-$mode}

# shellcheck source=flamegraphs/scenario.sh
. "$root/flamegraphs/scenario.sh"
freq=${FG_FREQ:-499}
call_graph=${FG_CALL_GRAPH:-dwarf,16384}
tools=${CHAT_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-tools}
inferno_version=0.12.8
target_dir=$root/target/flamegraphs
out=$root/flamegraphs
work=$target_dir/work
mkdir -p "$work"

say() { echo "flamegraphs: $*" >&2; }
die() { echo "flamegraphs: error: $*" >&2; exit 1; }

# ---- tools -----------------------------------------------------------------------------------
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

ensure_perf() {
  if ! command -v perf >/dev/null 2>&1 || ! perf --version >/dev/null 2>&1; then
    say "installing perf (apt: linux-perf)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
  fi
  perf --version >/dev/null 2>&1 || die "perf does not run"
  if [ "$(id -u)" -ne 0 ] && [ "$(cat /proc/sys/kernel/perf_event_paranoid)" -gt 1 ]; then
    die "perf_event_paranoid > 1: run as root, or: sudo sysctl kernel.perf_event_paranoid=1"
  fi
}

ensure_inferno() {
  if [ -x "$tools/bin/inferno-flamegraph" ] && [ -x "$tools/bin/inferno-collapse-perf" ]; then return; fi
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || die "cargo is needed to install inferno (scripts/setup.sh)"
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  mkdir -p "$tools"
  # One install at a time, also across concurrent runs of this script.
  exec 8>"$tools/.inferno-install.lock"
  flock 8
  if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
    say "installing inferno $inferno_version into $tools (a minute or two)"
    cargo install inferno --locked --version "$inferno_version" --root "$tools" \
      >"$tools/inferno-install.log" 2>&1 || { tail -n 20 "$tools/inferno-install.log" >&2; die "cargo install inferno failed"; }
  fi
  exec 8>&-
}

ensure_perf
ensure_inferno
command -v python3 >/dev/null || die "python3 is needed for the top-frames summary"
command -v curl >/dev/null || die "curl is needed"

# ---- build -----------------------------------------------------------------------------------
if [ -z "${FG_SERVER_BIN:-}" ] || [ -z "${FG_LOADGEN_BIN:-}" ]; then
  say "cargo build --release -p chat-server -p chat-persister -p loadgen (into target/flamegraphs/)"
  CARGO_TARGET_DIR=$target_dir CARGO_PROFILE_RELEASE_DEBUG=limited \
    cargo build --release -p chat-server -p chat-persister -p loadgen >&2 || die "build failed"
fi
server_bin=${FG_SERVER_BIN:-$target_dir/release/chat-server}
loadgen_bin=${FG_LOADGEN_BIN:-$target_dir/release/loadgen}
[ -x "$server_bin" ] || die "$server_bin is missing"
[ -x "$loadgen_bin" ] || die "$loadgen_bin is missing"

# ---- server ----------------------------------------------------------------------------------
pids=()     # recorded processes
labels=()   # their output names
urls=()
metrics=()  # host:port of every node, for the "messages flow" check
server_pid=""
cluster_started=0

cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  if [ "$cluster_started" = 1 ] && [ "${FG_KEEP_CLUSTER:-0}" != 1 ]; then
    CARGO_TARGET_DIR=$target_dir scripts/cluster.sh down >&2 || true
  fi
}
trap cleanup EXIT

health_ok() { curl -fsS -m 2 "http://$1/healthz" >/dev/null 2>&1; }

if [ "$mode" = standalone ]; then
  addr=127.0.0.1:$port
  health_ok "$addr" && die "something already serves $addr (FG_PORT picks another port)"
  # shellcheck disable=SC2086 # FG_SERVER_ARGS is a list of flags
  "$server_bin" --listen "$addr" --threads "$threads" --rate-limit 0 ${FG_SERVER_ARGS:-} \
    >"$work/$name-server.log" 2>&1 </dev/null &
  server_pid=$!
  for _ in $(seq 200); do
    health_ok "$addr" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/$name-server.log" >&2; die "chat-server exited"; }
    sleep 0.05
  done
  health_ok "$addr" || die "chat-server not healthy on $addr"
  say "standalone chat-server pid $server_pid on $addr, $threads thread(s)"
  pids=("$server_pid")
  labels=("$name")
  urls=("ws://$addr")
  metrics=("$addr")
else
  if scripts/cluster.sh status >/dev/null 2>&1; then
    say "reusing the running cluster (scripts/cluster.sh status is healthy)"
  else
    say "starting the cluster: scripts/cluster.sh up"
    cluster_started=1
    CARGO_TARGET_DIR=$target_dir CHAT_SERVER_BIN=$server_bin CHAT_RATE_LIMIT=${CHAT_RATE_LIMIT:-0} \
      scripts/cluster.sh up >&2 ||
      die "scripts/cluster.sh up failed"
  fi
  for p in ${CLUSTER_NODES:-8081 8082}; do
    pid=$(cat ".cluster/node-$p.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || die "no live node-$p (.cluster/node-$p.pid)"
    pids+=("$pid")
    labels+=("$name-node-$p")
    urls+=("ws://127.0.0.1:$p")
    metrics+=("127.0.0.1:$p")
  done
  say "cluster nodes: ${pids[*]}"
fi

# ---- load + recording --------------------------------------------------------------------------
delivered_total() {
  local m sum=0 v
  for m in "${metrics[@]}"; do
    v=$(curl -fsS -m 2 "http://$m/metrics" 2>/dev/null |
      awk '/^chat_messages_delivered_total/ { s += $2 } END { printf "%d", s }')
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

url_list=$(IFS=,; echo "${urls[*]}")
rm -rf "${out:?}/$name"
say "loadgen: $rooms rooms x $members members, $senders senders, $rate msg/s, ${warmup}+${duration} s -> flamegraphs/$name/"
base=$(delivered_total)
"$loadgen_bin" run --url "$url_list" --rooms "$rooms" --members "$members" --senders "$senders" \
  --rate "$rate" --body "$body" --warmup "$warmup" --duration "$duration" --name "$name" \
  --results-dir "$out" --no-progress --no-plots --floor >"$work/$name-loadgen.log" 2>&1 &
loadgen_pid=$!

# Messages flow once delivered_total moves; the measured part starts a warm-up later.
until [ "$(delivered_total)" -gt "$base" ]; do
  kill -0 "$loadgen_pid" 2>/dev/null || { cat "$work/$name-loadgen.log" >&2; die "loadgen ended before any delivery"; }
  sleep 0.1
done
sleep "$warmup"
say "recording ${pids[*]} for ${duration} s (perf -F $freq --call-graph $call_graph)"
perf_pids=()
for i in "${!pids[@]}"; do
  perf record -F "$freq" -g --call-graph "$call_graph" -p "${pids[$i]}" \
    -o "$work/${labels[$i]}.perf.data" -- sleep "$duration" >"$work/${labels[$i]}.perf.log" 2>&1 &
  perf_pids+=($!)
  perf stat --per-thread -x, -e task-clock,context-switches,raw_syscalls:sys_enter \
    -p "${pids[$i]}" -o "$out/${labels[$i]}.stat.txt" -- sleep "$duration" >/dev/null 2>&1 &
  perf_pids+=($!)
done
stat_base=$(delivered_total)
for p in "${perf_pids[@]}"; do wait "$p" || die "perf record failed (see $work/*.perf.log)"; done
# Deliveries the nodes counted over the recorded seconds (for the per-delivery accounting).
echo "$(( $(delivered_total) - stat_base ))" >"$work/$name.delivered"
status=0
wait "$loadgen_pid" || status=$?
cat "$work/$name-loadgen.log" >&2
rm -f "$out/$name"/*.svg # --no-plots: none expected; never commit stale ones

# ---- fold and draw -------------------------------------------------------------------------------
scenario="$rooms rooms x $members, $rate msg/s, ${body} B bodies"
for i in "${!pids[@]}"; do
  label=${labels[$i]}
  say "folding $label"
  perf script -i "$work/$label.perf.data" 2>/dev/null |
    "$tools/bin/inferno-collapse-perf" --all >"$work/$label.folded"
  [ -s "$work/$label.folded" ] || die "no samples for $label"
  # Stacks are weighted by the sample period: nanoseconds of CPU for cpu-clock (what a VM
  # without a PMU gets), cycles for the cycles event.
  event=$(perf evlist -i "$work/$label.perf.data" 2>/dev/null | head -1)
  case "$event" in cpu-clock* | task-clock*) unit=ns ;; cycles*) unit=cycles ;; *) unit=events ;; esac
  samples=$(sed -n 's/.*(\([0-9]*\) samples).*/\1/p' "$work/$label.perf.log")
  "$tools/bin/inferno-flamegraph" --title "chat-server $label: $scenario" \
    --subtitle "perf record -F $freq --call-graph $call_graph ($event, ${samples:-?} samples), ${duration} s of a loadgen run; ${FG_NOTE:-commit $(git rev-parse --short HEAD)}" \
    --countname "$unit" --minwidth 0.05 <"$work/$label.folded" >"$out/$label.svg"
  python3 "$out/top.py" "$work/$label.folded" "$unit" "${samples:-?}" >"$out/$label.txt"
  say "wrote flamegraphs/$label.svg and flamegraphs/$label.txt"
done
python3 "$out/accounting.py" "$out" "$name" "$rate" "$duration" "$(cat "$work/$name.delivered")" \
  "${labels[@]}" >"$out/$name.accounting.md"
say "wrote flamegraphs/$name.accounting.md"
if [ "$status" -ne 0 ]; then
  say "loadgen exited with $status (2 = a verification failure: see flamegraphs/$name/report.md)"
fi
exit "$status"
