#!/bin/bash
# Decisions beside back-to-back write batches (BENCHMARKS.md, issue 35 item 2): alternates a
# fresh server of each build on a fresh copy of `gen --scale 1` data, and runs one `bench`
# against each: decisions alone, decisions while batches of 10,000 upserts are written, and
# the writes alone. Prints bench's figures and, from the server's debug log, how long each
# batch held the decisions' lock (whole, or published and folded in steps).
#
#   benches/writes.sh BENCH_BIN OLD_BIN NEW_BIN /tmp/full.redb [runs] [extra serve flags]
#
# BENCH_FLAGS=--write-roles makes every batch change its users' roles (ancestors and all)
# instead of writing them again as they are.
#
# Run from the repository root (the policies are read from ./policies), alone on the machine.
set -euo pipefail
BENCH=$1 OLD=$2 NEW=$3 DB=$4 RUNS=${5:-3}
shift 5 || true
EXTRA=("$@")
LOG=$(mktemp) COPY=$(mktemp --suffix=.redb)
run() { # binary label
  cp "$DB" "$COPY"
  BLUE_AUTHZ_LOG=info,blue_authz::service::state=debug "$1" serve --db "$COPY" --seed '' \
    --listen 127.0.0.1:50061 --http-listen '' --data-listen 127.0.0.1:50062 \
    --data-token bench-token --watch false "${EXTRA[@]}" > "$LOG" 2>&1 &
  local pid=$!
  sync
  for _ in $(seq 1500); do grep -q 'cli::serve: serving' "$LOG" && break; sleep 0.2; done
  echo "== $2"
  "$BENCH" bench --addr 127.0.0.1:50061 --scale 1 --seed 42 --seconds 8 --concurrency 4 \
    --data-addr 127.0.0.1:50062 --data-token bench-token --write-ops 10000 --pid "$pid" ${BENCH_FLAGS:-} \
    | grep -E "IsAuthorized|writes|batch|p99" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # Per batch: the lock's longest hold (whole commit or publish, and the fold's longest step).
  grep 'batch visible' "$LOG" | sed -E 's/\x1b\[[0-9;]*m//g' | python3 -c '
import re, sys
rows = []
for line in sys.stdin:
    f = dict(re.findall(r"(\w+)=(\S+)", line))
    held = int(f.get("lock_held_us", 0))
    step = int(f.get("fold_step_max_us", 0)) if f.get("staged") == "true" else 0
    rows.append((f.get("staged", "-"), held, step, int(f.get("fold_steps", 0))))
if rows:
    first, rest = rows[0], rows[1:] or rows
    worst = sorted(max(h, s) for _, h, s, _ in rest)
    print(f"   first batch: staged {first[0]}, lock held {first[1]} us")
    staged = sum(r[0] == "true" for r in rest)
    print(f"   later {len(rest)} batches: staged {staged}, "
          f"longest hold per batch median {worst[len(worst)//2]} us, max {worst[-1]} us, "
          f"fold steps per batch {max(r[3] for r in rest)}")
'
}
for r in $(seq "$RUNS"); do
  run "$OLD" "old, run $r"
  run "$NEW" "new, run $r"
done
rm -f "$COPY" "$LOG"
