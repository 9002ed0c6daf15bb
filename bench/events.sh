#!/usr/bin/env bash
# What the Wasm boundary costs besides the call itself: the Wasm
# round-robin and the native round-robin, in interleaved rounds (one
# worker pinned to the last CPU, wrk and the nginx backends on the others).
# Per request: user and kernel CPU (/proc/PID/stat), and from `perf stat`
# on the proxy the system calls, context switches, local timer interrupts
# and page faults. Then each target's median ratio to the native one in
# the same round, since on a shared VM the speed of the machine moves
# from one round to the next by more than the difference measured.
#
#   bench/events.sh                  # 6 rounds of 4 s
#   ROUNDS=10 SECONDS_LOADED=3 bench/events.sh
#   bench/events.sh weighted         # another policy against native
#
# Needs perf, wrk, nginx, curl, taskset (apt: linux-perf wrk nginx-light)
# and permission to count kernel events (root, or perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/.."
policy=${1:-round-robin}
rounds=${ROUNDS:-6}
seconds=${SECONDS_LOADED:-4}

[ -n "${SWITCHYARD_BIN:-}" ] || cargo build --release --quiet
. bench/lib.sh
need perf wrk nginx curl taskset
pin_cpus
BACKEND_PIN="taskset -c $others" start_backends
for p in "$policy" native:round-robin; do
    proxy_config "$p"
    mv "$work/proxy.toml" "$work/${p//:/_}.toml"
done
ticks=$(getconf CLK_TCK)
events=raw_syscalls:sys_enter,context-switches,irq_vectors:local_timer_entry,page-faults
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; cleanup' EXIT

# run TARGET CONFIG: one counted round, one line in $work/rows.
run() {
    taskset -c "$last" "$bin" run --config "$work/$2.toml" --workers 1 >"$work/proxy.log" 2>&1 &
    server=$!
    wait_ready
    taskset -c "$others" wrk -t1 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null
    local before after counter
    before=$(awk '{print $14, $15}' "/proc/$server/stat")
    perf stat -x, -e "$events" -p "$server" -o "$work/perf.txt" -- sleep $((seconds + 1)) &
    counter=$!
    taskset -c "$others" wrk -t1 -c64 -d"${seconds}s" "http://127.0.0.1:$port/" >"$work/wrk.txt"
    after=$(awk '{print $14, $15}' "/proc/$server/stat")
    wait "$counter"
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
    awk -F, -v name="$1" -v tick="$ticks" -v before="$before" -v after="$after" '
        FILENAME ~ /wrk/ && /requests in/ { split($0, w, " "); n = w[1] }
        FILENAME ~ /perf/ && $3 ~ /sys_enter/ { sc = $1 }
        FILENAME ~ /perf/ && $3 ~ /context-switches/ { cs = $1 }
        FILENAME ~ /perf/ && $3 ~ /local_timer/ { lt = $1 }
        FILENAME ~ /perf/ && $3 ~ /page-faults/ { pf = $1 }
        END {
            split(before, b, " "); split(after, a, " ")
            u = (a[1] - b[1]) / tick * 1e6 / n; k = (a[2] - b[2]) / tick * 1e6 / n
            printf "%s %d %.2f %.2f %.2f %.3f %.4f %.4f %.5f\n", name, n, u, k, u + k,
                sc / n, cs / n, lt / n, pf / n
        }' "$work/wrk.txt" "$work/perf.txt" >>"$work/rows"
    tail -1 "$work/rows"
}

echo "per request: target requests user_us kernel_us total_us syscalls ctx_switches timer_irqs page_faults"
for _ in $(seq "$rounds"); do
    run "$policy" "$policy"
    run native native_round-robin
done

python3 - "$work/rows" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
names = list(dict.fromkeys(r[0] for r in rows))
cols = ["user_us", "kernel_us", "total_us", "syscalls", "ctx_switches", "timer_irqs", "page_faults"]
by = {n: [list(map(float, r[2:])) for r in rows if r[0] == n] for n in names}
print("\nmedians per request")
print(f"{'target':28}" + "".join(f"{c:>13}" for c in cols))
for n in names:
    print(f"{n:28}" + "".join(f"{statistics.median(v[i] for v in by[n]):13.4g}" for i in range(len(cols))))
native = by["native"]
print("\ntotal CPU per request / native's, same round: median (per round)")
for n in names[:-1]:
    ratios = [a[2] / b[2] for a, b in zip(by[n], native)]
    print(f"{n:28} {statistics.median(ratios):.3f} ({', '.join(f'{r:.2f}' for r in ratios)})")
EOF
