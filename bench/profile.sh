#!/usr/bin/env bash
# Where tokenproxy's CPU goes with the proxy saturated: the same set-up as run.sh
# (tokenproxy alone on core 0 with one worker; upstream nginx and wrk -t2 on core 1;
# 64 connections of absolute-form requests for a small JSON file), sampled with
# `perf record` (software clock, so it works in VMs without PMU access) for
# SECONDS, and summarised by where the samples fall: kernel or user space, then
# the top symbols.
#
#   bash bench/profile.sh [SECONDS] [RUST_LOG]     # default 10 s, RUST_LOG=warn
#   PERF_DATA=/tmp/p.data bash bench/profile.sh     # and keep the samples
#   PERF_CALLGRAPH="--call-graph dwarf,16384" bash bench/profile.sh 3
#                  # call chains through the LTO binary (no frame pointers); large
#
# Needs perf, nginx, wrk; uses target/release/tokenproxy (built with symbols off
# by the release profile, so user-space frames resolve to the functions LTO kept).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"
LOG="${2:-warn}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for tool in perf wrk "$NGINX"; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
cargo build --release --quiet
. bench/lib.sh
backends
TP=$(port); AD=$(port)
tokenproxy_toml "$WORK/tp.toml" "$TP" "$AD" "$WORK/state" "$TS" "$UP"
RUST_LOG=$LOG TOKIO_WORKER_THREADS=1 taskset -c 0 target/release/tokenproxy run -c "$WORK/tp.toml" 2> "$WORK/tp.log" & TP_PID=$!; pids+=($TP_PID)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TP/small.json" >/dev/null && break; sleep 0.1; done
taskset -c 1 wrk -t2 -c64 -d1s -s "$WORK/abs.lua" "http://127.0.0.1:$TP/" >/dev/null
taskset -c 1 wrk -t2 -c64 -d"$((DUR + 2))s" -s "$WORK/abs.lua" "http://127.0.0.1:$TP/" > "$WORK/wrk.txt" &
W=$!
sleep 1
perf record -q -e cpu-clock -F 2000 ${PERF_CALLGRAPH:--g} -p "$TP_PID" -o "$WORK/perf.data" -- sleep "$DUR" 2>/dev/null
wait "$W"
# PERF_DATA=path keeps the samples for `perf report -i path`.
[ -z "${PERF_DATA:-}" ] || cp "$WORK/perf.data" "$PERF_DATA"
set +o pipefail   # head closes the reports early
grep -E "Requests/sec" "$WORK/wrk.txt"
echo
echo "## samples by privilege level"
perf report -i "$WORK/perf.data" --no-children --sort cpu_mode 2>/dev/null | grep -E '^ +[0-9]' | head -5 || true
perf report -i "$WORK/perf.data" --no-children --sort dso 2>/dev/null | grep -E '^ +[0-9]' | head -8
echo
echo "## top symbols (self time)"
perf report -i "$WORK/perf.data" --no-children --sort dso,sym 2>/dev/null | grep -E '^ +[0-9]' | head -40
