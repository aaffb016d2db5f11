#!/usr/bin/env bash
# tokenproxy against nginx doing the same job (adding `Authorization: Bearer …` to
# requests for an upstream, keep-alive to it), with the proxy as the bottleneck.
#
#   bash bench/run.sh [SECONDS] [REPEATS]      # default 10 s per run, 3 rounds, medians
#
# Method (what makes the proxy the bottleneck, and how we know):
# - The proxy under test runs alone on core 0 with one worker (nginx
#   worker_processes 1; tokenproxy TOKIO_WORKER_THREADS=1). The upstream (nginx,
#   static file) and the load generator (wrk -t2) share core 1.
# - Both proxies saturated: core 1 cannot push nginx's worker past ~80 % of core 0,
#   and a proxy below saturation batches less per wake-up and pays more CPU per
#   request (which flattered tokenproxy). So in the 64-connection rows every proxy
#   runs in a CPU cgroup capped at QUOTA % of a core (default 40, in 10 ms periods),
#   less than core 1 can feed either: each is then ~100 % busy of its quota, and
#   CPU per request compares two saturated proxies. The table shows how busy each
#   was of its quota; the 1-connection row, the download and the refresh run uncapped.
# - Requests are absolute-form (`GET http://host/path HTTP/1.1`), what an
#   HTTP_PROXY client sends; the same bytes go to every column.
# - For each run, the proxy's CPU time is read from /proc/PID/stat (utime + stime)
#   before and after: CPU µs per request = CPU time / requests served, the figure
#   least disturbed by other work on a shared machine; "proxy core busy" is CPU time
#   over wall time. A proxy whose core is ~100 % busy is the bottleneck; the direct
#   column (wrk to the upstream, no proxy) shows what the upstream and client could
#   carry without one.
# - The columns of a row run interleaved, round by round (nginx, tokenproxy,
#   nginx, ...): this VM's speed drifts by ±10 % over minutes, and a slow spell
#   then falls on both columns of a round rather than on one column's runs. Each
#   cell is the median run by requests/s; the "same round" rows are the median of
#   the per-round ratios of CPU per request, the figure drift moves least.
# - Runs where other processes used more than 25 % of a core are repeated (twice at
#   most) and counted.
# - Rows: 64 connections with request logs off (nginx `access_log off`, tokenproxy
#   RUST_LOG=warn) and on (nginx's buffered access log, tokenproxy's `info` line);
#   1 connection with wrk on core 0 beside the proxy (latency without cross-core
#   wake-ups); a 256 MiB download (CPU per GiB); peak RSS; RSS over a 1 GiB
#   download; a forced refresh under 64 connections; and 64 connections against
#   a TLS upstream (nginx serving the same file over TLS 1.3; nginx proxying with
#   proxy_ssl, certificate verification, session reuse and upstream keepalive;
#   tokenproxy with the upstream's CA in [tls] ca_file), where pooling amortises
#   the handshakes.
#
# Installs nginx, wrk and curl if missing. Writes bench/RESULTS.md's first part.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"
REPEATS="${2:-3}"
MAX_OTHER=25
QUOTA="${QUOTA:-40}"

missing=()
for tool in nginx:nginx wrk:wrk curl:curl taskset:util-linux python3:python3 openssl:openssl; do
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
# The CPU cgroup that caps the proxies under test (cgroup v2, or v1's cpu controller).
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  CG_ROOT=/sys/fs/cgroup
  echo +cpu > "$CG_ROOT/cgroup.subtree_control" 2>/dev/null || true
  CG="$CG_ROOT/tokenproxy-bench"; mkdir -p "$CG"
  echo "$((QUOTA * 100)) 10000" > "$CG/cpu.max"
elif [ -d /sys/fs/cgroup/cpu ]; then
  CG_ROOT=/sys/fs/cgroup/cpu
  CG="$CG_ROOT/tokenproxy-bench"; mkdir -p "$CG"
  echo 10000 > "$CG/cpu.cfs_period_us"
  echo $((QUOTA * 100)) > "$CG/cpu.cfs_quota_us"
else
  echo "no CPU cgroup to cap the proxies with: run as root on Linux" >&2; exit 1
fi
# Moves the proxies under test (every thread) into the capped cgroup, or back.
capped() { local p; for p in $PROXY_PIDS; do echo "$p" > "$CG/cgroup.procs"; done; }
uncapped() { local p; for p in $PROXY_PIDS; do echo "$p" > "$CG_ROOT/cgroup.procs" 2>/dev/null || true; done; }
PROXY_PIDS=""
cleanup() {
  uncapped
  rmdir "$CG" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in up px pxlog pxtls; do
    [ -f "$WORK/$f.pid" ] && kill "$(cat "$WORK/$f.pid")" 2>/dev/null || true
  done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

. bench/lib.sh
UP=$(port); PX=$(port); PXLOG=$(port); TP=$(port); TPLOG=$(port); AD=$(port); ADLOG=$(port); TS=$(port)
UPS=$(port); PXTLS=$(port); TPTLS=$(port); ADTLS=$(port)

mkdir -p "$WORK/www" "$WORK/logs"
chmod 755 "$WORK"   # nginx workers run as an unprivileged user
small_json "$WORK/www"
head -c $((256 << 20)) /dev/zero > "$WORK/www/large.bin"
truncate -s 1G "$WORK/www/huge.bin"

# The TLS upstream's certificate (for localhost) from a CA of its own, which both
# proxies trust (ca.pem) and verify the upstream against.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$WORK/up.key" -out "$WORK/up.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n' > "$WORK/up.ext"
openssl x509 -req -in "$WORK/up.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
  -days 2 -extfile "$WORK/up.ext" -out "$WORK/up.pem" 2>/dev/null
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
  server {
    listen 127.0.0.1:$UP;
    root $WORK/www;
    # A proxy that forgot the token gets 401 (and shows in the non-2xx row).
    if (\$http_authorization !~ "^Bearer ") { return 401; }
  }
  server {
    listen 127.0.0.1:$UPS ssl;
    ssl_certificate $WORK/up.pem;
    ssl_certificate_key $WORK/up.key;
    ssl_protocols TLSv1.3;
    root $WORK/www;
    if (\$http_authorization !~ "^Bearer ") { return 401; }
  }
}
CONF
# nginx as the forward proxy: one worker, upstream keepalive, the header set.
nginx_proxy() {  # NAME PORT ACCESS_LOG
  nginx_proxy_conf "$WORK/$1.conf" "$2" "$UP" "$WORK/$1.pid" "$WORK/logs/$1-error.log" "$3"
}
nginx_proxy px "$PX" off
nginx_proxy pxlog "$PXLOG" "$WORK/logs/px-access.log combined buffer=64k"
cat > "$WORK/pxtls.conf" <<CONF
worker_processes 1;
pid $WORK/pxtls.pid;
error_log $WORK/logs/pxtls-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream upt { server 127.0.0.1:$UPS; keepalive 128; }
  server {
    listen 127.0.0.1:$PXTLS;
    location / {
      proxy_pass https://upt;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-static-token";
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $WORK/ca.pem;
      proxy_ssl_session_reuse on;
      proxy_ssl_protocols TLSv1.3;
    }
  }
}
CONF
tokenproxy_config() {  # NAME PORT ADMIN
  tokenproxy_toml "$WORK/$1.toml" "$2" "$3" "$WORK/state-$1" "$TS" "$UP"
}
tokenproxy_config tp "$TP" "$AD"
tokenproxy_config tplog "$TPLOG" "$ADLOG"
# The TLS upstream: the same absolute-form requests (for host 127.0.0.1:UP) go to
# https://localhost:UPS, verified against its certificate.
tokenproxy_config tptls "$TPTLS" "$ADTLS"
sed -i "s|^upstream = .*|upstream = \"https://localhost:$UPS/\"\nhost = \"127.0.0.1:$UP\"|; 1i [tls]\nca_file = \"$WORK/ca.pem\"" "$WORK/tptls.toml"

taskset -c 1 python3 bench/token_server.py "$TS" & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TS/count" >/dev/null && break; sleep 0.1; done
taskset -c 1 "$NGINX" -c "$WORK/up.conf" -g 'daemon on;' -p "$WORK"
taskset -c 0 "$NGINX" -c "$WORK/px.conf" -g 'daemon on;' -p "$WORK"
taskset -c 0 "$NGINX" -c "$WORK/pxlog.conf" -g 'daemon on;' -p "$WORK"
taskset -c 0 "$NGINX" -c "$WORK/pxtls.conf" -g 'daemon on;' -p "$WORK"
RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" run -c "$WORK/tp.toml" 2> "$WORK/logs/tp.log" & TP_PID=$!; pids+=($TP_PID)
RUST_LOG=info TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" run -c "$WORK/tplog.toml" 2> "$WORK/logs/tplog.log" & TPLOG_PID=$!; pids+=($TPLOG_PID)
RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" run -c "$WORK/tptls.toml" 2> "$WORK/logs/tptls.log" & TPTLS_PID=$!; pids+=($TPTLS_PID)
for p in $TP $TPLOG $TPTLS; do
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$p/small.json" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$p/small.json" >/dev/null || {
    echo "tokenproxy on port $p does not answer after 30 s:" >&2; tail -5 "$WORK"/logs/tp*.log >&2; exit 1; }
done
curl -sf "http://127.0.0.1:$PX/small.json" >/dev/null
worker() { pgrep -P "$(cat "$WORK/$1.pid")" | head -1; }
curl -sf -x "http://127.0.0.1:$PXTLS" "http://127.0.0.1:$UP/small.json" >/dev/null
declare -A PID=([direct]="" [nginx]=$(worker px) [nginx_log]=$(worker pxlog) [tokenproxy]=$TP_PID [tokenproxy_log]=$TPLOG_PID [nginx_tls]=$(worker pxtls) [tokenproxy_tls]=$TPTLS_PID)
declare -A PORT=([direct]=$UP [nginx]=$PX [nginx_log]=$PXLOG [tokenproxy]=$TP [tokenproxy_log]=$TPLOG [nginx_tls]=$PXTLS [tokenproxy_tls]=$TPTLS)

# Absolute-form requests for the upstream's small file, whichever port wrk connects to.
cat > "$WORK/absolute.lua" <<LUA
wrk.path = "http://127.0.0.1:$UP/small.json"
LUA
# The direct column carries the header itself (the upstream refuses requests without).
cat > "$WORK/direct.lua" <<LUA
wrk.path = "http://127.0.0.1:$UP/small.json"
wrk.headers["Authorization"] = "Bearer bench-static-token"
LUA
script() { if [ "$1" = direct ]; then echo "$WORK/direct.lua"; else echo "$WORK/absolute.lua"; fi; }

ticks() { [ -z "$1" ] && { echo 0; return; }; awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# The kernel's share of them (stime).
kticks() { [ -z "$1" ] && { echo 0; return; }; awk '{ print $15 }' "/proc/$1/stat"; }
# Clock ticks of every process on the machine (from /proc/stat), to tell how much
# others used during a run.
all_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
HZ=$(getconf CLK_TCK)

# One wrk run against NAME: "rps p50_us p99_us non2xx proxy_cpu_s other_cores
# proxy_kernel_cpu_s".
# CORE: where wrk runs; CONNS, THREADS.
one_run() {
  local name=$1 conns=$2 threads=$3 core=$4
  local pid=${PID[$name]} upw
  upw=$(pgrep -P "$(cat "$WORK/up.pid")" | head -1)
  local t0 a0 u0 k0 out
  t0=$(ticks "$pid"); a0=$(all_ticks); u0=$(ticks "$upw"); k0=$(kticks "$pid")
  out=$(taskset -c "$core" wrk -t"$threads" -c"$conns" -d"${DUR}s" --latency -s "$(script "$name")" \
        "http://127.0.0.1:${PORT[$name]}/")
  local t1 a1 u1 k1
  t1=$(ticks "$pid"); a1=$(all_ticks); u1=$(ticks "$upw"); k1=$(kticks "$pid")
  # Others: all CPU less the proxy, the upstream and wrk (wrk's share is estimated as
  # what is left on its core; we only flag runs where the total exceeds the three).
  echo "$out" | awk -v cpu="$(( t1 - t0 ))" -v hz="$HZ" -v all="$(( a1 - a0 ))" -v up="$(( u1 - u0 ))" -v dur="$DUR" -v kern="$(( k1 - k0 ))" '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return v*1000; if (v ~ /s$/) return v*1000000; return v }
    /^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) }
    /Requests\/sec/ { rps = $2 } /Non-2xx/ { bad = $NF }
    END { printf "%.0f %.0f %.0f %d %.3f %.3f %.3f\n", rps, p50, p99, bad, cpu / hz, (all - cpu - up) / hz / dur - 1, kern / hz }'
}

# REPEATS rounds over the NAMES of one row, interleaved (nginx, tokenproxy, nginx,
# ...), so that a slow spell of this shared machine falls on every column of a
# round instead of on one column's runs. A run is repeated, at most twice, when
# others used more than MAX_OTHER % of a core (counted in REPEATED). Each name's
# runs are kept in ROWS[NAME,KEY]; `median` picks one.
REPEATED=0
declare -A ROWS
measure() {  # KEY CONNS THREADS CORE NAME...
  local key=$1 conns=$2 threads=$3 core=$4 name i r tries other
  shift 4
  for name in "$@"; do
    taskset -c "$core" wrk -t1 -c4 -d1s -s "$(script "$name")" "http://127.0.0.1:${PORT[$name]}/" >/dev/null
  done
  for i in $(seq "$REPEATS"); do
    for name in "$@"; do
      tries=0
      while :; do
        r=$(one_run "$name" "$conns" "$threads" "$core")
        other=$(echo "$r" | awk -v m="$MAX_OTHER" '{ print ($6 * 100 > m) ? 1 : 0 }')
        if [ "$other" = 1 ] && [ $tries -lt 2 ]; then tries=$((tries + 1)); REPEATED=$((REPEATED + 1)); continue; fi
        break
      done
      ROWS[$name,$key]+="$r"$'\n'
    done
  done
}

# The median run of NAME in row KEY (by requests/s): sets RUN, the fields of
# one_run plus µs/request, busy % and kernel µs/request.
median() {  # NAME KEY
  RUN=$(printf '%s' "${ROWS[$1,$2]}" | sort -n -k1 | awk -v n="$REPEATS" -v dur="$DUR" 'NR == int((n + 1) / 2) {
    reqs = $1 * dur; printf "%s %s %s %s %s %.1f %.0f %.1f\n", $1, $2, $3, $4, $5, (reqs > 0 ? $5 * 1e6 / reqs : 0), $5 / dur * 100, (reqs > 0 ? $7 * 1e6 / reqs : 0) }')
}

# The median over the rounds of row KEY of B's CPU per request over A's, each pair
# measured in the same round.
paired() {  # A B KEY
  paste <(printf '%s' "${ROWS[$1,$3]}") <(printf '%s' "${ROWS[$2,$3]}") \
    | awk '$1 > 0 && $5 > 0 && $8 > 0 { print ($12 / $8) / ($5 / $1) }' \
    | sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", v[int((NR + 1) / 2)]; else print "-" }'
}

PROXY_PIDS="${PID[nginx]} ${PID[nginx_log]} ${PID[nginx_tls]} $TP_PID $TPLOG_PID $TPTLS_PID"
declare -A R
capped
measure c64 64 2 1 direct nginx tokenproxy
measure c64 64 2 1 nginx_log tokenproxy_log
measure c64 64 2 1 nginx_tls tokenproxy_tls
for name in direct nginx tokenproxy nginx_log tokenproxy_log nginx_tls tokenproxy_tls; do
  median "$name" c64
  read -r R[$name,rps] R[$name,p50] R[$name,p99] R[$name,bad] _ R[$name,us] R[$name,busy] R[$name,kus] <<<"$RUN"
  R[$name,uus]=$(awk -v a="${R[$name,us]}" -v k="${R[$name,kus]}" 'BEGIN { printf "%.1f", a - k }')
  R[$name,quota]=$(awk -v b="${R[$name,busy]}" -v q="$QUOTA" 'BEGIN { printf "%.0f", b * 100 / q }')
done
uncapped
# One connection, wrk beside the proxy on core 0 (direct: beside nothing).
measure c1 1 1 0 direct nginx tokenproxy
for name in direct nginx tokenproxy; do
  median "$name" c1
  read -r R[$name,rps1] R[$name,p50_1] R[$name,p99_1] _ _ R[$name,us1] _ <<<"$RUN"
done

# CPU per GiB streamed: one download of the 256 MiB file, the proxy's CPU time.
stream() {
  local name=$1 pid=${PID[$1]} t0 t1
  t0=$(ticks "$pid")
  taskset -c 1 curl -s -o /dev/null -x "http://127.0.0.1:${PORT[$name]}" "http://127.0.0.1:$UP/large.bin"
  t1=$(ticks "$pid")
  awk -v t="$(( t1 - t0 ))" -v hz="$HZ" 'BEGIN { printf "%.0f", t / hz * 1000 * 4 }'
}
for name in nginx tokenproxy; do R[$name,gib]=$(stream "$name"); done
hwm() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
rss() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
R[nginx,rss]=$(hwm "${PID[nginx]}"); R[tokenproxy,rss]=$(hwm "$TP_PID")

# RSS during a 1 GiB download through tokenproxy: sampled every 100 ms.
before=$(rss "$TP_PID"); peak=$before
taskset -c 1 curl -s -o /dev/null -x "http://127.0.0.1:$TP" "http://127.0.0.1:$UP/huge.bin" & C=$!
while kill -0 "$C" 2>/dev/null; do r=$(rss "$TP_PID"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.1; done
GROWTH=$(( (peak - before) / 1024 ))

# A forced refresh under 64 connections: one token request, no error.
issued_before=$(curl -s "http://127.0.0.1:$TS/count")
( sleep $(( DUR / 2 )); curl -s -X POST "http://127.0.0.1:$AD/tokens/bench/refresh" >/dev/null ) & FORCE=$!
read -r RF_RPS _ RF_P99 RF_BAD _ _ < <(one_run tokenproxy 64 2 1)
wait "$FORCE"
REFRESHES=$(( $(curl -s "http://127.0.0.1:$TS/count") - issued_before ))

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
{
  echo "# tokenproxy vs nginx, with the proxy as the bottleneck"
  echo
  echo "Run on $(date -u +%Y-%m-%d), $(nproc) cores ($cpu), $(uname -sr), nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), \`bash bench/run.sh $DUR $REPEATS\`: ${REPEATS} rounds of ${DUR} s runs, the columns of a row interleaved within each round; each cell the median run (by requests/s); ${REPEATED} run(s) repeated because other processes were busy."
  echo "Proxies alone on core 0 with one worker; upstream nginx and \`wrk -t2\` on core 1; absolute-form requests for a $(stat -c %s "$WORK/www/small.json")-byte JSON file. In the 64-connection rows each proxy is capped at ${QUOTA} % of a core (a CPU cgroup, 10 ms periods), less than core 1 can feed, so that both are saturated; \"busy\" is the proxy's CPU time over that quota. CPU µs per request from the proxy's /proc/PID/stat."
  echo
  echo "| | direct | nginx | tokenproxy | tokenproxy / nginx |"
  echo "|---|---|---|---|---|"
  echo "| requests/s, 64 connections | ${R[direct,rps]} | ${R[nginx,rps]} | ${R[tokenproxy,rps]} | $(ratio "${R[tokenproxy,rps]}" "${R[nginx,rps]}") |"
  echo "| proxy CPU µs per request, 64 connections | - | ${R[nginx,us]} | ${R[tokenproxy,us]} | **$(ratio "${R[tokenproxy,us]}" "${R[nginx,us]}")** |"
  echo "| CPU per request, same-round ratio (median of ${REPEATS} rounds) | - | | | **$(paired nginx tokenproxy c64)** |"
  echo "| of which in the kernel (system time) | - | ${R[nginx,kus]} | ${R[tokenproxy,kus]} | $(ratio "${R[tokenproxy,kus]}" "${R[nginx,kus]}") |"
  echo "| of which in user space | - | ${R[nginx,uus]} | ${R[tokenproxy,uus]} | $(ratio "${R[tokenproxy,uus]}" "${R[nginx,uus]}") |"
  echo "| proxy busy of its quota, 64 connections | - | ${R[nginx,quota]} % | ${R[tokenproxy,quota]} % | |"
  echo "| p99, 64 connections (µs) | ${R[direct,p99]} | ${R[nginx,p99]} | ${R[tokenproxy,p99]} | $(ratio "${R[tokenproxy,p99]}" "${R[nginx,p99]}") |"
  echo "| with request logs: requests/s, 64 connections | - | ${R[nginx_log,rps]} | ${R[tokenproxy_log,rps]} | $(ratio "${R[tokenproxy_log,rps]}" "${R[nginx_log,rps]}") |"
  echo "| with request logs: CPU µs per request | - | ${R[nginx_log,us]} | ${R[tokenproxy_log,us]} | $(ratio "${R[tokenproxy_log,us]}" "${R[nginx_log,us]}") |"
  echo "| with request logs: same-round ratio | - | | | $(paired nginx_log tokenproxy_log c64) |"
  echo "| TLS upstream: requests/s, 64 connections | - | ${R[nginx_tls,rps]} | ${R[tokenproxy_tls,rps]} | $(ratio "${R[tokenproxy_tls,rps]}" "${R[nginx_tls,rps]}") |"
  echo "| TLS upstream: CPU µs per request | - | ${R[nginx_tls,us]} | ${R[tokenproxy_tls,us]} | $(ratio "${R[tokenproxy_tls,us]}" "${R[nginx_tls,us]}") |"
  echo "| TLS upstream: same-round ratio | - | | | $(paired nginx_tls tokenproxy_tls c64) |"
  echo "| TLS upstream: proxy busy of its quota | - | ${R[nginx_tls,quota]} % | ${R[tokenproxy_tls,quota]} % | |"
  echo "| same core, 1 connection: p50 (µs) | ${R[direct,p50_1]} | ${R[nginx,p50_1]} | ${R[tokenproxy,p50_1]} | $(ratio "${R[tokenproxy,p50_1]}" "${R[nginx,p50_1]}") |"
  echo "| 256 MiB download: proxy CPU ms per GiB | - | ${R[nginx,gib]} | ${R[tokenproxy,gib]} | $(ratio "${R[tokenproxy,gib]}" "${R[nginx,gib]}") |"
  echo "| peak RSS (MiB) | - | ${R[nginx,rss]} (worker) | ${R[tokenproxy,rss]} | $(ratio "${R[tokenproxy,rss]}" "${R[nginx,rss]}") |"
  echo "| non-2xx answers, 64 connections (plain / TLS upstream) | ${R[direct,bad]} | ${R[nginx,bad]} / ${R[nginx_tls,bad]} | ${R[tokenproxy,bad]} / ${R[tokenproxy_tls,bad]} | |"
  echo
  echo "- RSS growth of tokenproxy during a 1 GiB download: ${GROWTH} MiB."
  echo "- A forced refresh during a ${DUR} s run at 64 connections: ${REFRESHES} token request(s), ${RF_BAD} non-2xx answers, ${RF_RPS} requests/s, p99 ${RF_P99} µs."
  cat bench/notes.md
} | tee bench/RESULTS.md.new
# The shared-store section, measured by its own benchmark, stays.
sed -n '/^## Shared store/,$p' bench/RESULTS.md >> bench/RESULTS.md.new
mv bench/RESULTS.md.new bench/RESULTS.md
