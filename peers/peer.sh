#!/usr/bin/env bash
# The systems our users run today, installed and started the same way for the comparison of
# results/peers/ (what each runs and why: peers/README.md). Every one runs 2 nodes on the
# same Redis (127.0.0.1:6379), on loopback only.
#
#   peers/peer.sh install NAME|all   install what NAME needs, unless it is there (idempotent)
#   peers/peer.sh start NAME         start its nodes (stopping earlier ones), wait until they listen
#   peers/peer.sh stop NAME          stop them
#   peers/peer.sh urls NAME          the nodes' WebSocket URLs, comma-separated (for loadgen --url)
#   peers/peer.sh protocol NAME      what loadgen --protocol speaks to it
#   peers/peer.sh pids NAME          every process of the running peer (nodes and their children)
#   peers/peer.sh names              the names below
#
# NAME                                   ports       protocol
#   ours         chat-server, 2 nodes    8091, 8092  chat      cluster mode on Redis, no Kafka
#   ours-single  chat-server standalone  8093        chat      one process, all cores
#   socketio     Socket.IO 4 + redis-adapter   9101, 9102  socketio
#   sockudo      Sockudo (Pusher protocol)     6001, 6002  pusher   (HTTP API on the same ports)
#   nodews       Node.js ws + ioredis          9111, 9112  chat
#   naive        tokio + tungstenite + redis-rs 9121, 9122 chat
#
# Where things go: npm packages (versions pinned by peers/package-lock.json) into
# $CHAT_TOOLS/peers/node_modules, Sockudo (`cargo install sockudo`, about 8-15 minutes the
# first time) into $CHAT_TOOLS/bin, the naive server's build into $CHAT_TOOLS/peers/naive-target;
# CHAT_TOOLS defaults to ~/.cache/chat-tools (as scripts/broker.sh). chat-server comes from
# $CARGO_TARGET_DIR (or target)/release: `cargo build --release -p chat-server`.
# Run state and logs: .run/peers/. REDIS_URL overrides the Redis of every peer.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=${CHAT_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-tools}
npm_dir=$tools/peers
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
run=$root/.run/peers
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$root/$target_dir ;; esac
naive_target=${PEERS_NAIVE_TARGET:-$npm_dir/naive-target}
SOCKUDO_VERSION=${SOCKUDO_VERSION:-5.2.0}
names="ours ours-single socketio sockudo nodews naive"

say() { echo "peer: $*" >&2; }
die() { echo "peer: error: $*" >&2; exit 1; }

ports() {
  case "$1" in
    ours) echo "8091 8092" ;;
    ours-single) echo 8093 ;;
    socketio) echo "9101 9102" ;;
    sockudo) echo "6001 6002" ;;
    nodews) echo "9111 9112" ;;
    naive) echo "9121 9122" ;;
    *) die "unknown peer '$1' (one of: $names)" ;;
  esac
}

protocol() {
  case "$1" in
    socketio) echo socketio ;;
    sockudo) echo pusher ;;
    *) ports "$1" >/dev/null; echo chat ;;
  esac
}

install_npm() {
  command -v npm >/dev/null || die "npm is needed (Node.js 18 or later)"
  mkdir -p "$npm_dir"
  if [ -d "$npm_dir/node_modules" ] && cmp -s peers/package-lock.json "$npm_dir/package-lock.json"; then
    return 0
  fi
  say "npm ci into $npm_dir (socket.io, @socket.io/redis-adapter, redis, ws, ioredis)"
  cp peers/package.json peers/package-lock.json "$npm_dir/"
  (cd "$npm_dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
}

install_sockudo() {
  [ -x "$tools/bin/sockudo" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to install sockudo"
  command -v protoc >/dev/null || {
    say "apt-get install protobuf-compiler (sockudo's build needs protoc)"
    apt-get install -y -qq protobuf-compiler >&2 || die "protoc is missing: apt-get install protobuf-compiler"
  }
  say "cargo install sockudo $SOCKUDO_VERSION --features redis into $tools (8-15 minutes the first time)"
  local t0=$SECONDS
  cargo install sockudo --version "$SOCKUDO_VERSION" --locked --features redis --root "$tools" >&2
  say "sockudo installed in $((SECONDS - t0)) s"
}

install_naive() {
  local bin=$naive_target/release/naive-chat
  # Rebuilt when its sources are newer than the binary (cargo decides; a no-op is quick).
  say "cargo build --release (peers/naive-rust)"
  (cd peers/naive-rust && CARGO_TARGET_DIR=$naive_target cargo build --release --locked -q) >&2
  [ -x "$bin" ] || die "naive-chat was not built"
}

install_ours() {
  [ -x "$target_dir/release/chat-server" ] && return 0
  say "cargo build --release -p chat-server"
  cargo build --release -p chat-server >&2
}

install() {
  case "$1" in
    all) local n; for n in $names; do install "$n"; done ;;
    ours | ours-single) install_ours ;;
    socketio | nodews) install_npm ;;
    sockudo) install_sockudo ;;
    naive) install_naive ;;
    *) die "unknown peer '$1' (one of: $names)" ;;
  esac
}

# Starts node I of NAME on PORT in the background; prints its pid.
start_node() { # NAME I PORT
  local name=$1 i=$2 port=$3 log=$run/$1-$2.log
  case "$name" in
    ours)
      setsid "$target_dir/release/chat-server" --listen "127.0.0.1:$port" --redis "$redis_url" \
        --rate-limit 0 >"$log" 2>&1 </dev/null &
      ;;
    ours-single)
      setsid "$target_dir/release/chat-server" --listen "127.0.0.1:$port" --rate-limit 0 \
        >"$log" 2>&1 </dev/null &
      ;;
    socketio | nodews)
      NODE_PATH=$npm_dir/node_modules PORT=$port REDIS_URL=$redis_url NODE_ENV=production \
        setsid node "peers/$name/server.js" >"$log" 2>&1 </dev/null &
      ;;
    naive)
      setsid "$naive_target/release/naive-chat" "127.0.0.1:$port" "$redis_url" \
        >"$log" 2>&1 </dev/null &
      ;;
    sockudo)
      # The documented multi-node setup (Redis adapter and cache); limits that would refuse
      # the benchmark's load are lifted, as `--rate-limit 0` does for ours (peers/README.md).
      HOST=127.0.0.1 PORT=$port METRICS_PORT=$((9600 + i)) \
        ADAPTER_DRIVER=redis CACHE_DRIVER=redis REDIS_URL=$redis_url \
        SOCKUDO_DEFAULT_APP_ID=chat-bench SOCKUDO_DEFAULT_APP_KEY=chat-bench-key \
        SOCKUDO_DEFAULT_APP_SECRET=chat-bench-secret \
        SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
        SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=1000000 \
        RATE_LIMITER_ENABLED=false RUST_LOG=${SOCKUDO_LOG:-warn} \
        setsid "$tools/bin/sockudo" >"$log" 2>&1 </dev/null &
      ;;
  esac
  echo $!
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local name=$1 i=0 port pid
  ports "$name" >/dev/null
  stop "$name"
  install "$name"
  mkdir -p "$run"
  : >"$run/$name.pids"
  for port in $(ports "$name"); do
    i=$((i + 1))
    listening "$port" && die "port $port is taken by another process"
    pid=$(start_node "$name" "$i" "$port")
    echo "$pid" >>"$run/$name.pids"
  done
  i=0
  for port in $(ports "$name"); do
    i=$((i + 1))
    local n
    for n in $(seq 300); do
      listening "$port" && break
      kill -0 "$(sed -n "${i}p" "$run/$name.pids")" 2>/dev/null ||
        { tail -20 "$run/$name-$i.log" >&2; die "$name node $i exited"; }
      sleep 0.1
    done
    listening "$port" || die "$name node $i does not listen on $port after 30 s"
  done
  say "$name: $(urls "$name")"
}

stop() {
  local name=$1 pid
  [ -f "$run/$name.pids" ] || return 0
  for pid in $(cat "$run/$name.pids"); do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $(cat "$run/$name.pids"); do
    local n
    for n in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$run/$name.pids"
}

urls() {
  local out="" port
  for port in $(ports "$1"); do out="$out${out:+,}ws://127.0.0.1:$port"; done
  echo "$out"
}

# The nodes and all their descendants.
pids() {
  [ -f "$run/$1.pids" ] || die "$1 is not running"
  local todo pid kids all=""
  todo=$(cat "$run/$1.pids")
  while [ -n "$todo" ]; do
    local next=""
    for pid in $todo; do
      [ -d "/proc/$pid" ] || continue
      all="$all $pid"
      kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null | tr '\n' ' ')
      next="$next $kids"
    done
    todo=$(echo $next)
  done
  echo $all
}

case "${1:-}" in
  install | start | stop | urls | protocol | pids) [ $# -eq 2 ] || die "usage: $0 $1 NAME"; "$1" "$2" ;;
  names) echo "$names" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
