#!/usr/bin/env bash
# Seeding cost: starts the release binary on an empty data dir with a policy file of about
# SIZE bytes (the embedded example plus generated app subjects), and reports the time until it
# serves, its peak RSS (VmHWM) and the ratio of peak RSS to the file's size.
#
#   bench/seed-memory.sh [SIZE]      # default 1048576 (1 MiB, the ConfigMap maximum)
#
# Last line: `seed-memory: FILE bytes, N subjects, T ms to serving, peak RSS R MiB (ratio X)`.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${1:-1048576}"
cargo build --release --quiet --bin authz-sidecar
BIN=target/release/authz-sidecar
WORK="$(mktemp -d)"
trap 'kill "${PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

POLICY="$WORK/policy.yaml"
cp examples/monitoring-apps.yaml "$POLICY"
# Generated subjects up to SIZE bytes (one line too many is left out).
awk -v have="$(stat -c %s "$POLICY")" -v size="$SIZE" 'BEGIN {
  for (n = 0; ; n++) {
    # The shape of the shortest subject line, so the most subjects a file of SIZE can hold.
    line = sprintf("  - {id: s%d, type: app, roles: []}", n)
    if (have + length(line) + 1 > size) break
    print line
    have += length(line) + 1
  }
}' >> "$POLICY"
n=$(grep -c "^  - {id: s[0-9]" "$POLICY")
BYTES=$(stat -c %s "$POLICY")

start=$(date +%s%N)
AUTHZ_ADMIN_TOKEN=bench-token "$BIN" --listen 127.0.0.1:0 --data-dir "$WORK/data" \
  --policy "$POLICY" --log-format plain 2> "$WORK/log" &
PID=$!
until grep -q "serving" "$WORK/log"; do
  if ! kill -0 "$PID" 2>/dev/null; then cat "$WORK/log" >&2; exit 1; fi
  sleep 0.01
done
ms=$(( ($(date +%s%N) - start) / 1000000 ))
hwm_kib=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
kill "$PID"; wait "$PID" || true
awk -v b="$BYTES" -v n="$n" -v ms="$ms" -v k="$hwm_kib" 'BEGIN {
  printf "seed-memory: %d bytes, %d subjects, %d ms to serving, peak RSS %.1f MiB (ratio %.0f)\n",
    b, n, ms, k / 1024, k * 1024 / b }'
