#!/usr/bin/env bash
# What Envoy's ext_authz check adds to a request, measured with h2load through a real Envoy,
# with and without the ext_authz filter, in the same run. Both Envoys answer from the route
# itself (`direct_response: 200`), so the difference is the check alone: Envoy -> blue-authz
# (its Unix socket) -> the decision -> back. blue-authz runs pinned to core 0 with one worker;
# Envoy and h2load share core 1.
#
#   benches/envoy.sh <blue-authz binary> <database> <envoy binary> [requests] [runs]
#
# The database is `gen --scale 1 --into-db`; the requests are GET /projects/{project} for
# projects the first generated user may view (found with an AuthZEN resource search).
set -euo pipefail
bin=$1 db=$2 envoy=$3 n=${4:-20000} runs=${5:-3}
root="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
taskset -c 0 "$bin" --policies "$root/policies" serve --db "$db" --listen 127.0.0.1:50199 \
  --listen-unix "$work/authz.sock" --http-listen 127.0.0.1:8199 --data-listen '' --watch false \
  --worker-threads 1 --log warn 2> "$work/authz.log" &
for _ in $(seq 1 600); do grep -q '"serving"' "$work/authz.log" && break; sleep 0.5; done
user=u0
projects=$(curl -s localhost:8199/access/v1/search/resource -H 'Content-Type: application/json' \
  -d "{\"subject\":{\"type\":\"user\",\"id\":\"$user\"},\"action\":{\"name\":\"viewProject\"},\"resource\":{\"type\":\"project\"}}" \
  | python3 -c 'import json,sys; print(" ".join(r["id"] for r in json.load(sys.stdin)["results"]))')
[ -n "$projects" ] || { echo "no project visible to $user" >&2; exit 1; }
for p in $projects; do echo "http://127.0.0.1:PORT/projects/$p"; done > "$work/uris.tmpl"
config() { # <name> <port> <admin port> <with ext_authz: yes|no>
  python3 - "$root/deploy/envoy/envoy.yaml" "$work/$1.yaml" "$2" "$3" "$4" "$work/authz.sock" <<'PY'
import sys
src, dst, port, admin, authz, sock = sys.argv[1:]
s = open(src).read()
s = s.replace("socket_address: { address: 0.0.0.0, port_value: 8080 }", f"socket_address: {{ address: 127.0.0.1, port_value: {port} }}")
s = s.replace("port_value: 9901", f"port_value: {admin}")
s = s.replace("/var/run/blue-authz/authz.sock", sock)
s = s.replace("route: { cluster: app }", "direct_response: { status: 200 }")
if authz == "no":
    start = s.index("                  - name: envoy.filters.http.ext_authz")
    end = s.index("                  - name: envoy.filters.http.router")
    s = s[:start] + s[end:]
open(dst, "w").write(s)
PY
}
config with 18081 19901 yes
config without 18082 19902 no
for name in with without; do
  taskset -c 1 "$envoy" -c "$work/$name.yaml" --disable-hot-restart --concurrency 1 \
    --log-level error --base-id $RANDOM 2> "$work/envoy-$name.log" &
done
port_of() { [ "$1" = with ] && echo 18081 || echo 18082; }
for name in with without; do
  for _ in $(seq 1 100); do
    curl -s -o /dev/null -w '%{http_code}' -H "x-user-id: $user" "http://127.0.0.1:$(port_of $name)/projects/${projects%% *}" | grep -q 200 && break
    sleep 0.2
  done
done
p() { # p50 and p99 (µs) of h2load's per-request log, and requests/s
  python3 - "$1" "$2" <<'PY'
import sys
d = sorted(int(l.rstrip("\n").split("\t")[-1]) for l in open(sys.argv[1]) if l.strip())
codes = set(l.split("\t")[1] for l in open(sys.argv[1]) if l.strip())
print(f"p50 {d[len(d)//2]:>6} µs  p99 {d[int(len(d)*0.99)]:>6} µs  {sys.argv[2]:>9} req/s  statuses {sorted(codes)}")
PY
}
for run in $(seq 1 "$runs"); do
  for name in without with; do
    for conc in 1 16; do
      sed "s/PORT/$(port_of $name)/" "$work/uris.tmpl" > "$work/uris"
      rm -f "$work/h2.log"
      out=$(taskset -c 1 h2load --h1 -n "$n" -c "$conc" -m 1 -H "x-user-id: $user" -i "$work/uris" --log-file "$work/h2.log")
      rps=$(echo "$out" | awk '/^finished in/ {print $4}')
      printf 'run %s  %-24s c=%-3s ' "$run" "ext_authz $name" "$conc"
      p "$work/h2.log" "$rps"
    done
  done
done
