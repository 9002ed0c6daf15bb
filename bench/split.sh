#!/usr/bin/env bash
# Kernel against user CPU per proxied request, Switchyard and nginx side by
# side: each proxy gets one worker pinned to the last CPU, wrk (64
# keep-alive connections) and the nginx backends the others; the rounds
# alternate the two proxies. CPU comes from the proxy's /proc/PID/stat
# (utime, stime: every thread, no sampling), TCP segments from nstat, so
# the figures carry none of a profiler's overhead.
#
#   bench/split.sh                    # round-robin, 3 rounds of 5 s
#   bench/split.sh native:round-robin
#   ROUNDS=5 SECONDS_LOADED=8 bench/split.sh weighted
#
# Needs wrk, nginx, nstat, curl, taskset (apt: wrk nginx-light iproute2).
set -euo pipefail
cd "$(dirname "$0")/.."
policy=${1:-round-robin}
rounds=${ROUNDS:-3}
seconds=${SECONDS_LOADED:-5}

[ -n "${SWITCHYARD_BIN:-}" ] || cargo build --release --quiet
. bench/lib.sh
need wrk nginx nstat curl taskset
pin_cpus
BACKEND_PIN="taskset -c $others" start_backends
proxy_config "$policy"
nginx_port=$(free_port)
nginx_peer_config "$nginx_port"
ticks=$(getconf CLK_TCK)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; cleanup' EXIT

# measure NAME PID PORT: a 2 s warm-up, then the counted run.
measure() {
    taskset -c "$others" wrk -t1 -c64 -d2s "http://127.0.0.1:$3/" >/dev/null
    local before after
    before=$(awk '{print $14, $15}' "/proc/$2/stat")
    nstat -n >/dev/null
    taskset -c "$others" wrk -t1 -c64 -d"${seconds}s" "http://127.0.0.1:$3/" >"$work/wrk.txt"
    after=$(awk '{print $14, $15}' "/proc/$2/stat")
    nstat >"$work/nstat.txt"
    awk -v name="$1" -v tick="$ticks" -v before="$before" -v after="$after" '
        /requests in/ { n = $1 }
        FILENAME ~ /nstat/ && $1 == "TcpOutSegs" { segs = $2 }
        END {
            split(before, b); split(after, a)
            printf "%-12s %9d  %8.2f  %8.2f  %8.2f  %8.2f\n", name, n,
                (a[1] - b[1]) / tick * 1e6 / n, (a[2] - b[2]) / tick * 1e6 / n,
                (a[1] + a[2] - b[1] - b[2]) / tick * 1e6 / n, segs / n
        }' "$work/wrk.txt" "$work/nstat.txt"
}

printf "%-12s %9s  %8s  %8s  %8s  %8s\n" proxy requests "user µs" "kernel µs" "total µs" "segments"
for _ in $(seq "$rounds"); do
    taskset -c "$last" nginx -c "$work/peer.conf" -e "$work/peer/error.log" &
    server=$!
    sleep 0.5
    measure nginx "$(pgrep -P "$server" | head -1)" "$nginx_port"
    kill "$server"; wait "$server" 2>/dev/null || true

    TOKIO_WORKER_THREADS=1 taskset -c "$last" "$bin" run --config "$work/proxy.toml" \
        >"$work/proxy.log" 2>&1 &
    server=$!
    wait_ready
    measure switchyard "$server" "$port"
    kill "$server"; wait "$server" 2>/dev/null || true
done
server=
echo "(per request; segments: TCP segments sent on loopback, all processes)"
