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
#   peers/peer.sh pids NAME          every process of the running peer (nodes and their children,
#                                    and the persister of a -kafka variant)
#   peers/peer.sh service-pids NAME  a -kafka variant's broker and its PostgreSQL backends
#                                    (broker=PID pg=PID,PID...), for their CPU beside the server's
#   peers/peer.sh rows NAME          rows in the messages table a -kafka variant's persister writes
#   peers/peer.sh names              the names below
#
# NAME                                   ports       protocol
#   ours         chat-server, 2 nodes    8091, 8092  chat      cluster mode on Redis, no Kafka
#   ours-single  chat-server standalone  8093        chat      one process, all cores
#   socketio     Socket.IO 4 + redis-adapter   9101, 9102  socketio
#   sockudo      Sockudo (Pusher protocol)     6001, 6002  pusher   (HTTP API on the same ports)
#   nodews       Node.js ws + ioredis          9111, 9112  chat
#   naive        tokio + tungstenite + redis-rs 9121, 9122 chat
#   ours-kafka   chat-server --kafka, 2 nodes, + chat-persister    8094, 8095  chat
#   nodews-kafka Node ws + ioredis + node-rdkafka, 2 nodes, + Node persister (pg)  9113, 9114  chat
#
# The -kafka variants each start their own tansu broker (scripts/broker.sh; SQLite storage in
# .run/peers/NAME-broker/, fresh at every start; topic chat.messages, 8 partitions; port 9192 for
# ours-kafka, 9193 for nodews-kafka) and their persister, writing a PostgreSQL database of their
# own on 127.0.0.1:5432 (peers_ours_kafka, peers_nodews_kafka; dropped and created at every
# start). PG_ADMIN_URL (postgres://postgres@127.0.0.1:5432/test) is where it is created.
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
names="ours ours-single socketio sockudo nodews naive ours-kafka nodews-kafka"
pg_admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
topic=chat.messages

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
    ours-kafka) echo "8094 8095" ;;
    nodews-kafka) echo "9113 9114" ;;
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
  say "npm ci into $npm_dir (socket.io, @socket.io/redis-adapter, redis, ws, ioredis, node-rdkafka, pg)"
  cp peers/package.json peers/package-lock.json "$npm_dir/"
  # node-rdkafka compiles its bundled librdkafka (node-gyp, a few minutes): against the local
  # Node headers (node-gyp would otherwise download them), one job at a time (its configure
  # step races with a parallel make).
  local nodedir=()
  [ -f /usr/include/node/node.h ] && nodedir=(npm_config_nodedir=/usr)
  (cd "$npm_dir" && env "${nodedir[@]}" JOBS=1 npm ci --no-audit --no-fund --loglevel=error) >&2
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

install_ours_kafka() {
  install_ours
  [ -x "$target_dir/release/chat-persister" ] || {
    say "cargo build --release -p chat-persister"
    cargo build --release -p chat-persister >&2
  }
  scripts/broker.sh install >/dev/null
}

install() {
  case "$1" in
    all) local n; for n in $names; do install "$n"; done ;;
    ours | ours-single) install_ours ;;
    socketio | nodews) install_npm ;;
    ours-kafka) install_ours_kafka ;;
    nodews-kafka) install_npm; scripts/broker.sh install >/dev/null ;;
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
    ours-kafka)
      setsid "$target_dir/release/chat-server" --listen "127.0.0.1:$port" --redis "$redis_url" \
        --rate-limit 0 --kafka "127.0.0.1:$(broker_port "$name")" --kafka-topic "$topic" \
        --postgres "$(pg_url "$name")" >"$log" 2>&1 </dev/null &
      ;;
    nodews-kafka)
      NODE_PATH=$npm_dir/node_modules PORT=$port REDIS_URL=$redis_url NODE_ENV=production \
        KAFKA_BROKERS=127.0.0.1:$(broker_port "$name") KAFKA_TOPIC=$topic \
        setsid node peers/nodews-kafka/server.js >"$log" 2>&1 </dev/null &
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

is_kafka() { case "$1" in *-kafka) return 0 ;; *) return 1 ;; esac; }
broker_port() { case "$1" in ours-kafka) echo 9192 ;; nodews-kafka) echo 9193 ;; esac; }
pg_db() { echo "peers_${1//-/_}"; }
pg_url() { echo "postgres://postgres@127.0.0.1:5432/$(pg_db "$1")"; }
persister_metrics() { echo 127.0.0.1:9465; }

# A -kafka variant's broker (fresh SQLite storage), topic, database and persister; the
# persister's pid goes to NAME.persister.pid, the broker's to NAME.broker.pid.
start_kafka() { # NAME
  local name=$1 bport dir tansu pid n db
  bport=$(broker_port "$name")
  dir=$run/$name-broker
  tansu=$(scripts/broker.sh path) || die "tansu is not installed (scripts/broker.sh install)"
  listening "$bport" && die "port $bport (broker) is taken by another process"
  rm -rf "$dir"
  mkdir -p "$dir/data"
  (cd "$dir" && RUST_LOG=warn exec setsid "$tansu" broker --listener-url "tcp://127.0.0.1:$bport" \
    --advertised-listener-url "tcp://127.0.0.1:$bport" --storage-engine sqlite://data/tansu.db) \
    >"$run/$name-broker.log" 2>&1 </dev/null &
  echo $! >"$run/$name.broker.pid"
  for n in $(seq 300); do listening "$bport" && break; sleep 0.1; done
  listening "$bport" || die "$name: the broker does not listen on $bport"
  for n in $(seq 60); do
    "$tansu" topic create --broker "tcp://127.0.0.1:$bport" --partitions 8 "$topic" >/dev/null 2>&1 && break
    sleep 0.5
  done
  db=$(pg_db "$name")
  PGOPTIONS=--client-min-messages=warning psql "$pg_admin" -qAt -c "drop database if exists $db with (force)" -c "create database $db" >/dev/null ||
    die "cannot create database $db (PostgreSQL on 127.0.0.1:5432, PG_ADMIN_URL)"
  case "$name" in
    ours-kafka)
      setsid "$target_dir/release/chat-persister" --kafka "127.0.0.1:$bport" --topic "$topic" \
        --postgres "$(pg_url "$name")" --metrics-listen "$(persister_metrics "$name")" \
        >"$run/$name-persister.log" 2>&1 </dev/null &
      pid=$!
      for n in $(seq 300); do
        curl -fsS -m 2 "http://$(persister_metrics "$name")/healthz" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { tail -20 "$run/$name-persister.log" >&2; die "$name: the persister exited"; }
        sleep 0.1
      done
      ;;
    nodews-kafka)
      NODE_PATH=$npm_dir/node_modules KAFKA_BROKERS=127.0.0.1:$bport KAFKA_TOPIC=$topic \
        PG_URL=$(pg_url "$name") NODE_ENV=production \
        setsid node peers/nodews-kafka/persister.js >"$run/$name-persister.log" 2>&1 </dev/null &
      pid=$!
      for n in $(seq 300); do
        grep -q 'persister consuming' "$run/$name-persister.log" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { tail -20 "$run/$name-persister.log" >&2; die "$name: the persister exited"; }
        sleep 0.1
      done
      ;;
  esac
  echo "$pid" >"$run/$name.persister.pid"
}

start() {
  local name=$1 i=0 port pid
  ports "$name" >/dev/null
  stop "$name"
  install "$name"
  mkdir -p "$run"
  : >"$run/$name.pids"
  is_kafka "$name" && start_kafka "$name"
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
  if [ -f "$run/$name.persister.pid" ]; then
    cat "$run/$name.persister.pid" >>"$run/$name.pids"
    rm -f "$run/$name.persister.pid"
  fi
  say "$name: $(urls "$name")"
}

stop_pids() { # FILE
  local pid n
  [ -f "$1" ] || return 0
  for pid in $(cat "$1"); do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $(cat "$1"); do
    for n in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$1"
}

stop() {
  local name=$1
  stop_pids "$run/$name.pids"
  stop_pids "$run/$name.persister.pid"
  stop_pids "$run/$name.broker.pid"
}

service_pids() {
  is_kafka "$1" || die "$1 has no broker or PostgreSQL"
  [ -f "$run/$1.broker.pid" ] || die "$1 is not running"
  local pg
  pg=$(psql "$pg_admin" -qAt -c "select string_agg(pid::text, ',') from pg_stat_activity where datname = '$(pg_db "$1")'")
  echo "broker=$(cat "$run/$1.broker.pid") pg=$pg"
}

rows() {
  is_kafka "$1" || die "$1 writes no PostgreSQL"
  psql "$(pg_url "$1")" -qAt -c "select count(*) from messages"
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
  service-pids) [ $# -eq 2 ] || die "usage: $0 $1 NAME"; service_pids "$2" ;;
  rows) [ $# -eq 2 ] || die "usage: $0 $1 NAME"; rows "$2" ;;
  install | start | stop | urls | protocol | pids) [ $# -eq 2 ] || die "usage: $0 $1 NAME"; "$1" "$2" ;;
  names) echo "$names" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
