#!/usr/bin/env bash
# tokenproxy against nginx doing the same job (a reverse proxy adding a static
# Authorization header, upstream keepalive), on loopback, in one run, one table.
#
#   bash bench/run.sh [SECONDS]      # default 10 s per load run
#
# CPU pinning on this 2-core machine: both proxies run on core 0 with one worker
# (nginx worker_processes 1, tokenproxy TOKIO_WORKER_THREADS=1); the upstream
# nginx and wrk share core 1. Both proxies log one line per request (nginx's
# access log buffered, tokenproxy's log on stderr to a file). Installs nginx, wrk
# and curl if missing. Writes the table to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"

missing=()
for tool in nginx:nginx wrk:wrk curl:curl taskset:util-linux python3:python3; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet
BIN="$PWD/target/release/tokenproxy"
WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/up.pid" ] && kill "$(cat "$WORK/up.pid")" 2>/dev/null || true
  [ -f "$WORK/px.pid" ] && kill "$(cat "$WORK/px.pid")" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); PX=$(port); TP=$(port); AD=$(port); TS=$(port)

mkdir -p "$WORK/www" "$WORK/logs"
chmod 755 "$WORK"   # nginx workers run as an unprivileged user
python3 -c 'import json; print(json.dumps({"value": [{"id": i, "name": "item %d" % i} for i in range(12)], "next": None}))' > "$WORK/www/small.json"
head -c $((256 << 20)) /dev/zero > "$WORK/www/large.bin"
truncate -s 1G "$WORK/www/huge.bin"

cat > "$WORK/up.conf" <<CONF
worker_processes 1;
pid $WORK/up.pid;
error_log $WORK/logs/up-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  types { application/json json; application/octet-stream bin; }
  server { listen 127.0.0.1:$UP; root $WORK/www; }
}
CONF
cat > "$WORK/px.conf" <<CONF
worker_processes 1;
pid $WORK/px.pid;
error_log $WORK/logs/px-error.log;
events { worker_connections 4096; }
http {
  access_log $WORK/logs/px-access.log combined buffer=64k;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$PX;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-static-token";
    }
  }
}
CONF
cat > "$WORK/tp.toml" <<CONF
[listen]
proxy = "127.0.0.1:$TP"
admin = "127.0.0.1:$AD"
[store]
path = "$WORK/state"
[tokens.bench]
grant = "refresh_token"
token_url = "http://127.0.0.1:$TS/token"
client_id = "bench"
client_secret = "bench-secret"
refresh_token = "bench-rt"
[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:$UP/"
token = "bench"
CONF

taskset -c 1 python3 bench/token_server.py "$TS" & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TS/count" >/dev/null && break; sleep 0.1; done
taskset -c 1 "$NGINX" -c "$WORK/up.conf" -g 'daemon on;' -p "$WORK"
taskset -c 0 "$NGINX" -c "$WORK/px.conf" -g 'daemon on;' -p "$WORK"
TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" run -c "$WORK/tp.toml" 2> "$WORK/logs/tp.log" & TP_PID=$!; pids+=($TP_PID)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TP/small.json" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$PX/small.json" >/dev/null
NGINX_WORKER=$(pgrep -P "$(cat "$WORK/px.pid")" | head -1)

# wrk's latency (to µs) and rate: "rps p50 p99 non2xx"
load() {
  local url=$1 conns=$2
  taskset -c 1 wrk -t1 -c"$conns" -d"${DUR}s" --latency "$url" | awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return v*1000; if (v ~ /s$/) return v*1000000; return v }
    /^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) }
    /Requests\/sec/ { rps = $2 } /Non-2xx/ { bad = $NF }
    END { printf "%.0f %.0f %.0f %d\n", rps, p50, p99, bad }'
}
# MB/s of one download of the 256 MiB file.
download() { taskset -c 1 curl -s -o /dev/null -w '%{speed_download}' "$1" | awk '{ printf "%.0f", $1 / 1048576 }'; }
hwm() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
rss() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }

declare -A R
for target in direct:$UP nginx:$PX tokenproxy:$TP; do
  name=${target%%:*}; p=${target##*:}
  load "http://127.0.0.1:$p/small.json" 4 >/dev/null   # warm the pools
  read -r R[$name,rps1] R[$name,p50_1] R[$name,p99_1] R[$name,bad1] < <(load "http://127.0.0.1:$p/small.json" 1)
  read -r R[$name,rps64] R[$name,p50_64] R[$name,p99_64] R[$name,bad64] < <(load "http://127.0.0.1:$p/small.json" 64)
  R[$name,mbs]=$(download "http://127.0.0.1:$p/large.bin")
done
R[nginx,rss]=$(hwm "$NGINX_WORKER"); R[tokenproxy,rss]=$(hwm "$TP_PID")

# RSS during a 1 GiB download through tokenproxy: sampled every 100 ms.
before=$(rss "$TP_PID"); peak=$before
taskset -c 1 curl -s -o /dev/null "http://127.0.0.1:$TP/huge.bin" & C=$!
while kill -0 "$C" 2>/dev/null; do r=$(rss "$TP_PID"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.1; done
GROWTH=$(( (peak - before) / 1024 ))

# A forced refresh under 64 connections: one token request, no error.
issued_before=$(curl -s "http://127.0.0.1:$TS/count")
( sleep $(( DUR / 2 )); curl -s -X POST "http://127.0.0.1:$AD/tokens/bench/refresh" >/dev/null ) & FORCE=$!
read -r RF_RPS RF_P50 RF_P99 RF_BAD < <(load "http://127.0.0.1:$TP/small.json" 64)
wait "$FORCE"
REFRESHES=$(( $(curl -s "http://127.0.0.1:$TS/count") - issued_before ))

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a - b }'; }
cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
{
  echo "# tokenproxy vs nginx"
  echo
  echo "Run on $(date -u +%Y-%m-%d), $(nproc) cores ($cpu), $(uname -sr), nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), ${DUR} s per load run, \`bash bench/run.sh $DUR\`."
  echo "Both proxies on core 0 with one worker; upstream nginx and wrk on core 1; small JSON body ($(stat -c %s "$WORK/www/small.json") bytes); 256 MiB file for throughput."
  echo
  echo "| | direct | nginx | tokenproxy | tokenproxy / nginx |"
  echo "|---|---|---|---|---|"
  echo "| requests/s, 1 connection | ${R[direct,rps1]} | ${R[nginx,rps1]} | ${R[tokenproxy,rps1]} | $(ratio "${R[tokenproxy,rps1]}" "${R[nginx,rps1]}") |"
  echo "| requests/s, 64 connections | ${R[direct,rps64]} | ${R[nginx,rps64]} | ${R[tokenproxy,rps64]} | $(ratio "${R[tokenproxy,rps64]}" "${R[nginx,rps64]}") |"
  echo "| p50 / p99 latency, 1 connection (µs) | ${R[direct,p50_1]} / ${R[direct,p99_1]} | ${R[nginx,p50_1]} / ${R[nginx,p99_1]} | ${R[tokenproxy,p50_1]} / ${R[tokenproxy,p99_1]} | $(ratio "${R[tokenproxy,p50_1]}" "${R[nginx,p50_1]}") (p50) |"
  echo "| p50 / p99 latency, 64 connections (µs) | ${R[direct,p50_64]} / ${R[direct,p99_64]} | ${R[nginx,p50_64]} / ${R[nginx,p99_64]} | ${R[tokenproxy,p50_64]} / ${R[tokenproxy,p99_64]} | $(ratio "${R[tokenproxy,p99_64]}" "${R[nginx,p99_64]}") (p99) |"
  echo "| added p50 latency over direct, 1 connection (µs) | - | $(added "${R[nginx,p50_1]}" "${R[direct,p50_1]}") | $(added "${R[tokenproxy,p50_1]}" "${R[direct,p50_1]}") | |"
  echo "| large file, MB/s | ${R[direct,mbs]} | ${R[nginx,mbs]} | ${R[tokenproxy,mbs]} | $(ratio "${R[tokenproxy,mbs]}" "${R[nginx,mbs]}") |"
  echo "| peak RSS (MiB) | - | ${R[nginx,rss]} (worker) | ${R[tokenproxy,rss]} | $(ratio "${R[tokenproxy,rss]}" "${R[nginx,rss]}") |"
  echo "| non-2xx answers | ${R[direct,bad64]} | ${R[nginx,bad1]}+${R[nginx,bad64]} | ${R[tokenproxy,bad1]}+${R[tokenproxy,bad64]} | |"
  echo
  echo "- RSS growth of tokenproxy during a 1 GiB download: ${GROWTH} MiB."
  echo "- A forced refresh during a ${DUR} s run at 64 connections: ${REFRESHES} token request(s), ${RF_BAD} non-2xx answers, ${RF_RPS} requests/s, p99 ${RF_P99} µs."
  cat bench/notes.md
} | tee bench/RESULTS.md.new
mv bench/RESULTS.md.new bench/RESULTS.md
