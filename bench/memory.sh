#!/usr/bin/env bash
# Where a proxy's memory goes: Switchyard and nginx (and Pingora, when
# bench/pingora is built) each serve the same wrk load (64 keep-alive
# connections, one worker pinned to the last CPU), and their resident
# memory is read from /proc before and after, split into what the kernel
# can drop and reread at will (file-backed pages: the binary's code and
# constants, shared libraries) and what is the process's own (anonymous:
# heap, stacks, buffers). Then Switchyard runs once more under heaptrack
# to name the heap's largest holders at the peak.
#
#   bench/memory.sh                  # round-robin
#   bench/memory.sh weighted
#   bench/memory.sh builtins         # three groups: round-robin, weighted and
#                                    # sticky-session, the load split over them
#
# Needs wrk, nginx, curl, taskset, heaptrack (apt: wrk nginx-light heaptrack).
set -euo pipefail
cd "$(dirname "$0")/.."
policy=${1:-round-robin}

[ -n "${SWITCHYARD_BIN:-}" ] || cargo build --release --quiet
. bench/lib.sh
need wrk nginx curl taskset heaptrack heaptrack_print
pin_cpus
BACKEND_PIN="taskset -c $others" start_backends
paths=(/)
if [[ $policy == builtins ]]; then
    # One group per built-in, each behind its own path prefix.
    proxy_config round-robin
    python3 - "$work/proxy.toml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
group = text[text.index("[upstreams.app]"):]
out = text.replace("[upstreams.app]", "[upstreams.rr]")
for name, policy in (("weighted", "weighted"), ("sticky", "sticky-session")):
    out += "\n" + group.replace("[upstreams.app]", f"[upstreams.{name}]").replace(
        'policy = "round-robin"', f'policy = "{policy}"')
for prefix, name in (("/w", "weighted"), ("/s", "sticky"), ("/", "rr")):
    out += f'\n[[routes]]\npath-prefix = "{prefix}"\nupstream = "{name}"\n'
open(path, "w").write(out)
PY
    "$bin" check --config "$work/proxy.toml" >/dev/null
    paths=(/ /w /s)
else
    proxy_config "$policy"
fi
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; cleanup' EXIT

# The resident memory of PID and its children, in MiB: total, file, anon.
rss() {
    local pids
    pids="$1 $(pgrep -P "$1" | tr '\n' ' ')"
    for p in $pids; do cat "/proc/$p/status"; done | awk '
        /^VmRSS/ { t += $2 } /^RssFile/ { f += $2 } /^RssShmem/ { f += $2 } /^RssAnon/ { a += $2 }
        END { printf "%6.1f %6.1f %6.1f", t / 1024, f / 1024, a / 1024 }'
}

# measure NAME PORT [PATH...]: idle, then after 8 s of load on / or,
# given paths, 8 s shared out among them (3 s each for three).
measure() {
    local idle after name=$1 port=$2 p
    shift 2
    (($#)) || set -- /
    idle=$(rss "$server")
    for p in "$@"; do
        taskset -c "$others" wrk -t1 -c64 -d$(((8 + $# - 1) / $#))s "http://127.0.0.1:$port$p" >/dev/null
    done
    after=$(rss "$server")
    printf "%-22s %s   %s\n" "$name" "$idle" "$after"
    kill "$server" 2>/dev/null
    wait "$server" 2>/dev/null || true
    server=
}

printf "%-22s %6s %6s %6s   %6s %6s %6s\n" "MiB" "idle" "file" "anon" "after" "file" "anon"

taskset -c "$last" "$bin" run --config "$work/proxy.toml" --workers 1 >"$work/proxy.log" 2>&1 &
server=$!
wait_ready
measure "switchyard $policy" "$port" "${paths[@]}"

nginx_port=$(free_port)
nginx_peer_config "$nginx_port"
taskset -c "$last" nginx -c "$work/peer.conf" -e "$work/peer-error.log" &
server=$!
wait_ready "$nginx_port"
measure nginx "$nginx_port"

pingora_bin="${PINGORA_BIN:-${CARGO_TARGET_DIR:-$PWD/bench/pingora/target}/release/pingora-lb-bench}"
if [[ -x "$pingora_bin" ]]; then
    pingora_port=$(free_port)
    taskset -c "$last" "$pingora_bin" --threads 1 --listen "127.0.0.1:$pingora_port" \
        --backend "127.0.0.1:$b1" --backend "127.0.0.1:$b2" --backend "127.0.0.1:$b3" \
        >"$work/pingora.log" 2>&1 &
    server=$!
    wait_ready "$pingora_port"
    measure pingora "$pingora_port"
fi

echo
echo "switchyard's heap at its peak under the same load (heaptrack), largest holders:"
TOKIO_WORKER_THREADS=1 heaptrack -o "$work/heap" "$bin" run --config "$work/proxy.toml" --workers 1 \
    >"$work/heaptrack.log" 2>&1 &
ht=$!
wait_ready
taskset -c "$others" wrk -t1 -c64 -d4s "http://127.0.0.1:$port/" >/dev/null
pkill -TERM -P "$ht" switchyard 2>/dev/null || true
wait "$ht" || true
heaptrack_print -f "$work"/heap.*z* --print-peaks 1 --print-allocators 0 --print-temporary 0 \
    --print-leaks 0 --peak-limit 8 2>/dev/null | python3 -c '
import re, sys
lines = [l.rstrip() for l in sys.stdin]
clean = lambda f: re.sub(r"::h[0-9a-f]{16}$", "", f.strip()).replace("$LT$", "<").replace("$GT$", ">").replace("$u7b$$u7b$closure$u7d$$u7d$", "{closure}").replace("$C$", ",")
for i, l in enumerate(lines):
    m = re.match(r"^(\S+) peak memory consumed over (\d+) calls from$", l)
    if m:
        caller = lines[i + 4] if i + 4 < len(lines) else ""
        print(f"  {m.group(1):>8}  {clean(lines[i + 1])}\n            from {clean(caller)}")
'
