#!/usr/bin/env bash
# The per-language cost table of the README: builds the canary template in
# each language (timing the build), then benchmarks size, load time (cold
# and cached) and the cost of one decision.
#
#   bench/languages.sh            # needs the toolchains .ci/run installs
#
# Output: build times here, then criterion's figures and a table from
# `cargo bench --bench languages`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
export SWITCHYARD="$PWD/target/release/switchyard"
echo "| language | build |"
echo "| --- | --- |"
for lang in rust python js c wat; do
    dir=plugins/examples/$lang
    rm -f "$dir/policy.wasm"
    [ "$lang" = js ] && [ ! -d "$dir/node_modules" ] && (cd "$dir" && npm ci --silent)
    start=$(date +%s.%N)
    if "$dir/build.sh" >/dev/null 2>&1; then
        printf '| %s | %.1f s |\n' "$lang" "$(echo "$(date +%s.%N) - $start" | bc)"
    else
        printf '| %s | failed (toolchain missing?) |\n' "$lang"
    fi
done
cargo bench -p switchyard --bench languages
