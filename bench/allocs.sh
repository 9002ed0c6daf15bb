#!/usr/bin/env bash
# Heap allocations per proxied request, counted by heaptrack on the release
# binary: the proxy serves N keep-alive HTTP/1.1 requests (h2load --h1, 8
# connections) to three nginx backends, and the count of a run with no
# requests is subtracted, so start-up and policy compilation drop out.
#
#   bench/allocs.sh                 # round-robin, 20000 requests
#   bench/allocs.sh weighted 50000  # another policy, more requests
#
# Needs heaptrack, nginx and h2load (apt: heaptrack nginx-light nghttp2-client).
set -euo pipefail
cd "$(dirname "$0")/.."
policy=${1:-round-robin}
requests=${2:-20000}

[ -n "${SWITCHYARD_BIN:-}" ] || cargo build --release --quiet
. bench/lib.sh
need heaptrack heaptrack_print nginx h2load curl
start_backends
proxy_config "$policy"

# Runs the proxy under heaptrack, sends $1 requests, prints the allocation calls.
count() {
    local n=$1 out="$work/heaptrack-$1"
    TOKIO_WORKER_THREADS=1 heaptrack -o "$out" "$bin" run --config "$work/proxy.toml" \
        >"$work/run-$n.log" 2>&1 &
    local pid=$!
    wait_ready
    if [ "$n" -gt 0 ]; then
        h2load --h1 -n "$n" -c 8 -t 1 "http://127.0.0.1:$port/" | grep -E '^requests:' >&2
    fi
    # heaptrack runs the proxy as its child: stop the proxy, let heaptrack write.
    pkill -TERM -P "$pid" switchyard 2>/dev/null || pkill -TERM -f "$bin run --config $work" || true
    wait "$pid" || true
    heaptrack_print -f "$out".*z* 2>/dev/null | sed -n 's/^calls to allocation functions: \([0-9]*\).*/\1/p'
}

base=$(count 0)
loaded=$(count "$requests")
# The readiness probe is one request in both runs, so it cancels out.
echo "policy $policy: $base allocations at rest, $loaded after $requests requests"
awk -v b="$base" -v l="$loaded" -v n="$requests" \
    'BEGIN { printf "%.2f allocations per request\n", (l - b) / n }'
echo "where they come from (allocation calls per request, by allocating function):"
heaptrack_print -f "$work/heaptrack-$requests".*z* -n 12 2>/dev/null |
    sed -n '/^MOST CALLS/,/^PEAK/p' |
    awk -v n="$requests" '/calls to allocation functions with/ { c = $1; getline; if (c >= n / 4) printf "  %5.2f  %s\n", c / n, $0 }' |
    sed -E 's/::h[0-9a-f]+$//; s/\$LT\$/</g; s/\$GT\$/>/g; s/\$u20\$/ /g; s/\$u7b\$/{/g; s/\$u7d\$/}/g; s/_?\$?LT\$/</g; s/\.\./::/g'
