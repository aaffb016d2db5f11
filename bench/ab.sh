#!/usr/bin/env bash
# Two tokenproxy builds against each other on the plain path, runs interleaved so
# that a slow spell of the machine falls on both: each alone on core 0 with one
# worker, upstream nginx and wrk -t2 on core 1, 64 connections of absolute-form
# requests. Prints each run's requests/s and the proxy's CPU µs per request, then
# the medians.
#
#   bash bench/ab.sh OLD_BINARY NEW_BINARY [SECONDS] [ROUNDS] [RUST_LOG]   # 10 s, 5 rounds, warn
#
# Build the old one from a worktree, e.g.
#   git worktree add /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/oldtarget cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
A="$1"; B="$2"; DUR="${3:-10}"; ROUNDS="${4:-5}"; LOG="${5:-warn}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
. bench/lib.sh
backends
declare -A PORT PID
for side in a b; do
  PORT[$side]=$(port)
  tokenproxy_toml "$WORK/$side.toml" "${PORT[$side]}" "$(port)" "$WORK/state-$side" "$TS" "$UP"
  bin=$A; [ "$side" = b ] && bin=$B
  RUST_LOG=$LOG TOKIO_WORKER_THREADS=1 taskset -c 0 "$bin" run -c "$WORK/$side.toml" 2> "$WORK/$side.log" & PID[$side]=$!; pids+=(${PID[$side]})
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:${PORT[$side]}/small.json" >/dev/null && break; sleep 0.1; done
done
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
declare -A US
for r in $(seq "$ROUNDS"); do
  for side in a b; do
    t0=$(ticks "${PID[$side]}")
    rps=$(taskset -c 1 wrk -t2 -c64 -d"${DUR}s" -s "$WORK/abs.lua" "http://127.0.0.1:${PORT[$side]}/" | awk '/Requests\/sec/ { print $2 }')
    t1=$(ticks "${PID[$side]}")
    us=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v rps="$rps" -v d="$DUR" 'BEGIN { printf "%.1f", t / hz * 1e6 / (rps * d) }')
    echo "round $r $side: $rps requests/s, $us µs/request"
    US[$side]="${US[$side]:-} $us"
  done
done
for side in a b; do
  echo "$side median µs/request: $(echo ${US[$side]} | tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
done
