#!/usr/bin/env bash
# A local cluster on loopback: Redis, PostgreSQL, the tansu Kafka broker and two chat-server
# nodes (plus the persister once it exists), for trying cluster mode by hand and for benchmarks.
#
#   scripts/cluster.sh up       start whatever is not running yet, wait until all is healthy
#   scripts/cluster.sh status   every component with pid, address and health (exit 1 if one is down)
#   scripts/cluster.sh down     stop what `up` started (never a shared Redis/PostgreSQL it reused)
#   scripts/cluster.sh clean    `down`, then delete .cluster/ (broker and Redis data, logs)
#
#   component   address           what `up` does
#   redis       127.0.0.1:6379    reuses the Redis that answers PING there, else starts one
#                                 (append-only file in .cluster/redis/)
#   postgres    127.0.0.1:5432    reuses it when pg_isready, else scripts/services.sh starts it
#   broker      127.0.0.1:9092    tansu (scripts/broker.sh install), SQLite storage in
#                                 .cluster/broker/ (kept by `down`), topic chat.messages, 8 partitions
#   node-8081   127.0.0.1:8081    target/release/chat-server --redis ... --kafka ... (and
#                                 --postgres ... when the persister runs)
#   node-8082   127.0.0.1:8082    the same
#   persister   127.0.0.1:9464    target/release/chat-persister (metrics, /healthz), when it exists
#
# With CLUSTER_REDIS_REPLICAS=N (N >= 1) the nodes use a Redis Cluster instead: 3 masters with
# N replicas each on ports CLUSTER_REDIS_CLUSTER_PORT.. (default 7001.., data in
# .cluster/redis-PORT/, cluster-node-timeout CLUSTER_REDIS_NODE_TIMEOUT ms, default 1500), and
# the nodes get --redis-replicas N: no seq is shown before the replicas have it, so a failover
# never gives a seq twice (server/src/bus/replication.rs). Give `status`/`down` the same value.
#
# `up` is idempotent: running components are left alone, missing ones are started. Pid files and
# logs are in .cluster/ (NAME.pid, NAME.log; a node's stdout in node-PORT.out).
#
# Environment: CLUSTER_NODES (node ports, default "8081 8082"), CLUSTER_REDIS_PORT (6379),
# CLUSTER_BROKER_PORT (9092) (give `status` the same values), CLUSTER_TOPIC (chat.messages),
# CLUSTER_PARTITIONS (8), CLUSTER_TIMEOUT (seconds to wait for each component, 60),
# CHAT_SERVER_BIN (a prebuilt chat-server: skips the build), CLUSTER_TANSU_LOG (tansu's RUST_LOG,
# default warn). Every CHAT_* variable of `chat-server --help` (CHAT_THREADS, ...) reaches the
# nodes, and RUST_LOG too.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

state=.cluster
redis_port=${CLUSTER_REDIS_PORT:-6379}
pg_port=5432
broker_port=${CLUSTER_BROKER_PORT:-9092}
broker_addr=127.0.0.1:$broker_port
redis_url=redis://127.0.0.1:$redis_port
redis_replicas=${CLUSTER_REDIS_REPLICAS:-0}
redis_cluster_port=${CLUSTER_REDIS_CLUSTER_PORT:-7001}
redis_cluster_ports=""
if [ "$redis_replicas" -gt 0 ]; then
  for i in $(seq 0 $((3 * (1 + redis_replicas) - 1))); do
    redis_cluster_ports="$redis_cluster_ports $((redis_cluster_port + i))"
  done
  redis_url=$(for p in $redis_cluster_ports; do printf 'redis://127.0.0.1:%s,' "$p"; done)
  redis_url=${redis_url%,}
fi
pg_url=postgres://postgres@127.0.0.1:$pg_port/test
persister_metrics=${CHAT_PERSISTER_METRICS_LISTEN:-127.0.0.1:9464}
topic=${CLUSTER_TOPIC:-chat.messages}
partitions=${CLUSTER_PARTITIONS:-8}
node_ports=${CLUSTER_NODES:-8081 8082}
timeout=${CLUSTER_TIMEOUT:-60}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$root/$target_dir ;; esac

say() { echo "cluster: $*"; }
die() { echo "cluster: error: $*" >&2; exit 1; }

# The last lines of a component's log, indented, on stderr.
log_tail() {
  local f
  for f in "$state/$1.log" "$state/$1.out"; do
    if [ -s "$f" ]; then
      echo "---- tail of $f" >&2
      tail -n "${2:-30}" "$f" | sed 's/^/    /' >&2
    fi
  done
}
fail() { # component message
  echo "cluster: error: $1: $2" >&2
  log_tail "$1"
  exit 1
}

# What a component's process is called, to tell ours from a reused pid.
exe_of() {
  case "$1" in
    redis | redis-*) echo redis-server ;;
    broker) echo tansu ;;
    node-*) cat "$state/$1.exe" 2>/dev/null || echo chat-server ;;
    persister) echo chat-persister ;;
    *) echo "$1" ;;
  esac
}

pid_of() { cat "$state/$1.pid" 2>/dev/null || true; }

# Whether the component `up` started is alive (pid file, live process, right executable).
running() {
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$(exe_of "$1")"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Who listens on a port, for error messages.
listener_of() {
  if command -v ss >/dev/null 2>&1; then
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -1
  fi
}

redis_ok() { [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = PONG ]; }
port_pong() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }
cluster_state_ok() {
  redis-cli -h 127.0.0.1 -p "$redis_cluster_port" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

# The Redis Cluster of CLUSTER_REDIS_REPLICAS: every node started, then created once.
redis_cluster_up() {
  local p addrs=()
  for p in $redis_cluster_ports; do
    addrs+=("127.0.0.1:$p")
    if running "redis-$p"; then continue; fi
    port_open "$p" && die "port $p is taken ($(listener_of "$p"))"
    mkdir -p "$state/redis-$p"
    start "redis-$p" "$state/redis-$p" redis-server --port "$p" --bind 127.0.0.1 \
      --dir "$root/$state/redis-$p" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout "${CLUSTER_REDIS_NODE_TIMEOUT:-1500}" --appendonly no --save "" --daemonize no
    wait_for "redis-$p" port_pong "$p"
  done
  if ! cluster_state_ok; then
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$redis_replicas" --cluster-yes >"$state/redis-cluster-create.log" 2>&1 ||
      { cat "$state/redis-cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
    wait_for "redis-$redis_cluster_port" cluster_state_ok
  fi
  say "redis: cluster of 3 masters x $redis_replicas replicas on ports$redis_cluster_ports (state ok)"
}
pg_ok() { pg_isready -h 127.0.0.1 -p "$pg_port" -q 2>/dev/null; }
health_ok() { curl -fsS -m 2 "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; }
persister_ok() { curl -fsS -m 2 "http://$persister_metrics/healthz" >/dev/null 2>&1; }

# start NAME DIR COMMAND...: runs COMMAND in DIR in its own session (so a Ctrl-C of this script
# or a closed terminal does not reach it), stdout and stderr to .cluster/NAME.log.
start() {
  local name=$1 dir=$2
  shift 2
  # 9>&-: the lock below must not outlive this script in the started process.
  (cd "$dir" && exec setsid "$@") >"$state/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$state/$name.pid"
}

# wait_for NAME CHECK...: until CHECK succeeds, or fail with NAME's log when its process exits
# or the timeout passes.
wait_for() {
  local name=$1
  shift
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    # Only "is the process there": right after `start` the child may not have exec'd yet, so
    # its command line can still be this script's.
    kill -0 "$(pid_of "$name")" 2>/dev/null || fail "$name" "exited during startup"
    [ "$SECONDS" -lt "$deadline" ] || fail "$name" "not ready after ${timeout}s"
    sleep 0.1
  done
}

# stop NAME...: SIGTERM to each, SIGKILL to those still alive after the grace period (nodes
# drain for --drain-grace first), remove the pid files. In parallel: one grace period in all.
stop() {
  local name pid grace=${STOP_GRACE:-15} pids=() names=()
  for name in "$@"; do
    if running "$name"; then
      pid=$(pid_of "$name")
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$name")
    fi
    rm -f "$state/$name.pid"
  done
  local deadline=$((SECONDS + grace)) i
  for i in "${!pids[@]}"; do
    while kill -0 "${pids[$i]}" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      say "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM for ${grace}s; killing it"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
    say "stopped ${names[$i]} (pid ${pids[$i]})"
  done
}

tansu_bin() { scripts/broker.sh path 2>/dev/null; }
topic_exists() {
  "$1" topic list --broker "tcp://$broker_addr" 2>/dev/null | grep -q "\"name\":\"$topic\""
}

node_names() {
  local p names=""
  for p in $node_ports; do names="$names node-$p"; done
  # Nodes of an earlier `up` with other CLUSTER_NODES.
  for p in "$state"/node-*.pid; do
    [ -e "$p" ] || continue
    p=$(basename "$p" .pid)
    case " $names " in *" $p "*) ;; *) names="$names $p" ;; esac
  done
  echo "$names"
}

# ------------------------------------------------------------------------------------------
up() {
  local t0=$SECONDS
  command -v redis-server >/dev/null && command -v pg_isready >/dev/null && command -v curl >/dev/null ||
    die "redis-server, pg_isready and curl are needed (run scripts/setup.sh)"
  command -v setsid >/dev/null || die "setsid (util-linux) is needed"

  # Build first: a failed build starts nothing.
  local server_bin=${CHAT_SERVER_BIN:-}
  local persister_bin=$target_dir/release/chat-persister
  if [ -z "$server_bin" ]; then
    # One cargo invocation for all binaries: building them one by one unifies features
    # differently and rebuilds shared dependencies each time.
    say "cargo build --release -p chat-server -p chat-persister -p loadgen"
    cargo build --release -p chat-server -p chat-persister -p loadgen || die "build failed"
    server_bin=$target_dir/release/chat-server
  fi
  [ -x "$server_bin" ] || die "$server_bin is missing"
  "$server_bin" --help 2>/dev/null | grep -q -- '--kafka' ||
    die "$server_bin has no --redis/--kafka flags: cluster mode is not built into it"

  mkdir -p "$state"

  # Redis
  if [ "$redis_replicas" -gt 0 ]; then
    redis_cluster_up
  elif running redis; then
    say "redis: already running (pid $(pid_of redis), $redis_url)"
  elif redis_ok; then
    rm -f "$state/redis.pid"
    touch "$state/redis.reused"
    say "redis: reusing the one on $redis_url"
  else
    port_open "$redis_port" && die "port $redis_port is taken by something that is not Redis ($(listener_of "$redis_port"))"
    rm -f "$state/redis.reused"
    mkdir -p "$state/redis"
    start redis "$state/redis" redis-server --port "$redis_port" --bind 127.0.0.1 \
      --dir "$root/$state/redis" --appendonly yes --appendfsync everysec --save "" --daemonize no
    wait_for redis redis_ok
    say "redis: started (pid $(pid_of redis), $redis_url, data in $state/redis)"
  fi

  # PostgreSQL (the persister writes it; the nodes read history past the Redis cache from it)
  if pg_ok; then
    if [ -f "$state/postgres.started" ]; then say "postgres: already running"; else
      say "postgres: reusing the one on 127.0.0.1:$pg_port"
    fi
  else
    say "postgres: starting it with scripts/services.sh"
    scripts/services.sh >/dev/null 9>&-
    pg_ok || die "PostgreSQL did not come up on 127.0.0.1:$pg_port"
    ls /etc/postgresql 2>/dev/null | sort -V | tail -1 >"$state/postgres.started"
  fi

  # Kafka (tansu)
  local tansu
  if ! tansu=$(tansu_bin); then
    say "broker: tansu is not installed; installing it (the first time compiles it, ~20 min)"
    tansu=$(scripts/broker.sh install) || die "could not install tansu"
  fi
  if running broker; then
    say "broker: already running (pid $(pid_of broker), $broker_addr)"
  else
    port_open "$broker_port" && die "port $broker_port is taken by another process ($(listener_of "$broker_port"))"
    mkdir -p "$state/broker/data"
    # tansu resolves sqlite://HOST/PATH relative to its working directory.
    RUST_LOG=${CLUSTER_TANSU_LOG:-warn} start broker "$state/broker" "$tansu" broker \
      --listener-url "tcp://$broker_addr" --advertised-listener-url "tcp://$broker_addr" \
      --storage-engine sqlite://data/tansu.db
    wait_for broker port_open "$broker_port"
    say "broker: started (pid $(pid_of broker), $broker_addr, data in $state/broker/data)"
  fi
  if topic_exists "$tansu"; then
    say "broker: topic $topic exists"
  else
    local deadline=$((SECONDS + timeout)) out
    until out=$("$tansu" topic create --broker "tcp://$broker_addr" --partitions "$partitions" "$topic" 2>&1) ||
      topic_exists "$tansu"; do
      [ "$SECONDS" -lt "$deadline" ] || { echo "$out" >&2; fail broker "cannot create topic $topic"; }
      sleep 0.5
    done
    say "broker: created topic $topic ($partitions partitions)"
    # A new topic starts at offset 0 in every partition: offsets the persister stored for an
    # earlier topic of the same name (an earlier broker's data) would make it skip records.
    if psql "$pg_url" -qAtc "select to_regclass('persister_offsets')" 2>/dev/null | grep -q persister_offsets; then
      psql "$pg_url" -qAtc "delete from persister_offsets where topic = '$topic'" >/dev/null &&
        say "persister: forgot stored offsets of the previous $topic"
    fi
  fi

  # ---- PERSISTER (a later issue) ---------------------------------------------------------
  # chat-persister consumes the topic and writes PostgreSQL (binary COPY). It starts here when
  # its binary exists; until then this block does nothing. Ready = 200 from /healthz on its
  # metrics address (CHAT_PERSISTER_METRICS_LISTEN, default 127.0.0.1:9464). With it running,
  # the nodes get --postgres too (history and resume past the Redis cache).
  if running persister; then
    say "persister: already running (pid $(pid_of persister))"
  elif [ -n "$persister_bin" ] && [ -x "$persister_bin" ]; then
    port_open "${persister_metrics##*:}" &&
      die "port ${persister_metrics##*:} (persister metrics) is taken ($(listener_of "${persister_metrics##*:}"))"
    start persister "$root" "$persister_bin" --kafka "$broker_addr" --topic "$topic" \
      --postgres "$pg_url" --metrics-listen "$persister_metrics"
    wait_for persister persister_ok
    say "persister: started (pid $(pid_of persister), metrics http://$persister_metrics/metrics)"
  fi
  # ---- end PERSISTER ---------------------------------------------------------------------
  local node_pg=()
  if running persister; then node_pg=(--postgres "$pg_url"); fi

  # chat-server nodes: start the missing ones, then wait for all.
  local p name started=()
  for p in $node_ports; do
    running "node-$p" || ! port_open "$p" || die "port $p is taken by another process ($(listener_of "$p"))"
  done
  for p in $node_ports; do
    name=node-$p
    if running "$name"; then
      say "$name: already running (pid $(pid_of "$name"), http://127.0.0.1:$p/)"
      continue
    fi
    (cd "$root" && exec setsid "$server_bin" --listen "127.0.0.1:$p" --redis "$redis_url" \
      --redis-replicas "$redis_replicas" \
      --kafka "$broker_addr" --kafka-topic "$topic" "${node_pg[@]}") \
      >"$state/$name.out" 2>"$state/$name.log" </dev/null 9>&- &
    echo $! >"$state/$name.pid"
    # What `running` (and so `down`) looks for in its command line: CHAT_SERVER_BIN may name
    # a binary called something else.
    basename "$server_bin" >"$state/$name.exe"
    started+=("$name")
  done
  for name in "${started[@]}"; do
    p=${name#node-}
    wait_for "$name" health_ok "$p"
    say "$name: started (pid $(pid_of "$name"), http://127.0.0.1:$p/)"
  done

  say "up in $((SECONDS - t0)) s"
  echo
  for p in $node_ports; do
    echo "  chat page: http://127.0.0.1:$p/    websocket: ws://127.0.0.1:$p/ws?user=<name>"
  done
  echo "  status: scripts/cluster.sh status    stop: scripts/cluster.sh down    logs: $state/"
}

# ------------------------------------------------------------------------------------------
status() {
  local bad=0 pid who health name p tansu
  row() { printf '%-11s %-8s %-17s %s\n' "$@"; }
  row component pid address health

  if [ "$redis_replicas" -gt 0 ]; then
    for p in $redis_cluster_ports; do
      if running "redis-$p"; then who=$(pid_of "redis-$p"); else who=-; fi
      if port_pong "$p"; then
        health="ok ($(redis-cli -p "$p" info replication 2>/dev/null | sed -n 's/^role:\(.*\)\r$/\1/p'))"
      else health=DOWN; bad=1
      fi
      row "redis-$p" "$who" "127.0.0.1:$p" "$health"
    done
  else
    if running redis; then who=$(pid_of redis); elif [ -f "$state/redis.reused" ]; then who=shared; else who=-; fi
    if redis_ok; then health="ok (PING)"; else health=DOWN; bad=1; fi
    row redis "$who" "127.0.0.1:$redis_port" "$health"
  fi

  if [ -f "$state/postgres.started" ]; then who=ours; else who=shared; fi
  if pg_ok; then health="ok (pg_isready)"; else health=DOWN; bad=1; fi
  row postgres "$who" "127.0.0.1:$pg_port" "$health"

  if running broker; then who=$(pid_of broker); else who=-; fi
  if ! port_open "$broker_port"; then health=DOWN; bad=1
  elif tansu=$(tansu_bin) && topic_exists "$tansu"; then health="ok (topic $topic)"
  else health="up, topic $topic missing"; bad=1
  fi
  row broker "$who" "$broker_addr" "$health"

  for name in $(node_names); do
    p=${name#node-}
    if running "$name"; then who=$(pid_of "$name"); else who=-; fi
    if health_ok "$p"; then health="ok (/healthz)"
    elif port_open "$p"; then health="UNHEALTHY (/healthz not 200)"; bad=1
    else health=DOWN; bad=1
    fi
    row "$name" "$who" "127.0.0.1:$p" "$health"
  done

  if running persister || [ -f "$state/persister.pid" ]; then
    if running persister; then who=$(pid_of persister); else who=-; fi
    if persister_ok; then health="ok (/healthz)"; else health=DOWN; bad=1; fi
    row persister "$who" "$persister_metrics" "$health"
  elif [ -x "$target_dir/release/chat-persister" ]; then
    row persister - "$persister_metrics" DOWN
    bad=1
  else
    row persister - - "not built (no target/release/chat-persister)"
  fi
  return "$bad"
}

# ------------------------------------------------------------------------------------------
down() {
  # Nodes and persister first (they flush to the broker), then the broker, then Redis.
  stop persister $(node_names)
  stop broker
  if [ -f "$state/redis.reused" ]; then say "redis: leaving the shared one running"; fi
  stop redis
  rm -f "$state/redis.reused"
  local p
  for p in $redis_cluster_ports; do stop "redis-$p"; done
  if [ -f "$state/postgres.started" ]; then
    local version
    version=$(cat "$state/postgres.started")
    if [ -n "$version" ] && pg_ok; then
      pg_ctlcluster --skip-systemctl-redirect "$version" main stop && say "stopped postgres ($version/main)"
    fi
    rm -f "$state/postgres.started"
  else
    say "postgres: leaving the shared one running"
  fi
  say "down"
}

cmd=${1:-}
case "$cmd" in
  up | down | status | clean) ;;
  *) echo "usage: $0 up|down|status|clean" >&2; exit 2 ;;
esac
if [ "$cmd" = status ]; then status; exit; fi # read-only: no lock
mkdir -p "$state"
# One invocation at a time (two `up`s at once would start everything twice). Every process
# started here gets fd 9 closed (9>&-), or it would hold the lock after the script exits.
exec 9>"$state/.lock"
flock -w 600 9 || die "another scripts/cluster.sh is still running"
case "$cmd" in
  up) up ;;
  down) down ;;
  clean) down; rm -rf "$state"; say "removed $state/" ;;
esac
