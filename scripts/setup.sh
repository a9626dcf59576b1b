#!/usr/bin/env bash
# Installs what building and testing this project needs, skipping whatever is already there.
# Safe to run any number of times. Debian/Ubuntu (apt); run as root or with sudo available.
#
#   scripts/setup.sh            build tools, Redis, PostgreSQL
#   scripts/setup.sh --browser  also Chromium + chromedriver (for the browser test)
#   scripts/setup.sh --broker   also the tansu Kafka broker (scripts/broker.sh install; the
#                               first install compiles it, ~20 min; later runs skip it)
#   scripts/setup.sh --ops      also what checks deploy/: Debian's prometheus (prometheus and
#                               promtool) and kubernetes-validate (PyPI, in a venv under
#                               ~/.cache/chat-tools/venv; it validates offline with the
#                               Kubernetes schemas it bundles)
set -euo pipefail

want_browser=0
want_broker=0
want_ops=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    --broker) want_broker=1 ;;
    --ops) want_ops=1 ;;
    *) echo "usage: $0 [--browser] [--broker] [--ops]" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages: build tools (rdkafka's bundled librdkafka needs cmake, curl, ssl, zlib),
# the real servers the tests use, and the browser for the page test.
packages=(build-essential pkg-config cmake libssl-dev libcurl4-openssl-dev zlib1g-dev
          redis-server redis-tools postgresql postgresql-client curl ca-certificates)
if [ "$want_browser" = 1 ]; then packages+=(chromium chromium-driver); fi
if [ "$want_ops" = 1 ]; then packages+=(prometheus python3 python3-venv); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Rust toolchain: cargo with rustfmt and clippy.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: no Rust toolchain found. Install rustup (https://rustup.rs), then re-run." >&2
    exit 1
  fi
fi
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" || true
  done
fi
if [ "$want_ops" = 1 ]; then
  venv="$HOME/.cache/chat-tools/venv"
  if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "setup: installing kubernetes-validate into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate
  fi
fi
if [ "$want_broker" = 1 ]; then
  tansu=$("$(dirname "$0")/broker.sh" install)
  echo "setup: tansu broker at $tansu"
fi
echo "setup: ok ($(cargo --version))"
