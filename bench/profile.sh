#!/usr/bin/env bash
# Where a proxied request's CPU goes: the release binary with one worker
# pinned to the last CPU, wrk (64 keep-alive connections) and the nginx
# backends on the others, `perf record -g` on the proxy for a few seconds,
# then the split between kernel and user time, and the hottest functions.
#
#   bench/profile.sh                  # round-robin
#   bench/profile.sh native:round-robin
#   bench/profile.sh nginx            # nginx's worker under the same load
#   LOAD=h2c bench/profile.sh         # h2c (h2load -c16 -m4) instead of wrk
#
# Needs perf, wrk, nginx (apt: linux-perf wrk nginx-light) and permission to
# profile (root, or kernel.perf_event_paranoid <= 1). Writes perf.data to a
# temp dir; BENCH_KEEP=1 keeps it for `perf report -i`. The default frame-
# pointer call graphs lose the caller of leaf functions such as memcpy;
# PERF_CALL_GRAPH="--call-graph=dwarf,16384" keeps them (a larger file;
# the reports pass --no-inline, without which perf resolves inlined frames
# through addr2line and a DWARF report takes tens of minutes here).
set -euo pipefail
cd "$(dirname "$0")/.."
policy=${1:-round-robin}
seconds=${SECONDS_PROFILED:-6}

[ -n "${SWITCHYARD_BIN:-}" ] || cargo build --release --quiet
. bench/lib.sh
load=${LOAD:-h1}
need perf wrk nginx curl taskset
[ "$load" = h1 ] || need h2load
pin_cpus
BACKEND_PIN="taskset -c $others" start_backends
if [ "$policy" = nginx ]; then
    nginx_peer_config "$port"
    taskset -c "$last" nginx -c "$work/peer.conf" -e "$work/peer/error.log" &
    master=$!
    trap 'kill $master 2>/dev/null; cleanup' EXIT
    sleep 0.5
    proxy=$(pgrep -P "$master" | head -1)
else
    proxy_config "$policy"
    TOKIO_WORKER_THREADS=1 taskset -c "$last" "$bin" run --config "$work/proxy.toml" \
        >"$work/proxy.log" 2>&1 &
    proxy=$!
    trap 'kill $proxy 2>/dev/null; cleanup' EXIT
fi
wait_ready
if [ "$load" = h1 ]; then
    taskset -c "$others" wrk -t1 -c64 -d$((seconds + 3))s "http://127.0.0.1:$port/" >"$work/wrk.txt" &
else
    # The proxy serves h2c on its one port; nginx on a port of its own.
    h2=${peer_h2port:-$port}
    taskset -c "$others" h2load -t1 -c16 -m4 -D $((seconds + 3)) "http://127.0.0.1:$h2/" >"$work/wrk.txt" &
fi
loadgen=$!
sleep 2
perf record -q ${PERF_CALL_GRAPH:--g} -p "$proxy" -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null
wait "$loadgen"
grep -E 'Requests/sec|Latency |finished in|^requests:' "$work/wrk.txt"

echo
echo "kernel vs user (share of the proxy's samples):"
perf report -i "$work/perf.data" --no-inline --no-children --sort sym --stdio 2>/dev/null |
    awk '/^ +[0-9.]+%/ { p = $1; sub("%", "", p); if ($2 == "[k]") k += p; else u += p }
         END { printf "  kernel %.1f%%, user %.1f%%\n", k, u }'
echo
echo "hottest functions (self time):"
perf report -i "$work/perf.data" --no-inline --no-children --sort sym --stdio 2>/dev/null |
    grep -E '^ +[0-9.]+%' | head -30 | cut -c1-150 || true
