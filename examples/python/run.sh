#!/usr/bin/env bash
# Runs client.py against a live blue-authz on the demo data, over Unix sockets (no ports to
# collide with), then list_page.py (a list page in PostgreSQL filtered by a plan) when
# PostgreSQL answers. Creates a virtual environment with grpcio and psycopg first. Usage:
#   examples/python/run.sh [path/to/blue-authz]
# The default binary is the one the README's commands build (target/debug/blue-authz, which
# `cargo test` builds too), else a release build (target/release/blue-authz).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [ $# -ge 1 ]; then
  bin="$1"
elif [ -x "$root/target/debug/blue-authz" ]; then
  bin="$root/target/debug/blue-authz"
elif [ -x "$root/target/release/blue-authz" ]; then
  bin="$root/target/release/blue-authz"
else
  echo "run.sh: no blue-authz binary; build it with: cargo build" >&2
  exit 2
fi
venv="${BLUE_AUTHZ_PY_VENV:-$root/target/python-venv}"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"

work="$(mktemp -d)"
token="example-token-$$"
"$bin" --policies "$root/policies" serve \
  --listen '' --listen-unix "$work/authz.sock" \
  --http-listen '' --data-listen '' --data-listen-unix "$work/data.sock" --data-token "$token" \
  --db "$work/authz.redb" --seed "$root/data/demo.json" --watch false \
  2>"$work/server.log" &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
  [ -S "$work/authz.sock" ] && [ -S "$work/data.sock" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.1
done

# After the README's own write example, as a reader who followed the README would run it.
if ! "$venv/bin/python" "$here/client.py" --after-readme-write \
  --authz "unix:$work/authz.sock" --data "unix:$work/data.sock" --token "$token"; then
  echo "--- server log"; cat "$work/server.log"; exit 1
fi

# A list page in PostgreSQL filtered by a plan (list_page.py), when PostgreSQL answers.
pg="${BLUE_AUTHZ_EXAMPLE_PG:-host=127.0.0.1 port=5432 dbname=test user=postgres}"
if "$venv/bin/python" -c "import psycopg, sys; psycopg.connect(sys.argv[1]).close()" "$pg" 2>/dev/null; then
  if ! (cd "$here" && "$venv/bin/python" list_page.py --authz "unix:$work/authz.sock" --pg "$pg"); then
    echo "--- server log"; cat "$work/server.log"; exit 1
  fi
elif [ "${CI:-}" = "true" ]; then
  echo "run.sh: PostgreSQL does not answer ($pg); list_page.py needs it in CI" >&2
  exit 1
else
  echo "*** SKIPPED list_page.py: PostgreSQL does not answer ($pg) ***" >&2
fi
