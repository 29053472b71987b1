#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 and print its admin URL.
# Usage: eval "$(bash .ci/start-postgres.sh)"   -> exports ACTIVATION_TEST_POSTGRES_URL
set -euo pipefail
PORT="${PGPORT_TEST:-55432}"
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$BIN" ]; then
  echo "PostgreSQL binaries not found; install the postgresql package" >&2
  exit 1
fi
DIR="${PGDATA_TEST:-/tmp/rfm-activation-pg}"
if ! "$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" -q 2>/dev/null; then
  rm -rf "$DIR"
  mkdir -p "$DIR"
  chown postgres:postgres "$DIR" 2>/dev/null || true
  RUN=""
  if [ "$(id -u)" = "0" ]; then RUN="runuser -u postgres --"; fi
  $RUN "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
  $RUN "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
    -o "-h 127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" start >/dev/null
fi
echo "export ACTIVATION_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
