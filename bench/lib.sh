# Shared by bench/allocs.sh, bench/profile.sh and bench/split.sh: a temp
# dir, three nginx backends on free loopback ports, a proxy config for one
# policy, nginx as the peer proxy, and the CPU split.
# Source it; it sets $work, $bin, $port, $b1..$b3 and cleans up on exit.

bin="${SWITCHYARD_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/switchyard}"
work=$(mktemp -d -t switchyard-bench.XXXXXX)
backends_pid=
cleanup() {
    [ -n "$backends_pid" ] && kill "$backends_pid" 2>/dev/null
    if [ -n "${BENCH_KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$0: $tool is missing" >&2; exit 1; }
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The proxy under test gets the last CPU ($last), load and backends the
# others ($others), as in bench/run.sh.
pin_cpus() {
    last=$(($(nproc) - 1))
    others="0-$((last > 0 ? last - 1 : 0))"
}

# Starts one nginx (1 worker) answering on three ports, like bench/run.sh's.
start_backends() {
    b1=$(free_port) b2=$(free_port) b3=$(free_port) port=$(free_port)
    local bh2
    bh2=$(free_port)
    mkdir -p "$work/body" "$work/proxy"
    sed -e "s|{dir}|$work|g; s/{b1}/$b1/; s/{b2}/$b2/; s/{b3}/$b3/; s/{bh2}/$bh2/" \
        bench/configs/backends-nginx.conf.tmpl >"$work/backends.conf"
    ${BACKEND_PIN:-} nginx -c "$work/backends.conf" -e "$work/error.log" &
    backends_pid=$!
}

# Writes $work/proxy.toml for policy $1 (a built-in's name, native:NAME or
# a component's path; HTTP/1.1 on $port only) and compiles the policy into
# the cache, so the proxy starts warm.
proxy_config() {
    sed -e "s|POLICY|$1|; s/{port}/$port/; s/{b1}/$b1/; s/{b2}/$b2/; s/{b3}/$b3/" \
        -e 's/, "127.0.0.1:{h2port}"//' bench/configs/switchyard.toml.tmpl >"$work/proxy.toml"
    "$bin" check --config "$work/proxy.toml" >/dev/null
}

# Writes $work/peer.conf: nginx as the peer proxy (1 worker, round-robin
# over the backends) listening on port $1, h2c on $peer_h2port.
nginx_peer_config() {
    mkdir -p "$work/peer"
    peer_h2port=$(free_port)
    sed -e "s|{dir}|$work/peer|g; s/{workers}/1/; s/{lb}//; s/{port}/$1/; s/{h2port}/$peer_h2port/" \
        -e "s/{b1}/$b1/; s/{b2}/$b2/; s/{b3}/$b3/" bench/configs/nginx.conf.tmpl >"$work/peer.conf"
}

# Waits up to 10 s until the proxy (or whatever listens on port $1)
# answers.
wait_ready() {
    local p=${1:-$port}
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$p/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$0: nothing answers on port $p" >&2
    return 1
}
