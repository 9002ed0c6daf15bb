#!/usr/bin/env bash
# Instructions and simulated cache misses per proxied request, counted by
# valgrind's cachegrind, for one or more policies: figures that do not
# move with the machine's speed or its neighbours, unlike CPU time. Each
# policy is run twice, with a short and a long series of keep-alive
# requests on one connection; the difference divided by the difference in
# requests leaves out start-up and shutdown. The misses are cachegrind's
# model (first-level 32 KiB caches and a last-level one the size of this
# machine's), not the hardware's, but they show a policy's footprint: the
# part of its cost that instructions alone do not. (Callgrind cannot be
# used: it asserts on the policy deadline's CPU-time timer signal.)
#
#   bench/instructions.sh                            # Wasm and native round-robin
#   bench/instructions.sh weighted native:weighted /path/to/policy.wasm
#   SHORT=300 LONG=1300 bench/instructions.sh
#
# Needs valgrind, nginx, curl, python3 (apt: valgrind nginx-light).
set -euo pipefail
cd "$(dirname "$0")/.."
policies=("$@")
((${#policies[@]})) || policies=(round-robin native:round-robin)
short=${SHORT:-500}
long=${LONG:-2500}

[ -n "${SWITCHYARD_BIN:-}" ] || cargo build --release --quiet
. bench/lib.sh
need valgrind nginx curl python3
start_backends

# requests N: N GETs on one keep-alive connection to the proxy.
requests() {
    python3 - "$port" "$1" <<'EOF'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
for _ in range(int(sys.argv[2])):
    c.request("GET", "/")
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
EOF
}

# count POLICY N: cachegrind's totals (Ir I1mr ILmr Dr D1mr DLmr Dw D1mw
# DLmw) for a proxy run that served N requests.
count() {
    local out="$work/cachegrind.$RANDOM" pid
    proxy_config "$1" 2>/dev/null
    valgrind --tool=cachegrind --cachegrind-out-file="$out" \
        "$bin" run --config "$work/proxy.toml" --workers 1 >"$work/proxy.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
        sleep 0.1
    done
    requests "$2"
    kill -TERM "$pid"
    wait "$pid" || true
    sed -n 's/^summary: //p' "$out"
}

printf '%-32s %12s %10s %10s %10s\n' "per request" instructions "L1i miss" "L1d miss" "LL miss"
for p in "${policies[@]}"; do
    # Compiled into the policy cache first: a cold compile would land in
    # the short run only and make the difference meaningless. Under
    # valgrind, whose CPU has other features than the machine's, so that
    # the compile's cache key is the measured runs' one.
    proxy_config "$p" 2>/dev/null
    valgrind --tool=none -q "$bin" check --config "$work/proxy.toml" >"$work/check.log" 2>&1 || { cat "$work/check.log"; exit 1; }
    a=$(count "$p" "$short")
    b=$(count "$p" "$long")
    echo "$a" "$b" | awk -v p="$p" -v n=$((long - short)) '{
        for (i = 1; i <= 9; i++) d[i] = ($(i + 9) - $i) / n
        printf "%-32s %12.0f %10.0f %10.0f %10.0f\n", p, d[1], d[2], d[5] + d[8], d[3] + d[6] + d[9] }'
done
