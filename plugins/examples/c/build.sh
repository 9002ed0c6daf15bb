#!/usr/bin/env bash
# Builds policy.wasm from C: bindings from `switchyard policy bindings`,
# clang for wasm32-wasi (reactor), then `switchyard policy componentize`.
# Only malloc/free come from wasi-libc, so the component imports no WASI.
set -euo pipefail
cd "$(dirname "$0")"
# The switchyard to use: $SWITCHYARD, else the one on PATH, else the one
# that wrote this project (`switchyard policy new` puts its path here).
switchyard=${SWITCHYARD:-$(command -v switchyard || echo "@SWITCHYARD@")}
[ -x "$switchyard" ] || {
    echo "switchyard not found: install it ('cargo install --path host' in the Switchyard repository) or set SWITCHYARD=/path/to/switchyard" >&2
    exit 1
}
cc=${CC:-clang-16}
"$switchyard" policy bindings --lang c gen
"$cc" --target=wasm32-wasi -mexec-model=reactor -O2 -Wl,--strip-all -Igen \
    -o core.wasm policy.c gen/policy.c gen/policy_component_type.o
"$switchyard" policy componentize core.wasm -o policy.wasm
echo "built $(pwd)/policy.wasm"
