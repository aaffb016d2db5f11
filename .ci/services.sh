# Starts the servers the shared-store tests use, on 127.0.0.1 on free ports, in
# throwaway directories, and exports their URLs. Source it:
#
#   . .ci/services.sh      # then: cargo bench --bench shared_store
#
# (`cargo test` starts servers of its own where none is exported: tests/support/harness.rs.)
#
# PostgreSQL (Debian's `postgresql` package) runs as the unprivileged `postgres`
# user, which the package creates. Redis (`redis-server`) runs as `nobody`, with
# its append-only log synced at every write, as tokenproxy asks of a production
# server. Installs what is missing. The servers stop
# when the shell that sourced this exits (trap) or with `tokenproxy_services_stop`.

tokenproxy_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

tokenproxy_services_start() {
  local need=()
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v runuser >/dev/null 2>&1 || need+=(util-linux)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  local bin
  bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
  TOKENPROXY_PG_DIR=$(mktemp -d /tmp/tokenproxy-pg.XXXXXX)
  chown postgres: "$TOKENPROXY_PG_DIR"
  local port
  port=$(tokenproxy_free_port)
  runuser -u postgres -- "$bin/initdb" -D "$TOKENPROXY_PG_DIR/data" -U postgres \
    --auth=trust -E UTF8 >/dev/null
  runuser -u postgres -- "$bin/pg_ctl" -D "$TOKENPROXY_PG_DIR/data" -l "$TOKENPROXY_PG_DIR/log" \
    -o "-p $port -k $TOKENPROXY_PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" \
    -w start >/dev/null
  export TOKENPROXY_PG_BIN="$bin"
  export TOKENPROXY_PG_DIR
  export TOKENPROXY_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "postgres on 127.0.0.1:$port (data in $TOKENPROXY_PG_DIR)"

  TOKENPROXY_REDIS_DIR=$(mktemp -d /tmp/tokenproxy-redis.XXXXXX)
  chown nobody: "$TOKENPROXY_REDIS_DIR"
  port=$(tokenproxy_free_port)
  runuser -u nobody -- redis-server --bind 127.0.0.1 --port "$port" --dir "$TOKENPROXY_REDIS_DIR" \
    --appendonly yes --appendfsync always --save '' --daemonize yes \
    --pidfile "$TOKENPROXY_REDIS_DIR/pid" --logfile "$TOKENPROXY_REDIS_DIR/log" >/dev/null
  local i
  for i in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  export TOKENPROXY_REDIS_DIR
  export TOKENPROXY_TEST_REDIS_URL="redis://127.0.0.1:$port"
  echo "redis on 127.0.0.1:$port (data in $TOKENPROXY_REDIS_DIR)"
}

tokenproxy_services_stop() {
  if [ -n "${TOKENPROXY_PG_DIR:-}" ] && [ -d "$TOKENPROXY_PG_DIR/data" ]; then
    runuser -u postgres -- "$TOKENPROXY_PG_BIN/pg_ctl" -D "$TOKENPROXY_PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$TOKENPROXY_PG_DIR"
  fi
  if [ -n "${TOKENPROXY_REDIS_DIR:-}" ] && [ -f "$TOKENPROXY_REDIS_DIR/pid" ]; then
    local pid i
    pid=$(cat "$TOKENPROXY_REDIS_DIR/pid")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    rm -rf "$TOKENPROXY_REDIS_DIR"
  fi
}

tokenproxy_services_start
trap tokenproxy_services_stop EXIT
