#!/usr/bin/env bash
# Builds policy.wasm from hand-written WebAssembly text: `switchyard policy
# componentize` parses it, embeds the switchyard:policy world and makes the
# component (about 1 KB).
set -euo pipefail
cd "$(dirname "$0")"
switchyard=${SWITCHYARD:-switchyard}
"$switchyard" policy componentize policy.wat -o policy.wasm
echo "built $(pwd)/policy.wasm"
