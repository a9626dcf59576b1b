#!/usr/bin/env bash
# The Kafka-protocol broker used by cluster mode, its tests and scripts/cluster.sh: tansu
# (https://crates.io/crates/tansu, Apache-2.0), a single binary that speaks the Kafka wire
# protocol and stores topics in SQLite (durable across restarts) or in memory.
#
#   scripts/broker.sh install   install tansu into the tools cache unless it is already there;
#                               prints the binary's path (never reinstalls a present binary)
#   scripts/broker.sh path      print the binary's path, or fail when it is not installed
#
# Where: $CHAT_TANSU (an explicit binary) wins; otherwise the tools cache
# ${CHAT_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-tools}/bin/tansu; otherwise `tansu` on PATH.
# The tests (server/tests/support/services.rs) look in the same places.
#
# The first install compiles tansu from source: about 20 minutes on two cores.
set -euo pipefail

TANSU_VERSION=${TANSU_VERSION:-0.6.0}
TANSU_FEATURES=dynostore,libsql   # memory:// and sqlite:// storage engines
tools=${CHAT_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-tools}
cached=$tools/bin/tansu

# Prints the binary that would be used, or nothing.
find_tansu() {
  if [ -n "${CHAT_TANSU:-}" ]; then
    if [ -x "$CHAT_TANSU" ]; then echo "$CHAT_TANSU"; fi
    return 0 # an explicit choice: no fallback
  fi
  if [ -x "$cached" ]; then echo "$cached"; return 0; fi
  command -v tansu 2>/dev/null || true
}

# Warns when a present binary lacks a storage engine the project uses (it is not replaced).
check_features() {
  local engines
  engines=$("$1" --help 2>/dev/null | sed -n 's/^Storage engines: //p')
  local e
  for e in ${TANSU_FEATURES//,/ }; do
    case ",${engines// /}," in
      *",$e,"*) ;;
      *) echo "broker: warning: $1 lacks the $e storage engine (has: ${engines:-?})" >&2 ;;
    esac
  done
}

install() {
  local bin
  bin=$(find_tansu)
  if [ -n "$bin" ]; then check_features "$bin"; echo "$bin"; return 0; fi
  if [ -n "${CHAT_TANSU:-}" ]; then
    echo "broker: CHAT_TANSU=$CHAT_TANSU is not an executable file" >&2
    return 1
  fi

  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; else
      echo "broker: cargo is needed to install tansu (run scripts/setup.sh)" >&2
      return 1
    fi
  fi
  mkdir -p "$tools"
  # One install at a time, also across concurrent runs of this script. An install started by
  # hand (outside this script) is waited for rather than duplicated.
  exec 9>"$tools/.tansu-install.lock"
  if ! flock -n 9; then
    echo "broker: another tansu install is running; waiting for it" >&2
    flock 9
  fi
  local other
  while other=$(pgrep -f "cargo install tansu" | head -1) && [ -n "$other" ]; do
    echo "broker: waiting for the running 'cargo install tansu' (pid $other)" >&2
    while kill -0 "$other" 2>/dev/null; do sleep 5; done
  done
  if [ -x "$cached" ]; then check_features "$cached"; echo "$cached"; return 0; fi

  echo "broker: installing tansu $TANSU_VERSION into $tools (compiles from source, ~20 min)" >&2
  local log=$tools/tansu-install.log
  if ! cargo install tansu --locked --version "$TANSU_VERSION" --features "$TANSU_FEATURES" \
      --root "$tools" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "broker: cargo install tansu failed (full log: $log)" >&2
    return 1
  fi
  [ -x "$cached" ] || { echo "broker: installed, but $cached is missing" >&2; return 1; }
  check_features "$cached"
  echo "$cached"
}

case "${1:-}" in
  install) install ;;
  path)
    bin=$(find_tansu)
    if [ -z "$bin" ]; then
      echo "broker: tansu is not installed (run scripts/broker.sh install)" >&2
      exit 1
    fi
    echo "$bin"
    ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
