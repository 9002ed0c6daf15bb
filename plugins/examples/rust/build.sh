#!/usr/bin/env bash
# Builds policy.wasm: a wasm32-unknown-unknown library made a component by
# `switchyard policy componentize` (no WASI, about 20 KB).
set -euo pipefail
cd "$(dirname "$0")"
# The switchyard to use: $SWITCHYARD, else the one on PATH, else the one
# that wrote this project (`switchyard policy new` puts its path here).
switchyard=${SWITCHYARD:-$(command -v switchyard || echo "@SWITCHYARD@")}
[ -x "$switchyard" ] || {
    echo "switchyard not found: install it ('cargo install --path host' in the Switchyard repository) or set SWITCHYARD=/path/to/switchyard" >&2
    exit 1
}
cargo build --quiet --release --target wasm32-unknown-unknown
"$switchyard" policy componentize "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/canary_policy.wasm" -o policy.wasm
echo "built $(pwd)/policy.wasm"
