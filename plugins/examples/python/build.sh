#!/usr/bin/env bash
# Builds policy.wasm with componentize-py (an 18 MB component that embeds
# CPython; the proxy compiles it once, ~10 s, then loads it from its cache).
set -euo pipefail
cd "$(dirname "$0")"
# The switchyard to use: $SWITCHYARD, else the one on PATH, else the one
# that wrote this project (`switchyard policy new` puts its path here).
switchyard=${SWITCHYARD:-$(command -v switchyard || echo "@SWITCHYARD@")}
[ -x "$switchyard" ] || {
    echo "switchyard not found: install it ('cargo install --path host' in the Switchyard repository) or set SWITCHYARD=/path/to/switchyard" >&2
    exit 1
}
[ -d wit ] || "$switchyard" policy wit wit
componentize-py -d wit -w adaptive-policy componentize app -o policy.wasm
# CPython needs more than the proxy's defaults (4 MiB, 1 ms): say so in the
# component, so a config need not.
"$switchyard" policy limits policy.wasm --memory 64MiB --timeout 10ms
echo "built $(pwd)/policy.wasm"
