# Sourced by .ci/run: start and stop a throw-away PostgreSQL cluster for the tests.
# Exports HPO_TEST_POSTGRES_URL and HPO_TEST_PG_CTL (the tests restart the server with it).
pg_start() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] || ! id postgres >/dev/null 2>&1; then
    echo "PostgreSQL is not installed: PostgreSQL tests will skip" >&2
    return 0
  fi
  PG_DIR=$(mktemp -d /tmp/hpo-pg.XXXXXX)
  chown postgres: "$PG_DIR"
  PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local as_pg="runuser -u postgres --"
  $as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres -A trust >/dev/null
  PG_CTL="$as_pg $bin/pg_ctl -D $PG_DIR/data -l $PG_DIR/log -w -o '-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=100'"
  eval "$PG_CTL start" >/dev/null
  $as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE ROLE hpo LOGIN PASSWORD 'hpo-ci-only'" >/dev/null
  $as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE hpo OWNER hpo" >/dev/null
  export HPO_TEST_POSTGRES_URL="postgresql+psycopg://hpo:hpo-ci-only@127.0.0.1:$PG_PORT/hpo"
  export HPO_TEST_PG_CTL="$PG_CTL"
  echo "PostgreSQL test cluster on 127.0.0.1:$PG_PORT" >&2
}

pg_stop() {
  if [ -n "${PG_CTL:-}" ]; then
    eval "$PG_CTL stop -m immediate" >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
