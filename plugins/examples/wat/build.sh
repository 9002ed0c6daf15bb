#!/usr/bin/env bash
# Builds policy.wasm from hand-written WebAssembly text: `switchyard policy
# componentize` parses it, embeds the switchyard:policy world and makes the
# component (about 1 KB).
set -euo pipefail
cd "$(dirname "$0")"
# The switchyard to use: $SWITCHYARD, else the one on PATH, else the one
# that wrote this project (`switchyard policy new` puts its path here).
switchyard=${SWITCHYARD:-$(command -v switchyard || echo "@SWITCHYARD@")}
[ -x "$switchyard" ] || {
    echo "switchyard not found: install it ('cargo install --path host' in the Switchyard repository) or set SWITCHYARD=/path/to/switchyard" >&2
    exit 1
}
"$switchyard" policy componentize policy.wat -o policy.wasm
echo "built $(pwd)/policy.wasm"
