#!/usr/bin/env bash
# Two Switchyard targets measured at the same time: both proxies pinned to
# the last CPU, each loaded by its own wrk (32 keep-alive connections) on
# the other CPUs, CPU per request read from each one's /proc/PID/stat. On a
# shared VM the machine's speed moves by 10-30% from one round to the next,
# which buries a 5% difference measured in turns (bench/compare.sh,
# bench/split.sh); run side by side, both targets see the same machine at
# every moment and their ratio holds within 1-2% round to round (the same
# target as A and B measured 0.98-0.99). The absolute figures are higher
# than a proxy's alone (the two share one core and its caches): use the
# ratio, and run a comparison both ways round (swap A and B) to cancel
# any bias of a position.
#
#   bench/pair.sh                                  # Wasm against native round-robin
#   bench/pair.sh weighted native:round-robin      # any two policies
#   A_BIN=old/switchyard bench/pair.sh round-robin round-robin   # two builds
#   A_ENV="SWITCHYARD_LOG=warn" bench/pair.sh      # environment for A only
#   B_EXTRA=$'shared-state = "redis"\n[state]\nredis = "redis://127.0.0.1:6379"' \
#       bench/pair.sh round-robin round-robin      # TOML appended to B's config
#   ROUNDS=10 SECONDS_LOADED=4 bench/pair.sh
#
# Needs wrk, nginx, curl, taskset (apt: wrk nginx-light).
set -euo pipefail
cd "$(dirname "$0")/.."
policy_a=${1:-round-robin}
policy_b=${2:-native:round-robin}
rounds=${ROUNDS:-10}
seconds=${SECONDS_LOADED:-4}

[ -n "${SWITCHYARD_BIN:-}" ] || cargo build --release --quiet
. bench/lib.sh
need wrk nginx curl taskset python3
pin_cpus
BACKEND_PIN="taskset -c $others" start_backends
bin_a=${A_BIN:-$bin}
bin_b=${B_BIN:-$bin}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; cleanup' EXIT

# start NAME BIN POLICY ENV: a proxy for POLICY on a port of its own
# ($started_port, its pid last in $pids).
start() {
    started_port=$(free_port)
    proxy_config "$3"
    sed "s/127.0.0.1:$port\"/127.0.0.1:$started_port\"/" "$work/proxy.toml" >"$work/$1.toml"
    # Lines for the upstream (the template's last table), then any tables.
    printf '%s\n' "${5:-}" >>"$work/$1.toml"
    # shellcheck disable=SC2086 # ENV is a list of NAME=VALUE words
    env ${4:-} taskset -c "$last" "$2" run --config "$work/$1.toml" --workers 1 \
        >"$work/$1.log" 2>&1 &
    pids+=($!)
    wait_ready "$started_port"
}
start a "$bin_a" "$policy_a" "${A_ENV:-}" "${A_EXTRA:-}"
port_a=$started_port
start b "$bin_b" "$policy_b" "${B_ENV:-}" "${B_EXTRA:-}"
port_b=$started_port
pid_a=${pids[0]} pid_b=${pids[1]}
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# load SECONDS FIRST: both wrk runs at once, FIRST (a or b) started first;
# their outputs in $work/w{a,b}.txt.
load() {
    local second=b w
    [ "$2" = a ] || second=a
    wrk_to "$2" "$1" &
    w=$!
    wrk_to "$second" "$1"
    wait "$w"
}
wrk_to() {
    local p=$port_a
    [ "$1" = a ] || p=$port_b
    taskset -c "$others" wrk -t1 -c32 -d"$2s" "http://127.0.0.1:$p/" >"$work/w$1.txt"
}

echo "A: $policy_a ($bin_a${A_ENV:+, $A_ENV}${A_EXTRA:+, ${A_EXTRA//$'\n'/; }})"
echo "B: $policy_b ($bin_b${B_ENV:+, $B_ENV}${B_EXTRA:+, ${B_EXTRA//$'\n'/; }})"
load 2 a
for r in $(seq "$rounds"); do
    a0=$(cpu "$pid_a") b0=$(cpu "$pid_b")
    # Which load starts first alternates, so neither side always leads.
    if ((r % 2)); then load "$seconds" a; else load "$seconds" b; fi
    a1=$(cpu "$pid_a") b1=$(cpu "$pid_b")
    na=$(awk '/requests in/ {print $1}' "$work/wa.txt")
    nb=$(awk '/requests in/ {print $1}' "$work/wb.txt")
    errors=$(cat "$work/wa.txt" "$work/wb.txt" | awk '/Non-2xx|Socket errors/ {e++} END {print e + 0}')
    echo "$((a1 - a0)) $na $((b1 - b0)) $nb $errors" >>"$work/rounds"
    awk -v t="$ticks" '{ a = $1 / t * 1e6 / $2; b = $3 / t * 1e6 / $4;
        printf "A %6.2f µs/req (%d)   B %6.2f µs/req (%d)   A/B %.3f%s\n", a, $2, b, $4, a / b,
            ($5 ? "   (errors!)" : "") }' <(tail -1 "$work/rounds")
done
python3 - "$work/rounds" "$ticks" <<'EOF'
import statistics, sys
t = float(sys.argv[2])
ratios = [(ca / na) / (cb / nb) for ca, na, cb, nb, _ in
          (map(float, line.split()) for line in open(sys.argv[1]))]
print(f"CPU per request, A/B: median {statistics.median(ratios):.3f}, "
      f"range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds")
EOF
