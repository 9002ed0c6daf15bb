#!/usr/bin/env bash
# Two Flask apps on 127.0.0.1:5001 and :5002 behind Switchyard on :8080,
# as in the classic nginx tutorial. Needs Flask: it uses the project's
# .venv (made by ./test.sh --setup) if there is one, else python3's own.
# Then: curl localhost:8080   (run it a few times)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=python3
[ -x "$root/.venv/bin/python3" ] && python="$root/.venv/bin/python3"

"$python" "$here/app.py" app1 5001 & app1=$!
"$python" "$here/app.py" app2 5002 & app2=$!
trap 'kill $app1 $app2 2>/dev/null' EXIT

cd "$root"
cargo run --quiet -- run --config config/flask-demo.toml
