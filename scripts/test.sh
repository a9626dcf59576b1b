#!/usr/bin/env bash
# Every test: install what is missing, start the services the tests use, then formatting,
# lints and the whole test suite (unit, protocol, RFC 6455 conformance, browser).
#
# CI calls this (.ci/run). There the build cache lives outside the fresh clone
# (CARGO_TARGET_DIR, default /var/cache/chat-backend/target) so that runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --browser --broker --ops
# kubernetes-validate lives in the venv setup.sh --ops made.
export PATH="$HOME/.cache/chat-tools/venv/bin:$PATH"
scripts/services.sh
if [ -n "${CI:-}" ] && [ -z "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR=/var/cache/chat-backend/target
  mkdir -p "$CARGO_TARGET_DIR"
fi
# The browser and broker tests must run here, not skip: both were just installed.
export CHAT_REQUIRE_BROWSER=1
# The end-to-end test (server + persister) must find both binaries.
export CHAT_REQUIRE_E2E=1
export CHAT_REQUIRE_BROKER=1
# The deploy/ checks (checks/) must run, not skip: promtool, prometheus, kubernetes-validate.
export CHAT_REQUIRE_OPS=1
CHAT_TANSU=$(scripts/broker.sh path)
export CHAT_TANSU

start=$(date +%s)
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== deploy/: promtool, kubernetes-validate (again, with a real Prometheus, in cargo test -p chat-checks)"
(cd deploy/prometheus && promtool check config prometheus.yml && promtool check config prometheus.tls.yml && promtool check rules alerts.yml && promtool test rules alerts.test.yml)
kubernetes-validate --strict --quiet $(sed -n 's/^  - \(.*\.yaml\)$/deploy\/k8s\/\1/p' deploy/k8s/kustomization.yaml)
echo "== fuzz (bounded)"
scripts/fuzz.sh 20
echo "== cargo bench -- --test (every criterion benchmark once)"
bench_log=$(mktemp)
if ! cargo bench -p chat-bench --locked -- --test >"$bench_log" 2>&1; then
  tail -50 "$bench_log"
  exit 1
fi
echo "bench: $(grep -c 'Success' "$bench_log") benchmarks ran once, $(grep -c '^SKIPPED' "$bench_log") suites skipped"
rm -f "$bench_log"
echo "== cargo test"
cargo test --workspace --locked
echo "== all tests passed in $(( $(date +%s) - start )) s"
