#!/usr/bin/env bash
# Starts the local Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432, trust auth, database
# `test`) when they are installed but not running. Reuses servers that already run.
set -euo pipefail

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "services: starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/chat.log
  for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -p 6379 ping >/dev/null

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "services: starting PostgreSQL on 127.0.0.1:5432"
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  if [ -z "$version" ]; then echo "services: PostgreSQL is not installed (run scripts/setup.sh)" >&2; exit 1; fi
  conf=/etc/postgresql/$version/main
  # Trust local TCP connections, as the project's machines do (test databases only).
  if ! grep -q "chat-backend" "$conf/pg_hba.conf"; then
    { echo "host all all 127.0.0.1/32 trust # chat-backend"
      echo "host all all ::1/128 trust # chat-backend"
      cat "$conf/pg_hba.conf"; } > "$conf/pg_hba.conf.new"
    mv "$conf/pg_hba.conf.new" "$conf/pg_hba.conf"
    chown postgres:postgres "$conf/pg_hba.conf" 2>/dev/null || true
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 100); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.1; done
fi
if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -c 'create database test' >/dev/null 2>&1 || \
    su postgres -c "createdb test" 2>/dev/null || true
fi
echo "services: Redis and PostgreSQL are up"
