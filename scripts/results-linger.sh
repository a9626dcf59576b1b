#!/usr/bin/env bash
# Kafka's linger.ms against CPU and ack latency (#14): the local cluster of scripts/cluster.sh
# (two nodes on Redis, Kafka in the path, the persister) restarted with each --kafka-linger-ms,
# rounds interleaved, one verified loadgen run at each rate (100 rooms x 10, 100 B, --floor).
# Output: results/kafka-linger/ (RESULTS_OUT): LINGER-RATE-round-N/ and README.md.
#
#   scripts/results-linger.sh            (about 5 minutes)
#
# Environment: RESULTS_OUT, LINGER_VALUES ("1 5 20"), LINGER_RATES ("400 4000"),
# RESULTS_ROUNDS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${RESULTS_OUT:-results/kafka-linger}
values=${LINGER_VALUES:-1 5 20}
rates=${LINGER_RATES:-400 4000}
rounds=${RESULTS_ROUNDS:-2}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
say() { echo "linger: $*" >&2; }

cargo build --release -p chat-server -p chat-persister -p loadgen
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for linger in $values; do
    scripts/cluster.sh down >/dev/null 2>&1 || true
    CHAT_KAFKA_LINGER_MS=$linger CHAT_RATE_LIMIT=0 scripts/cluster.sh up >/dev/null
    for rate in $rates; do
      name=linger-$linger-rate-$rate-round-$r
      say "$name"
      rm -rf "${out:?}/$name"
      "$target_dir/release/loadgen" run --url ws://127.0.0.1:8081,ws://127.0.0.1:8082 \
        --rooms 100 --members 10 --senders 100 --rate "$rate" --warmup 2 --duration 10 \
        --floor --no-plots --results-dir "$out" --name "$name" >&2
    done
  done
done
scripts/cluster.sh down >/dev/null 2>&1 || true

python3 - "$out" "$rounds" <<'EOF'
import json, statistics, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
rows = {}
for d in sorted(out.glob("linger-*-rate-*-round-*")):
    _, linger, _, rate, _, rnd = d.name.split("-")
    r = json.loads((d / "result.json").read_text())
    rows.setdefault((int(rate), int(linger)), []).append(r)
med = lambda xs: statistics.median(xs) if xs else float("nan")
md = ["# Kafka linger.ms: server CPU and ack latency", "",
      "Made by `scripts/results-linger.sh`: the local cluster (2 nodes on Redis, Kafka, the",
      "persister) restarted with each `--kafka-linger-ms`, rounds interleaved; 100 rooms × 10,",
      f"100 B bodies, 2 + 10 s per run; medians of {rounds} rounds, (min–max).", "",
      "| rate msg/s | linger ms | server CPU µs / delivery | × kernel floor | ack p50 / p99 ms | delivery p99 ms | verified |",
      "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
for (rate, linger), rs in sorted(rows.items()):
    cpu = [x["server_cpu_us_per_delivered"] or 0 for x in rs]
    fl = [x.get("server_cpu_vs_floor") or 0 for x in rs]
    md.append(f"| {rate} | {linger} | {med(cpu):.1f} ({min(cpu):.1f}–{max(cpu):.1f}) | {med(fl):.1f} | "
              f"{med([x['latency']['ack']['p50_ms'] for x in rs]):.2f} / {med([x['latency']['ack']['p99_ms'] for x in rs]):.2f} | "
              f"{med([x['latency']['delivery']['p99_ms'] for x in rs]):.2f} | "
              f"{sum(x['verdict']['ok'] for x in rs)}/{len(rs)} |")
(out / "README.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
