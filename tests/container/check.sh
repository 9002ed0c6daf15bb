#!/usr/bin/env bash
# Builds the container image from a static binary built on this machine,
# checks its size, then runs it as a container and proxies a request
# through it. Not part of ./test.sh: the static release build compiles
# wasmtime a second time (~10 min on 2 cores), which the test command's
# budget does not allow. Run it after changing the Containerfile:
#
#   tests/container/check.sh                 # build the binary, then check
#   SWITCHYARD_STATIC_BIN=path tests/container/check.sh
#
# Needs podman (Debian package). It runs the image with `podman run`; where
# that cannot set resource limits (some sandboxes refuse setrlimit inside a
# container), it runs the same image with runc and an OCI spec without
# rlimits, and says so.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '== %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

command -v podman >/dev/null || fail "podman is not installed (apt-get install podman)"

# 1. The static binary.
bin=${SWITCHYARD_STATIC_BIN:-}
if [ -z "$bin" ]; then
    say "building a static release binary"
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --locked -p switchyard --target x86_64-unknown-linux-gnu
    bin="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/switchyard"
fi
file "$bin" | grep -Eq "statically linked|static-pie linked" || fail "$bin is not statically linked"
mkdir -p container-bin
cp "$bin" container-bin/switchyard
strip container-bin/switchyard

# 2. The image.
image=localhost/switchyard:check
say "building $image"
podman build -q --build-arg BINARY_FROM=prebuilt -t "$image" . >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$image")
say "image size: $((size / 1024 / 1024)) MiB ($size bytes)"
((size <= 40 * 1024 * 1024)) || fail "the image is over 40 MiB"
user=$(podman image inspect --format '{{.Config.User}}' "$image")
[ "$user" = "65532:65532" ] || fail "the image runs as '$user', not 65532:65532"

# 3. Run it: a backend on the host, the proxy in the container (host
# network), one request through it.
work=$(mktemp -d)
backend_pid=""
cleanup() {
    [ -n "$backend_pid" ] && kill "$backend_pid" 2>/dev/null || true
    podman rm -f sy-check >/dev/null 2>&1 || true
    runc delete -f sy-check >/dev/null 2>&1 || true
    rm -rf "$work" container-bin
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bport=$(port)
pport=$(port)
mkdir -p "$work/www" && echo "hello from the backend" > "$work/www/index.html"
python3 -m http.server "$bport" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
backend_pid=$!
cat > "$work/switchyard.toml" <<EOF
[server]
listen = "127.0.0.1:$pport"
[upstreams.app]
policy = "weighted"
backends = [{ name = "app", address = "127.0.0.1:$bport" }]
EOF

how=podman
if ! podman run -d --name sy-check --network host \
    -v "$work/switchyard.toml:/etc/switchyard/switchyard.toml:ro" "$image" >/dev/null 2>"$work/podman.err" \
    || ! sleep 1 || [ "$(podman inspect --format '{{.State.Running}}' sy-check 2>/dev/null)" != true ]; then
    say "podman run failed: $(tail -1 "$work/podman.err")"
    command -v runc >/dev/null || fail "podman cannot run the image and runc is not installed"
    how=runc
    podman rm -f sy-check >/dev/null 2>&1 || true
    bundle="$work/bundle"
    mkdir -p "$bundle/rootfs"
    cid=$(podman create "$image")
    podman export "$cid" | tar -C "$bundle/rootfs" -xf -
    podman rm "$cid" >/dev/null
    cp "$work/switchyard.toml" "$bundle/rootfs/etc/switchyard/switchyard.toml"
    (cd "$bundle" && runc spec)
    python3 - "$bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
c = json.load(open(path))
p = c["process"]
p.pop("rlimits", None)
p["terminal"] = False
p["user"] = {"uid": 65532, "gid": 65532}
p["args"] = ["/usr/local/bin/switchyard", "run", "--config", "/etc/switchyard/switchyard.toml"]
p["env"] = ["SWITCHYARD_CACHE_DIR=/var/cache/switchyard", "PATH=/usr/local/bin"]
c["root"]["readonly"] = False
# The host's network, as `podman run --network host`.
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
json.dump(c, open(path, "w"))
PY
    (cd "$bundle" && runc run -d sy-check >"$work/runc.log" 2>&1) || fail "runc run failed: $(cat "$work/runc.log")"
fi

say "proxy running in a container ($how); asking it"
ok=""
for _ in $(seq 50); do
    if out=$(curl -fsS "http://127.0.0.1:$pport/" 2>/dev/null); then ok=1; break; fi
    sleep 0.2
done
if [ -z "$ok" ]; then
    if [ "$how" = runc ]; then cat "$work/runc.log" >&2; else podman logs sy-check >&2 || true; fi
    fail "no answer through the containerized proxy"
fi
[ "$out" = "hello from the backend" ] || fail "unexpected answer: $out"
pid=$(pgrep -f "switchyard run --config /etc/switchyard/switchyard.toml" | head -1)
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 65532 ] || fail "the proxy runs as uid $uid"
if [ "$how" = runc ]; then
    ls "$bundle/rootfs/var/cache/switchyard" | grep -q . || fail "nothing in the policy cache volume"
fi
say "ok: $((size / 1024 / 1024)) MiB image, non-root (uid $uid), proxied a request (run with $how)"
