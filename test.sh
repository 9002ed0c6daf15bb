#!/usr/bin/env bash
# The test command: sets up what the tests need on this machine, then runs
# every test (`cargo test --workspace`).
#
#   ./test.sh                 # set up, then run all the tests
#   ./test.sh --setup         # set up only
#   ./test.sh -- FILTER ...   # extra arguments for cargo test
#
# What it sets up, each step skipped when already done:
#   - the wasm32-unknown-unknown target of the pinned toolchain (rustup);
#   - Debian packages: curl, python3 with venv, clang-16, lld-16, wasi-libc
#     and libclang-rt-16-dev-wasm32 (the C template), nodejs and npm (the
#     JavaScript template), docker-registry (the CNCF distribution registry
#     the OCI tests push policies to and pull them from; each test starts
#     its own on a free port), dnsmasq-base (the DNS server the DNS
#     discovery tests start on a free port), redis-server and redis-tools
#     (redis-cli) for the shared policy state tests, each starting its own
#     on free ports (one server, one serving TLS only, a 3-node cluster).
#     Installed with apt-get when run as root or with passwordless sudo;
#     otherwise it prints the command and stops;
#   - .venv/: a project-local Python environment with tests/requirements.txt
#     (Flask, websockets, h2, componentize-py), never the system's Python;
#   - plugins/examples/js/node_modules (npm ci).
set -euo pipefail
cd "$(dirname "$0")"

setup_only=false
cargo_args=()
while (($#)); do
    case "$1" in
        --setup) setup_only=true; shift ;;
        --) shift; cargo_args+=("$@"); break ;;
        *) cargo_args+=("$1"); shift ;;
    esac
done

say() { printf '== %s\n' "$*" >&2; }

# 1. The toolchain's wasm target (rustup's auto-install may be off).
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if command -v rustup >/dev/null; then
    if ! rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -qx wasm32-unknown-unknown; then
        say "adding the wasm32-unknown-unknown target to Rust $toolchain"
        rustup target add --toolchain "$toolchain" wasm32-unknown-unknown
    fi
fi

# 2. System packages.
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v clang-16 >/dev/null || missing+=(clang-16)
command -v wasm-ld-16 >/dev/null || missing+=(lld-16)
for pkg in wasi-libc libclang-rt-16-dev-wasm32; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
if ((${#missing[@]})); then
    install=(apt-get install -y -qq "${missing[@]}")
    if [ "$(id -u)" = 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo=(sudo)
    else
        say "missing Debian packages: ${missing[*]}"
        say "install them with: sudo apt-get update && sudo ${install[*]}"
        exit 1
    fi
    say "installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" "${install[@]}"
fi

# 3. The project's Python environment, rebuilt when the requirements change.
stamp=.venv/requirements.sha256
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python3 ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "setting up .venv with tests/requirements.txt"
    python3 -m venv .venv
    .venv/bin/python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    echo "$want" > "$stamp"
fi

# 4. The JavaScript template's packages.
js=plugins/examples/js
stamp=$js/node_modules/.package-lock.sha256
want=$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "npm ci in $js"
    (cd "$js" && npm ci --no-audit --no-fund --silent)
    echo "$want" > "$stamp"
fi

$setup_only && exit 0

# 5. The tests, with the project's Python first on PATH.
export PATH="$PWD/.venv/bin:$PATH"
exec cargo test --workspace --locked "${cargo_args[@]+"${cargo_args[@]}"}"
