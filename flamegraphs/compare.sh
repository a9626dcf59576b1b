#!/usr/bin/env bash
# Before/after of two chat-server binaries under the same loadgen run, interleaved.
#
#   flamegraphs/compare.sh BEFORE_BIN AFTER_BIN [ROUNDS]
#
# Runs ROUNDS (default 5) pairs of loadgen runs against a fresh standalone server, alternating
# which binary goes first in each pair (A B, B A, A B, ...), so that a change in the machine's
# load during the comparison hits both sides alike. No perf: nothing but the server and the
# load generator run. Prints every run's server CPU per delivered message (from result.json:
# the server's process CPU over the run divided by the verified deliveries), its delivery p50
# and p99 and the machine's CPU pressure, and the medians and their ratio (after / before) as
# Markdown. (No user/kernel split: the utime/stime of /proc varied up to 10x between identical
# runs on this VM. For how much of the CPU is user space, record profiles with record.sh.)
#
# The scenario is record.sh's (FG_RATE, FG_ROOMS, FG_MEMBERS, FG_SENDERS, FG_BODY, FG_WARMUP,
# FG_DURATION, FG_THREADS, FG_PORT, FG_SERVER_ARGS); the loadgen binary is FG_LOADGEN_BIN or
# target/flamegraphs/release/loadgen (build it with record.sh), the same for both sides.
# Results: target/flamegraphs/compare/<before|after>-<round>/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

[ $# -ge 2 ] || { echo "usage: $0 BEFORE_BIN AFTER_BIN [ROUNDS]" >&2; exit 2; }
before_bin=$1
after_bin=$2
rounds=${3:-5}
# shellcheck source=flamegraphs/scenario.sh
. "$root/flamegraphs/scenario.sh"
loadgen_bin=${FG_LOADGEN_BIN:-$root/target/flamegraphs/release/loadgen}
out=$root/target/flamegraphs/compare
for b in "$before_bin" "$after_bin" "$loadgen_bin"; do [ -x "$b" ] || { echo "compare: $b is missing" >&2; exit 1; }; done
mkdir -p "$out"

server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap stop_server EXIT

one_run() { # side binary round
  local side=$1 bin=$2 round=$3 addr=127.0.0.1:$port
  # shellcheck disable=SC2086 # FG_SERVER_ARGS is a list of flags
  "$bin" --listen "$addr" --threads "$threads" --rate-limit 0 ${FG_SERVER_ARGS:-} \
    >"$out/$side-$round.server.log" 2>&1 </dev/null &
  server_pid=$!
  for _ in $(seq 200); do curl -fsS -m 1 "http://$addr/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
  rm -rf "${out:?}/$side-$round"
  "$loadgen_bin" run --url "ws://$addr" --rooms "$rooms" --members "$members" --senders "$senders" \
    --rate "$rate" --body "$body" --warmup "$warmup" --duration "$duration" --name "$side-$round" \
    --results-dir "$out" --no-progress --no-plots >"$out/$side-$round.loadgen.log" 2>&1 ||
    echo "compare: $side round $round: loadgen exited with $? (see $out/$side-$round.loadgen.log)" >&2
  stop_server
  echo "compare: $side round $round done" >&2
}

for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then
    one_run before "$before_bin" "$r"
    one_run after "$after_bin" "$r"
  else
    one_run after "$after_bin" "$r"
    one_run before "$before_bin" "$r"
  fi
done

python3 - "$out" "$rounds" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {"before": [], "after": []}
for side in rows:
    for r in range(1, rounds + 1):
        res = json.load(open(f"{out}/{side}-{r}/result.json"))
        d = res["latency"]["delivery"]
        rows[side].append({
            "cpu": res["server_cpu_us_per_delivered"],
            "p50": d["p50_ms"], "p99": d["p99_ms"],
            "pressure": res["loadgen"]["cpu_pressure"], "ok": res["verdict"]["ok"],
        })
med = {side: {k: statistics.median(x[k] for x in runs) for k in ("cpu", "p50", "p99", "pressure")}
       for side, runs in rows.items()}
print("| side | server CPU µs / delivered msg (each run) | median | delivery p50 / p99 ms (medians) | CPU pressure (median) | verified |")
print("| --- | --- | ---: | --- | ---: | --- |")
def each(runs, key, digits):
    return ", ".join(f"{x[key]:.{digits}f}" for x in runs)
for side, runs in rows.items():
    m = med[side]
    print(f"| {side} | {each(runs, 'cpu', 2)} | {m['cpu']:.2f} | {m['p50']:.3f} / {m['p99']:.3f} | "
          f"{100 * m['pressure']:.0f} % | {all(x['ok'] for x in runs)} |")
print(f"\nafter / before, server CPU per delivered message (medians): {med['after']['cpu'] / med['before']['cpu']:.3f}")
EOF
