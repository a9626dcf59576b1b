#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a bounded time, starting from the
# committed corpora in fuzz/corpus/. Needs a nightly toolchain and cargo-fuzz (installed here
# when missing); where no nightly toolchain exists it says SKIPPED and exits 0.
#
#   scripts/fuzz.sh [seconds per target]      (default 20)
#   scripts/fuzz.sh --runs N                  (N inputs per target instead)
set -euo pipefail
cd "$(dirname "$0")/.."
limit="-max_total_time=${1:-20}"
if [ "${1:-}" = "--runs" ]; then limit="-runs=${2:?}"; fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED (no nightly toolchain; cargo fuzz needs one)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked >/dev/null
fi
for target in $(cargo +nightly fuzz list); do
  mkdir -p "fuzz/corpus/$target"
  out=$(cargo +nightly fuzz run -O "$target" -- "$limit" -max_len=4096 2>&1) || {
    echo "$out" | tail -40
    echo "fuzz: $target FAILED (crash input under fuzz/artifacts/$target/)"
    exit 1
  }
  echo "fuzz: $target $(echo "$out" | grep -E '^Done [0-9]+ runs' | tail -1)"
done
