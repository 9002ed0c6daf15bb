#!/usr/bin/env bash
# Builds Pingora's round-robin load balancer for bench/compare.sh (release
# profile: fat LTO, one codegen unit). Its own project and lock file, outside
# Switchyard's workspace; the binary lands in bench/pingora/target/release/
# (or $CARGO_TARGET_DIR/release/), where compare.sh looks for it.
# Needs cmake and a C compiler (zlib-ng, which Pingora compresses with);
# no OpenSSL or BoringSSL. About 5 min on 2 busy cores.
set -euo pipefail
cd "$(dirname "$0")"
command -v cmake >/dev/null || { echo "$0: cmake is missing (apt-get install cmake)" >&2; exit 1; }
cargo build --release --locked "$@"
echo "built: ${CARGO_TARGET_DIR:-$PWD/target}/release/pingora-lb-bench"
