#!/usr/bin/env bash
# Builds policy.wasm with componentize-js (a 12 MB component that embeds
# SpiderMonkey; the proxy compiles it once, ~10 s, then loads it from its
# cache).
set -euo pipefail
cd "$(dirname "$0")"
switchyard=${SWITCHYARD:-switchyard}
[ -d wit ] || "$switchyard" policy wit wit
[ -d node_modules/@bytecodealliance/componentize-js ] || {
    echo "run 'npm install' here first" >&2
    exit 1
}
node build.mjs
echo "built $(pwd)/policy.wasm"
