#!/usr/bin/env bash
# Instructions per request of moat, counted by valgrind's callgrind: exact
# and repeatable where wall clock on this shared machine is noisy.
#
#   benches/load/callgrind.sh [MOAT_BIN ...]     # default target/release/moat
#   N=2000 PROTOS="h1 h2" benches/load/callgrind.sh old/moat new/moat
#
# For each binary: a keep-alive nginx backend (`return 200 "ok\n"`), moat
# under callgrind with the HTTPS service of run.sh (TLS 1.3, no resumption,
# source allowlist, audit_allowed = false; pinned to cpu0 like run.sh, so
# moat runs tokio's current-thread scheduler; h2load on cpu1), then per
# protocol one h2load connection (h1: `--h1 -m1`, h2: `-m10`):
#   1. zero the counters, N0 requests, dump   -> A (one connection + N0)
#   2. N0 + N requests, dump                  -> B (one connection + N0 + N)
# and prints B/(N0+N) (whole connection, handshake included, per request)
# and (B - A)/N, the marginal instructions per request (handshake and
# connection audit cancel out). Every thread of the moat process counts.
# Top functions: callgrind_annotate on B (files kept under OUT).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${N:-2000}
N0=${N0:-200}
PROTOS=${PROTOS:-h1 h2}
OUT=${OUT:-$ROOT/benches/load/results/callgrind}
[ $# -gt 0 ] || set -- "$ROOT/target/release/moat"
for t in valgrind callgrind_control callgrind_annotate h2load nginx python3 bc taskset; do
  command -v "$t" >/dev/null || { echo "callgrind.sh: needs $t" >&2; exit 1; }
done
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

P_B=$(port)
mkdir -p "$WORK/backend"
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000000;
  server { listen 127.0.0.1:$P_B; location / { return 200 "ok\n"; } }
}
EOF
taskset -c 0 nginx -p "$WORK/backend/" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf" &
PIDS+=($!)
wait_port "$P_B"

# "$DUMP" A: the callgrind out file of the last dump
last_dump() { ls -t "$1".* 2>/dev/null | head -n1; }
total_ir() { awk '/^summary:|^totals:/ {print $2; exit}' "$1"; }

printf '%-10s %-4s %14s %14s %12s %12s\n' binary proto "A (conn+N0)" "B (conn+N0+N)" "B/(N0+N)" "(B-A)/N"
for bin in "$@"; do
  tag=$(basename "$(dirname "$(dirname "$(dirname "$bin")")")")  # <tree>/target/release/moat -> <tree>
  d="$WORK/$tag"; mkdir -p "$d"
  "$bin" certs dev "$d/certs" >/dev/null
  P_M=$(port); P_A=$(port)
  cat >"$d/moat.toml" <<EOF
[gateway]
audit_log = "$d/audit.log"
shutdown_grace = "1s"
[admin]
listen = "127.0.0.1:$P_A"
[networks.loopback]
cidrs = ["127.0.0.0/8"]
[[device]]
id = "bench-backend"
name = "Load benchmark backend"
  [[device.service]]
  name = "https"
  protocol = "http"
  listen = "127.0.0.1:$P_M"
  upstream = "127.0.0.1:$P_B"
  allow = ["loopback"]
    [device.service.tls]
    certificates = [{ cert = "$d/certs/server.pem", key = "$d/certs/server.key" }]
    min_version = "1.3"
    session_resumption = false
    [device.service.http]
    audit_allowed = false
EOF
  "$bin" check -c "$d/moat.toml" >/dev/null
  cg="$OUT/callgrind.$tag"
  rm -f "$cg".*
  MOAT_LOG=warn taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$cg.%p" \
    "$bin" run -c "$d/moat.toml" >"$d/moat.out" 2>"$d/moat.err" &
  vpid=$!; PIDS+=($vpid)
  wait_port "$P_A"
  url="https://127.0.0.1:$P_M/"
  # Warm-up: the first TLS connection pays one-off initialisation (hundreds
  # of millions of instructions); one h1 and one h2 connection go first,
  # and start-up plus warm-up are dumped (a dump also zeroes the counters).
  taskset -c 1 h2load --h1 -c1 -n10 "$url" >"$d/warm-h1.txt"
  taskset -c 1 h2load -c1 -n10 "$url" >"$d/warm-h2.txt"
  callgrind_control -d startup "$vpid" >/dev/null 2>&1; mv "$(last_dump "$cg.$vpid")" "$cg.startup"
  for proto in $PROTOS; do
    case $proto in
      h1) args=(--h1 -c1 -m1) ;;
      h2) args=(-c1 -m10) ;;
    esac
    callgrind_control -z "$vpid" >/dev/null 2>&1
    taskset -c 1 h2load "${args[@]}" -n "$N0" "$url" >"$d/$proto-a.txt"
    callgrind_control -d "$proto-a" "$vpid" >/dev/null 2>&1; a=$(last_dump "$cg.$vpid"); mv "$a" "$cg.$proto-a"
    taskset -c 1 h2load "${args[@]}" -n "$((N0 + N))" "$url" >"$d/$proto-b.txt"
    callgrind_control -d "$proto-b" "$vpid" >/dev/null 2>&1; b=$(last_dump "$cg.$vpid"); mv "$b" "$cg.$proto-b"
    for f in "$d/$proto-a.txt" "$d/$proto-b.txt"; do
      grep -q "succeeded, 0 failed, 0 errored" "$f" && grep -q "status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" "$f" \
        || { echo "h2load failed ($tag $proto):" >&2; cat "$f" >&2; exit 1; }
    done
    A=$(total_ir "$cg.$proto-a"); B=$(total_ir "$cg.$proto-b")
    printf '%-10s %-4s %14s %14s %12.0f %12.0f\n' "$tag" "$proto" "$A" "$B" \
      "$(echo "$B / ($N0 + $N)" | bc -l)" "$(echo "($B - $A) / $N" | bc -l)"
  done
  kill "$vpid"; wait "$vpid" 2>/dev/null || true
done
echo "callgrind files: $OUT (callgrind_annotate --inclusive=no $OUT/callgrind.TREE.h1-b)"
