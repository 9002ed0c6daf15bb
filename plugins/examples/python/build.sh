#!/usr/bin/env bash
# Builds policy.wasm with componentize-py (an 18 MB component that embeds
# CPython; the proxy compiles it once, ~10 s, then loads it from its cache).
set -euo pipefail
cd "$(dirname "$0")"
switchyard=${SWITCHYARD:-switchyard}
[ -d wit ] || "$switchyard" policy wit wit
componentize-py -d wit -w policy componentize app -o policy.wasm
echo "built $(pwd)/policy.wasm"
