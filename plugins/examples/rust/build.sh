#!/usr/bin/env bash
# Builds policy.wasm: a wasm32-unknown-unknown library made a component by
# `switchyard policy componentize` (no WASI, about 20 KB).
set -euo pipefail
cd "$(dirname "$0")"
switchyard=${SWITCHYARD:-switchyard}
cargo build --quiet --release --target wasm32-unknown-unknown
"$switchyard" policy componentize "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/canary_policy.wasm" -o policy.wasm
echo "built $(pwd)/policy.wasm"
