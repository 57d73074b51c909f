#!/usr/bin/env bash
# HTTP/JSON (`--http-listen`) against the release sidecar with h2load over HTTP/1.1: Check
# (permission and HTTP path) and a 100-item CheckBatch, CONNS keep-alive connections, N requests
# each. The figures are throughput on this machine with h2load on the same cores; the gRPC
# figures of the same calls are in BENCHMARKS.md (authz-load).
#
#   bench/http-json.sh                  # N=20000 CONNS=8
#   N=50000 CONNS=16 bench/http-json.sh
#   AUTHZ_BIN=/path/to/authz-sidecar bench/http-json.sh
#
# Last line: `http-json: check A req/s, http B req/s, batch C items/s`.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000}
CONNS=${CONNS:-8}
PORT=${PORT:-47180}
BIN=${AUTHZ_BIN:-target/release/authz-sidecar}
if ! command -v h2load >/dev/null; then
  echo "installing h2load (nghttp2-client)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q nghttp2-client >/dev/null
  else sudo apt-get install -y -q nghttp2-client >/dev/null; fi
fi
[ -x "$BIN" ] || cargo build --release --bin authz-sidecar

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
"$BIN" --listen 127.0.0.1:0 --http-listen "127.0.0.1:$PORT" --data-dir "$work/data" \
  2>"$work/log" &
pid=$!
for _ in $(seq 100); do
  curl -s -o /dev/null -H 'content-type: application/json' -d '{}' \
    "http://127.0.0.1:$PORT/v1/listRoles" && break
  sleep 0.1
done

echo '{"subject":"dashboard","permission":"devices:read"}' >"$work/check.json"
echo '{"subject":"dashboard","http":{"method":"GET","path":"/v1/devices/d1"}}' >"$work/http.json"
python3 - "$work/batch.json" <<'PY'
import json, sys
item = {"subject": "dashboard", "permission": "devices:read"}
json.dump({"items": [item] * 100}, open(sys.argv[1], "w"))
PY

rate() { # body file, path -> req/s
  h2load --h1 -n "$N" -c "$CONNS" -d "$1" -H 'content-type: application/json' \
    "http://127.0.0.1:$PORT$2" | tee "$work/h2load.out" >&2
  grep -q "status codes: $N 2xx" "$work/h2load.out" || { echo "h2load: not all 2xx" >&2; exit 1; }
  awk '/^finished in/ { gsub(",", "", $4); print int($4) }' "$work/h2load.out"
}
check=$(rate "$work/check.json" /v1/check)
http=$(rate "$work/http.json" /v1/check)
batch=$(rate "$work/batch.json" /v1/checkBatch)
echo "http-json: check $check req/s, http $http req/s, batch $((batch * 100)) items/s"
