# Shared by run.sh, profile.sh, ab.sh and instructions.sh (sourced): free ports, the upstream's
# small JSON file, a plain upstream nginx, tokenproxy's bench configuration, and the
# set-up the last three share (`backends`).

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# DIR/small.json: the 378-byte answer every small request gets.
small_json() {
  python3 -c 'import json; print(json.dumps({"value": [{"id": i, "name": "item %d" % i} for i in range(12)], "next": None}))' > "$1/small.json"
}

# A one-worker nginx serving DIR on PORT, pid file PIDFILE: the upstream.
upstream_conf() {  # FILE PORT DIR PIDFILE
  cat > "$1" <<CONF
worker_processes 1;
pid $4;
error_log $1.error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  types { application/json json; }
  server { listen 127.0.0.1:$2; root $3; }
}
CONF
}

# nginx as the forward proxy tokenproxy is compared with: one worker, upstream
# keepalive to UP_PORT, the Authorization header set.
nginx_proxy_conf() {  # FILE PORT UP_PORT PIDFILE ERROR_LOG ACCESS_LOG
  cat > "$1" <<CONF
worker_processes 1;
pid $4;
error_log $5;
events { worker_connections 4096; }
http {
  access_log $6;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$3; keepalive 128; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-static-token";
    }
  }
}
CONF
}

# tokenproxy with one refresh-token source (bench/token_server.py on TS_PORT) and
# one route, prefix "/", to the upstream on UP_PORT.
tokenproxy_toml() {  # FILE PROXY_PORT ADMIN_PORT STATE_DIR TS_PORT UP_PORT
  cat > "$1" <<CONF
[listen]
proxy = "127.0.0.1:$2"
admin = "127.0.0.1:$3"
[store]
path = "$4"
[tokens.bench]
grant = "refresh_token"
token_url = "http://127.0.0.1:$5/token"
client_id = "bench"
client_secret = "bench-secret"
refresh_token = "bench-rt"
[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:$6/"
token = "bench"
CONF
}

# The set-up of ab.sh, profile.sh and instructions.sh: a scratch directory WORK
# (removed on exit, with the processes in `pids` and the upstream nginx), the
# upstream nginx serving small.json on UP and the token server on TS (both on core
# 1, both answering when this returns), and WORK/abs.lua, which makes wrk send
# absolute-form requests for the upstream's small.json. Uses NGINX.
backends() {
  WORK=$(mktemp -d)
  chmod 755 "$WORK"
  pids=()
  trap backends_cleanup EXIT
  UP=$(port); TS=$(port)
  mkdir -p "$WORK/www"
  small_json "$WORK/www"
  upstream_conf "$WORK/up.conf" "$UP" "$WORK/www" "$WORK/up.pid"
  taskset -c 1 python3 bench/token_server.py "$TS" & pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TS/count" >/dev/null && break; sleep 0.1; done
  taskset -c 1 "$NGINX" -c "$WORK/up.conf" -g 'daemon on;' -p "$WORK"
  echo "wrk.path = \"http://127.0.0.1:$UP/small.json\"" > "$WORK/abs.lua"
}

backends_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/up.pid" ] && kill "$(cat "$WORK/up.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
