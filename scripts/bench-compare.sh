#!/usr/bin/env bash
# Criterion suites of an earlier commit and of the working tree, side by side on this machine:
# both are built first, then each suite runs before, after, before, after (interleaved, so that
# the machine's drift hits both alike), and the median of each benchmark's two runs is compared.
#
#   scripts/bench-compare.sh REV [suite ...]     default suites: framing json fanout dedupe
#
# Output: one line per benchmark both commits have, `after / before` of the median time (< 1:
# the working tree is faster), and the summary in results/bench-compare/REV.md.
# Environment: BENCH_ARGS (criterion's, default "--warm-up-time 1 --measurement-time 3"),
# BENCH_BEFORE_TARGET (the earlier commit's target directory, default
# $CARGO_TARGET_DIR-before), ROUNDS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rev=${1:?usage: $0 REV [suite ...]}
shift
suites=${*:-framing json fanout dedupe}
rounds=${ROUNDS:-2}
args=${BENCH_ARGS:---warm-up-time 1 --measurement-time 3}
after_target=${CARGO_TARGET_DIR:-$root/target}
before_target=${BENCH_BEFORE_TARGET:-${after_target%/}-before}
work=$(mktemp -d)
tree=$work/before
git worktree add --detach "$tree" "$rev" >/dev/null
cleanup() { git worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

echo "bench-compare: building $rev and the working tree" >&2
(cd "$tree" && CARGO_TARGET_DIR=$before_target cargo bench -p chat-bench --no-run -q)
CARGO_TARGET_DIR=$after_target cargo bench -p chat-bench --no-run -q

# Copies every benchmark's median (ns) of the last run out of a target's criterion directory.
collect() { # target label round
  python3 - "$1/criterion" "$work/$2-$3.json" <<'PY'
import json, os, sys
out = {}
for dirpath, _, files in os.walk(sys.argv[1]):
    if dirpath.endswith("/new") and "estimates.json" in files:
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            name = json.load(f)["full_id"]
        with open(os.path.join(dirpath, "estimates.json")) as f:
            out[name] = json.load(f)["median"]["point_estimate"]
json.dump(out, open(sys.argv[2], "w"))
PY
}

for round in $(seq "$rounds"); do
  for suite in $suites; do
    for side in before after; do
      echo "bench-compare: round $round/$rounds, $suite, $side" >&2
      if [ $side = before ]; then
        rm -rf "$before_target/criterion"
        (cd "$tree" && CARGO_TARGET_DIR=$before_target cargo bench -q -p chat-bench --bench "$suite" -- $args --noplot >/dev/null 2>&1)
        collect "$before_target" "before-$suite" "$round"
      else
        rm -rf "$after_target/criterion"
        CARGO_TARGET_DIR=$after_target cargo bench -q -p chat-bench --bench "$suite" -- $args --noplot >/dev/null 2>&1
        collect "$after_target" "after-$suite" "$round"
      fi
    done
  done
done

mkdir -p results/bench-compare
python3 - "$work" "$rev" "$(git rev-parse --short HEAD)" "results/bench-compare/$rev.md" <<'PY'
import glob, json, statistics, sys
work, rev, head, out = sys.argv[1:]
runs = {"before": {}, "after": {}}
for path in glob.glob(f"{work}/*.json"):
    side = path.rsplit("/", 1)[1].split("-", 1)[0]
    for name, ns in json.load(open(path)).items():
        runs[side].setdefault(name, []).append(ns)
lines = [f"# Criterion, {rev} (before) vs {head} + working tree (after)", "",
         "Median time of each benchmark over the interleaved runs; ratio = after / before "
         "(< 1: faster now).", "", "| benchmark | before | after | after / before |",
         "| --- | ---: | ---: | ---: |"]
ratios = []
for name in sorted(set(runs["before"]) & set(runs["after"])):
    b = statistics.median(runs["before"][name]); a = statistics.median(runs["after"][name])
    ratios.append(a / b)
    lines.append(f"| {name} | {b:,.0f} ns | {a:,.0f} ns | {a / b:.2f} |")
if ratios:
    lines += ["", f"{len(ratios)} benchmarks; median ratio {statistics.median(ratios):.2f}, "
              f"range {min(ratios):.2f}-{max(ratios):.2f}."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
