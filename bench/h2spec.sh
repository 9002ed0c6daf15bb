#!/usr/bin/env bash
# HTTP/2 conformance of Switchyard, measured with h2spec
# (https://github.com/summerwind/h2spec, 146 cases in its default mode).
#
# What it does, all on 127.0.0.1:
#   1. finds an h2spec binary: $H2SPEC, else `h2spec` on PATH, else builds
#      one from the source checkout named by $H2SPEC_SRC into the cache dir
#      (GOPATH mode, with Debian's Go and Go library packages: no Go module
#      proxy is needed; built once per commit), else the one built there
#      before;
#   2. starts a small Python backend answering 200 with a short body to any
#      method (request bodies, plain or chunked, are read and dropped);
#   3. makes a self-signed certificate with openssl and starts
#      `switchyard run --config FILE` with one plain listener (HTTP/1.1 and
#      h2c with prior knowledge) and one TLS listener (h2 by ALPN);
#   4. runs `h2spec -p PORT` (h2c) and `h2spec -p TLSPORT -t -k` (TLS), reads
#      their JUnit reports and prints "h2c: P/T passed", "TLS: P/T passed" and
#      each failing case as id, description and h2spec's expected/actual;
#   5. stops everything it started (trap on exit).
#
# Exit status: 0 when the TLS listener passed every case (or at least N with
# --expect-tls N; likewise --expect-h2c N, which is unchecked by default),
# 1 when it did not, 2 when something needed is missing or did not start.
#
# How to run it (from anywhere; paths are relative to the repo):
#   cargo build --release
#   git clone https://github.com/summerwind/h2spec ~/src/h2spec    # once
#   H2SPEC_SRC=~/src/h2spec bench/h2spec.sh --install   # first time: apt-get
#   bench/h2spec.sh                                     # later: cached binary
#
# Options:
#   --install         apt-get install the Debian packages that are missing
#                     (with sudo when not root); without it they are listed
#   --expect-tls N    pass when the TLS listener passes at least N cases
#   --expect-h2c N    ... and the h2c listener at least N (default: no check)
#   --keep            keep the work dir (config, certs, logs, JUnit reports)
#   -- ARGS           further arguments for both h2spec runs (e.g. http2/6.9
#                     to run one section, -S for the strict cases too)
# Environment:
#   SWITCHYARD_BIN    the proxy binary (default: $CARGO_TARGET_DIR or
#                     target/, release build if present, else debug)
#   H2SPEC            an h2spec binary to use as is
#   H2SPEC_SRC        an h2spec source checkout to build from
#   XDG_CACHE_HOME    the build goes to ${XDG_CACHE_HOME:-~/.cache}/switchyard/h2spec
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prog=bench/h2spec.sh

install=0
keep=0
expect_tls=
expect_h2c=
extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --install) install=1 ;;
        --keep) keep=1 ;;
        --expect-tls) expect_tls=${2:?--expect-tls needs a number}; shift ;;
        --expect-tls=*) expect_tls=${1#*=} ;;
        --expect-h2c) expect_h2c=${2:?--expect-h2c needs a number}; shift ;;
        --expect-h2c=*) expect_h2c=${1#*=} ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "$prog: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for n in "$expect_tls" "$expect_h2c"; do
    [[ -z $n || $n =~ ^[0-9]+$ ]] || { echo "$prog: --expect-* takes a number, not '$n'" >&2; exit 2; }
done

die() { echo "$prog: $*" >&2; exit 2; }

# ---- Debian packages -------------------------------------------------------

# Prints the packages of "$@" that dpkg does not have installed.
missing_pkgs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

# Installs the packages "$@" with --install, else names them and exits 2.
ensure_pkgs() {
    [ $# -gt 0 ] || return 0
    if [ "$install" = 1 ]; then
        local sudo=
        [ "$(id -u)" = 0 ] || sudo=sudo
        echo "$prog: installing $*" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
    else
        echo "$prog: missing Debian packages: $*" >&2
        echo "  run again with --install, or: sudo apt-get install -y $*" >&2
        exit 2
    fi
}

# Tools used at run time; a tool found on PATH is fine wherever it came from.
runtime_missing=()
command -v python3 >/dev/null || runtime_missing+=(python3)
command -v openssl >/dev/null || runtime_missing+=(openssl)
ensure_pkgs "${runtime_missing[@]+"${runtime_missing[@]}"}"

# ---- h2spec ----------------------------------------------------------------

cache=${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/h2spec
go_pkgs=(golang-go golang-golang-x-net-dev golang-github-spf13-cobra-dev
    golang-github-fatih-color-dev golang-github-mattn-go-colorable-dev
    golang-github-mattn-go-isatty-dev golang-github-spf13-pflag-dev)

# Builds h2spec from $H2SPEC_SRC into $cache/h2spec in GOPATH mode against
# Debian's Go libraries in /usr/share/gocode (h2spec's go.mod pins versions
# that only a module proxy could bring; GO111MODULE=off ignores it). Skipped
# when the cached binary was built from the same commit.
build_h2spec() {
    local src rev version stamp gopath go
    src=$(cd "$H2SPEC_SRC" 2>/dev/null && pwd) || die "H2SPEC_SRC=$H2SPEC_SRC is not a directory"
    [ -f "$src/cmd/h2spec/h2spec.go" ] || die "$src is not an h2spec checkout (no cmd/h2spec/h2spec.go)"
    rev=$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)
    stamp="$rev $(git -C "$src" status --porcelain 2>/dev/null | md5sum | cut -c1-8)"
    if [ "$rev" != unknown ] && [ -x "$cache/h2spec" ] && [ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    # shellcheck disable=SC2046
    ensure_pkgs $(missing_pkgs "${go_pkgs[@]}")
    go=$(command -v go || echo /usr/lib/go/bin/go)
    [ -x "$go" ] || die "no go compiler (package golang-go)"
    version=$(sed -n 's/^VERSION=//p' "$src/Makefile" 2>/dev/null || true)
    gopath=$cache/gopath
    mkdir -p "$gopath/src/github.com/summerwind"
    ln -sfn "$src" "$gopath/src/github.com/summerwind/h2spec"
    echo "$prog: building h2spec ${version:-?} ($rev) into $cache" >&2
    (cd "$gopath/src/github.com/summerwind/h2spec" &&
        GO111MODULE=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode" GOCACHE="$cache/gocache" \
            "$go" build -ldflags "-X main.VERSION=${version:-unknown} -X main.COMMIT=$rev" \
            -o "$cache/h2spec.new" ./cmd/h2spec) ||
        die "the h2spec build failed (GOPATH mode, Go libraries from /usr/share/gocode)"
    mv -f "$cache/h2spec.new" "$cache/h2spec"
    echo "$stamp" >"$cache/stamp"
}

if [ -n "${H2SPEC:-}" ]; then
    [ -x "$H2SPEC" ] || die "H2SPEC=$H2SPEC is not an executable"
    h2spec=$H2SPEC
elif h2spec=$(command -v h2spec); then
    :
elif [ -n "${H2SPEC_SRC:-}" ]; then
    build_h2spec
    h2spec=$cache/h2spec
elif [ -x "$cache/h2spec" ]; then
    h2spec=$cache/h2spec
else
    cat >&2 <<EOF
$prog: no h2spec binary. Give one of:
  H2SPEC=/path/to/h2spec           a binary you have
  h2spec on PATH
  H2SPEC_SRC=/path/to/checkout     a source checkout to build from, made with
      git clone https://github.com/summerwind/h2spec
    (on a machine with GitHub access; copy the directory over otherwise).
    It builds offline with Debian's Go 1.19 and Go library packages:
      ${go_pkgs[*]}
    (add --install to have this script apt-get the missing ones). The binary
    is kept in $cache/h2spec and reused on later runs.
EOF
    exit 2
fi

# ---- switchyard ------------------------------------------------------------

if [ -n "${SWITCHYARD_BIN:-}" ]; then
    bin=$SWITCHYARD_BIN
else
    target=${CARGO_TARGET_DIR:-target}
    case $target in /*) ;; *) target=$repo/$target ;; esac
    bin=$target/release/switchyard
    [ -x "$bin" ] || bin=$target/debug/switchyard
fi
[ -x "$bin" ] || die "no switchyard binary at $bin: cargo build --release, or set SWITCHYARD_BIN"

# ---- work dir, processes, cleanup ------------------------------------------

work=$(mktemp -d -t switchyard-h2spec.XXXXXX)
backend_pid=
proxy_pid=
h2spec_pid=

stop() {   # stop PID: TERM, then KILL after 5 s
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -z "$h2spec_pid" ] || stop "$h2spec_pid"
    [ -z "$proxy_pid" ] || stop "$proxy_pid"
    [ -z "$backend_pid" ] || stop "$backend_pid"
    if [ "$keep" = 1 ]; then echo "$prog: kept $work" >&2; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until 127.0.0.1:$1 accepts connections, while process $2 lives
# (up to 60 s: a first start may compile the policy).
wait_listen() {
    local i
    for i in $(seq 1200); do
        kill -0 "$2" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

# The backend: HTTP/1.1 keep-alive, 200 and a short body for any method.
cat >"$work/backend.py" <<'EOF'
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"switchyard h2spec backend\n"

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __getattr__(self, name):          # do_GET, do_POST, any method
        if name.startswith("do_"):
            return self.answer
        raise AttributeError(name)

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass              # trailers
                    return
                self.rfile.read(size + 2)
        else:
            n = int(self.headers.get("Content-Length") or 0)
            while n > 0:
                got = self.rfile.read(min(n, 65536))
                if not got:
                    break
                n -= len(got)

    def answer(self):
        self.read_body()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(BODY)

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
EOF
python3 "$work/backend.py" "$work/backend.port" 2>"$work/backend.log" &
backend_pid=$!
for _ in $(seq 200); do
    [ -s "$work/backend.port" ] && break
    kill -0 "$backend_pid" 2>/dev/null || break
    sleep 0.05
done
[ -s "$work/backend.port" ] || { cat "$work/backend.log" >&2; die "the backend did not start"; }
backend_port=$(cat "$work/backend.port")

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/key.pem" -out "$work/cert.pem" -days 2 -subj /CN=localhost \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" 2>"$work/openssl.log" ||
    { cat "$work/openssl.log" >&2; die "openssl could not make a certificate"; }

port=$(free_port)
tls_port=$(free_port)
while [ "$tls_port" = "$port" ]; do tls_port=$(free_port); done
cat >"$work/switchyard.toml" <<EOF
[server]
listen = [ "127.0.0.1:$port", { address = "127.0.0.1:$tls_port", tls = { cert = "cert.pem", key = "key.pem" } } ]
watch = false
shutdown-grace = "1s"

[upstreams.app]
policy = "round-robin"
backends = [ { name = "py", address = "127.0.0.1:$backend_port" } ]
EOF

"$bin" run --config "$work/switchyard.toml" >"$work/switchyard.log" 2>&1 &
proxy_pid=$!
if ! wait_listen "$port" "$proxy_pid" || ! wait_listen "$tls_port" "$proxy_pid"; then
    tail -n 20 "$work/switchyard.log" >&2
    die "$bin did not listen on 127.0.0.1:$port and :$tls_port"
fi

echo "h2spec:     $h2spec ($("$h2spec" --version 2>/dev/null | sed 's/^Version: //'))"
echo "switchyard: $bin"
echo "listeners:  h2c 127.0.0.1:$port, TLS 127.0.0.1:$tls_port; backend 127.0.0.1:$backend_port"

# ---- the runs --------------------------------------------------------------

# Reads h2spec's JUnit report $1 and console log $2 and prints "passed total",
# then one line per failing case: "id<TAB>description<TAB>expected; actual".
# The report names a case's group (e.g. http2/3.5) but not its number in the
# group (the 2 of http2/3.5/2): that comes from the log, where each group's
# title is followed by its cases as "N: description"; both list the groups
# in the same order.
summarize() {
    python3 - "$1" "$2" <<'EOF'
import re, sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()

groups = []                               # [(title, {description: N})]
case_re = re.compile(r"^\s*(?:\S\s+)?(\d+): (.*)$")
with open(sys.argv[2], encoding="utf-8", errors="replace") as log:
    for line in log:
        line = line.rstrip("\n").split("\r")[-1]   # last redraw of the line
        if line.startswith("Failures:"):
            break
        m = case_re.match(line)
        if m and groups:
            groups[-1][1].setdefault(m.group(2).strip(), int(m.group(1)))
        elif line.strip():
            groups.append((line.strip(), {}))

passed = total = 0
failures = []
g = 0
for suite in root.iter("testsuite"):
    seqs = {}
    for j in range(g, len(groups)):       # this suite's group in the log
        if groups[j][0] == suite.get("name") and groups[j][1]:
            seqs, g = groups[j][1], j + 1
            break
    for i, case in enumerate(suite.findall("testcase"), 1):
        total += 1
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            lines = [l.strip() for l in (bad.text or "").strip().splitlines() if l.strip()]
            if len(lines) > 1:
                msg = "expected: " + " | ".join(lines[:-1]) + "; actual: " + lines[-1]
            else:
                msg = lines[0] if lines else "(no message)"
            desc = case.get("classname")
            failures.append("%s/%s\t%s\t%s" % (suite.get("package"), seqs.get(desc.strip(), i), desc, msg))
        elif case.find("skipped") is None:
            passed += 1
print(passed, total)
print("\n".join(failures))
EOF
}

# run_h2spec NAME PORT [h2spec flags]: sets $passed and $total.
run_h2spec() {
    local name=$1 rc=0 args
    args=(-h 127.0.0.1 -p "$2" "${@:3}" ${extra[@]+"${extra[@]}"})
    echo
    echo "== $name: $h2spec ${args[*]}"
    "$h2spec" "${args[@]}" -j "$work/$name.xml" >"$work/$name.log" 2>&1 &
    h2spec_pid=$!
    wait "$h2spec_pid" || rc=$?
    h2spec_pid=
    if [ ! -s "$work/$name.xml" ]; then
        tail -n 20 "$work/$name.log" >&2
        die "h2spec ($name) wrote no report (exit $rc)"
    fi
    kill -0 "$proxy_pid" 2>/dev/null ||
        { tail -n 20 "$work/switchyard.log" >&2; die "switchyard exited during the $name run"; }
    summarize "$work/$name.xml" "$work/$name.log" >"$work/$name.summary" ||
        die "could not read $work/$name.xml"
    read -r passed total <"$work/$name.summary"
    echo "$name: $passed/$total passed"
    tail -n +2 "$work/$name.summary" | while IFS=$'\t' read -r id desc msg; do
        [ -n "$id" ] || continue
        printf '  failed %s: %s\n      %s\n' "$id" "$desc" "$msg"
    done
}

run_h2spec h2c "$port"
h2c_passed=$passed h2c_total=$total
run_h2spec TLS "$tls_port" -t -k
tls_passed=$passed tls_total=$total

echo
echo "h2c: $h2c_passed/$h2c_total passed"
echo "TLS: $tls_passed/$tls_total passed"

status=0
need=${expect_tls:-$tls_total}
if [ "$tls_passed" -lt "$need" ]; then
    echo "$prog: TLS passed $tls_passed, expected at least $need" >&2
    status=1
fi
if [ -n "$expect_h2c" ] && [ "$h2c_passed" -lt "$expect_h2c" ]; then
    echo "$prog: h2c passed $h2c_passed, expected at least $expect_h2c" >&2
    status=1
fi
exit "$status"
