#!/usr/bin/env bash
# Measures the persister next to PostgreSQL's own load paths (persister/README.md, "Measured").
#
#   persister/bench.sh [N]            N messages (default 1000000)
#
# Builds chat-persister and the bench example in release mode, starts a private tansu broker
# (memory storage) on a free port, creates a topic with 8 partitions, then runs
# persister/examples/bench.rs: produce N `msg` records, time the persister into a fresh
# database, time `psql \copy` of the same rows from CSV and seed-style multi-row INSERTs.
#
# Environment: BENCH_KAFKA=host:port uses that broker instead (the topic must exist:
# BENCH_TOPIC, default bench-<pid>), BENCH_POSTGRES (default the shared
# postgres://postgres@127.0.0.1:5432/test; databases bench_* are created and dropped),
# BENCH_ROOMS (1000), BENCH_PARTITIONS (8), BENCH_PERSISTER_ARGS (extra persister flags).
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-1000000}
partitions=${BENCH_PARTITIONS:-8}
topic=${BENCH_TOPIC:-bench-$$}
pg=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
work=$(mktemp -d /tmp/chat-persister-bench.XXXXXX)
target_dir=${CARGO_TARGET_DIR:-target}

cleanup() {
  if [ -n "${tansu_pid:-}" ]; then kill "$tansu_pid" 2>/dev/null || true; wait "$tansu_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -p chat-persister --bin chat-persister --example bench

if [ -n "${BENCH_KAFKA:-}" ]; then
  kafka=$BENCH_KAFKA
else
  tansu=$(scripts/broker.sh path) || { echo "bench: tansu is missing: scripts/broker.sh install" >&2; exit 1; }
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  kafka=127.0.0.1:$port
  (cd "$work" && RUST_LOG=warn exec "$tansu" broker --listener-url "tcp://$kafka" \
      --advertised-listener-url "tcp://$kafka" --storage-engine memory://tansu/) >"$work/tansu.log" 2>&1 &
  tansu_pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  RUST_LOG=error "$tansu" topic create --broker "tcp://$kafka" --partitions "$partitions" "$topic" >/dev/null
  echo "bench: tansu (memory) on $kafka, topic $topic with $partitions partitions"
fi

# shellcheck disable=SC2086
"$target_dir/release/examples/bench" --kafka "$kafka" --topic "$topic" --postgres "$pg" \
  --persister "$target_dir/release/chat-persister" --n "$n" --rooms "${BENCH_ROOMS:-1000}" \
  --work "$work" -- ${BENCH_PERSISTER_ARGS:-}
