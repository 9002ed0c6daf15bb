#!/usr/bin/env bash
# Switchyard against nginx, HAProxy, Caddy and Pingora, side by side on
# loopback: bench/run.sh (the harness, see bench/HARNESS.md) with Switchyard
# added as targets: the Wasm round-robin, weighted, sticky-session and
# least-request policies, and the same round-robin done natively (to see what
# the Wasm boundary costs). Pingora's round-robin load balancer
# (bench/pingora, built apart: bench/pingora/build.sh) is added when its
# binary exists, and skipped with a note when not.
#
#   bench/compare.sh --quick                  # 1 round of 3 s: ~2 min
#   bench/compare.sh                          # 3 rounds of 10 s: ~10 min
#   bench/compare.sh --only nginx --no-sticky # fewer peers
#   bench/compare.sh --workers 2 --no-pin     # both cores for each proxy
#   bench/compare.sh --baseline OLD_BINARY    # also an older switchyard (Wasm
#                                             # and native round-robin), same run
#   SWITCHYARD_BIN=PATH bench/compare.sh      # measure this binary, build nothing
#   bench/compare.sh --split --rounds 7       # only the Wasm and the native
#                                             # round-robin: the Wasm share, in
#                                             # more paired rounds
#   bench/compare.sh --adaptive --only nginx  # round-robin, least-request and
#                                             # native round-robin only
#   bench/compare.sh --no-pingora             # without Pingora
#   PINGORA_BIN=PATH bench/compare.sh         # this pingora-lb-bench binary
#                                             # (default: bench/pingora's
#                                             # target dir, or $CARGO_TARGET_DIR)
#
# Extra arguments go to bench/run.sh. Installs nginx, HAProxy, Caddy, wrk and
# h2load from Debian if missing. Writes bench/results/<time>.{md,json} and,
# with bench/chart.py, bench/results/<time>.svg.
set -euo pipefail
cd "$(dirname "$0")/.."

baseline=""
split=""
adaptive=""
pingora=1
args=()
while (($#)); do
    case "$1" in
        --baseline) baseline=$(realpath "$2"); shift 2 ;;
        --split) split=1; shift ;;
        --adaptive) adaptive=1; shift ;;
        --no-pingora) pingora=""; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
set -- "${args[@]+"${args[@]}"}"

if [[ -n "${SWITCHYARD_BIN:-}" ]]; then
    bin=$(realpath "$SWITCHYARD_BIN")
else
    cargo build --release --quiet
    bin="${CARGO_TARGET_DIR:-$PWD/target}/release/switchyard"
fi
work=$(mktemp -d -t switchyard-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

targets=()
if [[ -n "$split" ]]; then
    specs=("switchyard|round-robin|rr|$bin" "switchyard-native|native:round-robin|rr|$bin")
elif [[ -n "$adaptive" ]]; then
    specs=("switchyard|round-robin|rr|$bin" "switchyard-least-request|least-request|rr|$bin"
           "switchyard-native|native:round-robin|rr|$bin")
else
    specs=("switchyard|round-robin|rr|$bin" "switchyard-weighted|weighted|rr|$bin"
           "switchyard-sticky|sticky-session|cookie|$bin"
           "switchyard-least-request|least-request|rr|$bin"
           "switchyard-native|native:round-robin|rr|$bin")
fi
if [[ -n "$baseline" ]]; then
    specs+=("baseline|round-robin|rr|$baseline" "baseline-native|native:round-robin|rr|$baseline")
fi
for spec in "${specs[@]}"; do
    IFS='|' read -r name policy lb exe <<<"$spec"
    sed "s/POLICY/$policy/" bench/configs/switchyard.toml.tmpl > "$work/$name.toml.tmpl"
    # Warm the compiled-policy cache: `check` compiles and stores the policy.
    sed -e 's/{port}/0/; s/{h2port}/0/; s/{b[123]}/1/g' "$work/$name.toml.tmpl" > "$work/$name-check.toml"
    "$exe" check --config "$work/$name-check.toml" >/dev/null
    targets+=(--target "name=$name,lb=$lb,h2port=auto,conf=$work/$name.toml.tmpl,cmd=$exe run --config {config} --workers {workers}")
done

# Pingora: a peer in the full comparison only (--split and --adaptive compare
# Switchyard with itself and nginx). One service with --workers threads
# serves HTTP/1.1 and h2c on both ports (see bench/pingora/src/main.rs).
if [[ -n "$pingora" && -z "$split" && -z "$adaptive" ]]; then
    pingora_bin="${PINGORA_BIN:-${CARGO_TARGET_DIR:-$PWD/bench/pingora/target}/release/pingora-lb-bench}"
    if [[ -x "$pingora_bin" ]]; then
        pingora_bin=$(realpath "$pingora_bin")
        targets+=(--target "name=pingora,lb=rr,h2port=auto,cmd=$pingora_bin --threads {workers} --h2c --listen 127.0.0.1:{port} --listen 127.0.0.1:{h2port} --backend 127.0.0.1:{b1} --backend 127.0.0.1:{b2} --backend 127.0.0.1:{b3}")
    else
        echo "pingora: not built (bench/pingora/build.sh, or set PINGORA_BIN); skipped" >&2
    fi
fi

bench/run.sh "${targets[@]}" "$@"
latest=$(ls -t bench/results/*.json | head -1)
python3 bench/chart.py "$latest" "${latest%.json}.svg"
echo "chart: ${latest%.json}.svg"
