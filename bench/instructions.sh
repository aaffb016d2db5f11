#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind (callgrind):
# the one per-request figure that does not move with the machine. On this VM CPU
# µs per request moves ±10 % between runs, and more when a neighbour is busy;
# an instruction count moves by about 1 %, so it can tell a 3 % change apart.
# It leaves out the kernel (the same four syscalls per request for any proxy:
# see bench/RESULTS.md) and counts instructions, not their cost in cache misses.
#
#   bash bench/instructions.sh [TARGET...]     # default: target/release/tokenproxy nginx
#   KEEP=/tmp/cg bash bench/instructions.sh    # and keep the counts per function
#
# A TARGET is a tokenproxy binary or the word `nginx` (nginx as the same forward
# proxy, one worker, upstream keepalive). Each runs under callgrind, takes 3 s of
# warm-up at 16 connections (wrk), has its counters zeroed, serves SECONDS more
# (DUR, default 8), and is divided by the requests it served (tokenproxy's
# /metrics; for nginx, wrk's count). Needs valgrind, nginx, wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${DUR:-8}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for tool in valgrind callgrind_control wrk "$NGINX"; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[ $# -gt 0 ] || set -- target/release/tokenproxy nginx
. bench/lib.sh
backends

for target in "$@"; do
  PX=$(port); AD=$(port)
  if [ "$target" = nginx ]; then
    nginx_proxy_conf "$WORK/px.conf" "$PX" "$UP" "$WORK/px.pid" "$WORK/px-error.log" off
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
      "$NGINX" -c "$WORK/px.conf" -p "$WORK" -g "daemon off; master_process off;" \
      2> "$WORK/px.log" & P=$!
  else
    rm -rf "$WORK/state"
    tokenproxy_toml "$WORK/tp.toml" "$PX" "$AD" "$WORK/state" "$TS" "$UP"
    RUST_LOG=${LOG:-warn} TOKIO_WORKER_THREADS=1 taskset -c 0 valgrind --tool=callgrind \
      --callgrind-out-file="$WORK/cg.out" "$target" run -c "$WORK/tp.toml" 2> "$WORK/px.log" & P=$!
  fi
  for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$PX/small.json" && break; sleep 0.2; done
  taskset -c 1 wrk -t1 -c16 -d3s -s "$WORK/abs.lua" "http://127.0.0.1:$PX/" >/dev/null
  served() { curl -s "http://127.0.0.1:$AD/metrics" | awk '/^tokenproxy_requests_total/ { s += $NF } END { print s + 0 }'; }
  callgrind_control -z "$P" >/dev/null 2>&1
  [ "$target" = nginx ] || r0=$(served)
  out=$(taskset -c 1 wrk -t1 -c16 -d"${DUR}s" -s "$WORK/abs.lua" "http://127.0.0.1:$PX/")
  if [ "$target" = nginx ]; then
    n=$(echo "$out" | awk '/requests in/ { print $1 }')
  else
    n=$(( $(served) - r0 ))
  fi
  rm -f "$WORK"/cg.out.*
  callgrind_control -d "$P" >/dev/null 2>&1
  for _ in $(seq 50); do ls "$WORK"/cg.out.* >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 0.5
  ir=$(grep -hE "^(summary|totals):" "$WORK"/cg.out.* | head -1 | awk '{ print $2 }')
  # KEEP=PREFIX keeps the counts, for `callgrind_annotate --inclusive=yes FILE`.
  [ -z "${KEEP:-}" ] || cp "$(ls "$WORK"/cg.out.* | head -1)" "$KEEP.$(basename "$target")"
  kill "$P" 2>/dev/null || true; wait "$P" 2>/dev/null || true
  echo "$target: $n requests, $(( ir / n )) user-space instructions per request"
done
