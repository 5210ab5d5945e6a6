#!/bin/bash
# Ten times the data on one core (BENCHMARKS.md, issue 35): alternates a fresh server on a copy
# of `gen --scale 1` data and one on `gen --scale 10` data, each pinned to core 0 with one
# worker, and `bench` pinned to core 1; prints start-up to `serving`, RSS and bench's figures.
#
#   benches/scale10.sh target/release/blue-authz /tmp/full.redb /tmp/full10.redb [pairs]
#
# Run from the repository root (the policies are read from ./policies), alone on the machine.
set -euo pipefail
BIN=$1 DB1=$2 DB10=$3 PAIRS=${4:-3}
LOG=$(mktemp)
run() { # db scale label
  taskset -c 0 "$BIN" serve --db "$1" --seed '' --listen 127.0.0.1:50061 --http-listen '' \
    --data-listen '' --watch false --worker-threads 1 > "$LOG" 2>&1 &
  local pid=$! t0 t1
  t0=$(date +%s.%N)
  for _ in $(seq 1500); do grep -q 'cli::serve: serving' "$LOG" && break; sleep 0.2; done
  t1=$(date +%s.%N)
  echo "== $3: start to serving $(echo "$t1 - $t0" | bc) s, RSS $(awk '/VmRSS/ {print $2/1024 " MB"}' /proc/$pid/status)"
  taskset -c 1 "$BIN" bench --addr 127.0.0.1:50061 --scale "$2" --seed 42 --seconds 5 --pid "$pid" \
    | grep -E "request mix|empty|IsAuth|x "
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
COPY=$(mktemp --suffix=.redb)
for r in $(seq "$PAIRS"); do
  cp "$DB1" "$COPY"
  run "$COPY" 1 "scale 1, pair $r"
  run "$DB10" 10 "scale 10, pair $r"
done
rm -f "$COPY" "$LOG"
