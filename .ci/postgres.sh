# Sourced by .ci/run: start and stop a throw-away PostgreSQL cluster for the tests.
# Exports HPO_TEST_POSTGRES_URL (role hpo, which owns the database and creates the
# schema), HPO_TEST_POSTGRES_WORKER_URL (role hpo_worker, with only the privileges the
# README's "Many machines" section grants a worker) and HPO_TEST_PG_CTL (a command prefix
# for pg_ctl: the tests restart the server with it). Runs as root (the server then runs
# as user postgres) or as any other user (the server runs as that user).
pg_start() {
  local bin as_pg=""
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] || { [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; }; then
    echo "PostgreSQL is not installed: PostgreSQL tests will skip" >&2
    return 0
  fi
  PG_DIR=$(mktemp -d /tmp/hpo-pg.XXXXXX)
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$PG_DIR"
    as_pg="runuser -u postgres --"
  fi
  PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  $as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres -A trust >/dev/null
  PG_CTL="$as_pg $bin/pg_ctl -D $PG_DIR/data -l $PG_DIR/log -w -o '-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=100'"
  eval "$PG_CTL start" >/dev/null
  local psql="$as_pg $bin/psql -h 127.0.0.1 -p $PG_PORT -U postgres -v ON_ERROR_STOP=1 -q"
  $psql -c "CREATE ROLE hpo LOGIN PASSWORD 'hpo-ci-only'" \
        -c "CREATE ROLE hpo_worker LOGIN PASSWORD 'hpo-worker-ci-only'" \
        -c "CREATE DATABASE hpo OWNER hpo" >/dev/null
  # The least-privileged worker role, exactly as the README's "Many machines" shows it.
  $psql -d hpo \
        -c "REVOKE ALL ON DATABASE hpo FROM PUBLIC" \
        -c "REVOKE CREATE ON SCHEMA public FROM PUBLIC" \
        -c "GRANT CONNECT ON DATABASE hpo TO hpo_worker" \
        -c "GRANT USAGE ON SCHEMA public TO hpo_worker" \
        -c "ALTER DEFAULT PRIVILEGES FOR ROLE hpo IN SCHEMA public GRANT SELECT, INSERT, UPDATE ON TABLES TO hpo_worker" \
        -c "ALTER DEFAULT PRIVILEGES FOR ROLE hpo IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO hpo_worker" >/dev/null
  export HPO_TEST_POSTGRES_URL="postgresql+psycopg://hpo:hpo-ci-only@127.0.0.1:$PG_PORT/hpo"
  export HPO_TEST_POSTGRES_WORKER_URL="postgresql+psycopg://hpo_worker:hpo-worker-ci-only@127.0.0.1:$PG_PORT/hpo"
  export HPO_TEST_PG_CTL="$PG_CTL"
  echo "PostgreSQL test cluster on 127.0.0.1:$PG_PORT" >&2
}

pg_stop() {
  if [ -n "${PG_CTL:-}" ]; then
    eval "$PG_CTL stop -m immediate" >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
