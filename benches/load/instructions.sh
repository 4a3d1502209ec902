#!/usr/bin/env bash
# Instructions per request of moat, nginx and HAProxy on the same job,
# counted by valgrind's callgrind (user space only, exact run to run).
#
#   benches/load/instructions.sh                      # every system and test
#   SYSTEMS=moat TESTS=h2_tls SKIP_BUILD=1 benches/load/instructions.sh
#   MOAT_BIN=/other/tree/target/release/moat SYSTEMS=moat benches/load/instructions.sh
#   SYSTEMS="moat floor" benches/load/instructions.sh
#
# `floor` is benches/examples/floor_proxy.rs: moat's stack (tokio, hyper,
# rustls, mimalloc) configured as moat configures it, doing the job with
# none of moat's controls; what is left between it and moat is moat's own.
#
# The job is run.sh's (peers.sh writes the configurations for both): TLS 1.3
# with the ECDSA P-256 development certificate and no resumption, a source
# allowlist, keep-alive to a plain nginx backend `return 200 "ok\n"`.
# Each proxy in turn runs alone under callgrind on cpu$PROXY_CPU (nginx with
# `master_process off`, one process; HAProxy `nbthread 1`; moat on one CPU, so
# tokio's current-thread scheduler). Per test, h2load on cpu$LOAD_CPU with
# CONNS=10 connections (h1: `--h1 -m1`; h2: `-m10`, 10 streams each):
#   1. zero the counters, N_A requests, dump    -> A
#   2. N_B requests, dump                       -> B (the dump of A zeroed)
# and prints (B - A) / (N_B - N_A): the same connections and handshakes in
# both cancel out, what is left is the cost of a request. One warm-up
# connection per test first (the first TLS handshake costs hundreds of
# millions of instructions of one-off set-up).
#
# Tests: h1_tls, h2_tls, h1_plain (the default), and conn_tls, conn_plain
# (per connection, see CONN_A). Output: a table, and under $OUT the dump
# files and, for every system and test, the top functions per request (self
# cost, from the difference of the two dumps: callgrind_diff.py).
# About a minute per system and test.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BENCH=instructions
MOAT_BIN=${MOAT_BIN:-$ROOT/target/release/moat}
FLOOR_BIN=${FLOOR_BIN:-$ROOT/target/release/examples/floor_proxy}
SYSTEMS=${SYSTEMS:-"moat nginx haproxy"}
TESTS=${TESTS:-"h1_tls h2_tls h1_plain"}
CONNS=${CONNS:-10}
# More callgrind options, e.g. CALLGRIND_ARGS=--cache-sim=yes for simulated
# cache misses (the totals in the dumps; the table stays instructions).
CALLGRIND_ARGS=${CALLGRIND_ARGS:-}
N_A=${N_A:-2000}
N_B=${N_B:-8000}
# conn_tls, conn_plain: a new connection per request (full TLS handshake,
# no resumption), CONN_A then CONN_B of them; prints instructions per
# connection.
CONN_A=${CONN_A:-50}
CONN_B=${CONN_B:-200}
TOP=${TOP:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-$HERE/results/instructions}
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-64}
TOOL="python3 $HERE/loadtool.py"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
# shellcheck source=peers.sh
source "$HERE/peers.sh"

for t in valgrind callgrind_control h2load nginx haproxy python3 taskset; do
  command -v "$t" >/dev/null || die "needs $t (apt-get install valgrind nghttp2-client nginx-light haproxy)"
done
nginx_has_stream || die "nginx has no stream module (apt-get install libnginx-mod-stream)"
[ "$N_B" -gt "$N_A" ] || die "N_B ($N_B) must be more than N_A ($N_A)"
[ "$CONN_B" -gt "$CONN_A" ] || die "CONN_B ($CONN_B) must be more than CONN_A ($CONN_A)"
build_moat
case " $SYSTEMS " in
  *" floor "*)
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
      log "building the floor proxy (cargo build --release -p moat-benches --example floor_proxy)"
      (cd "$ROOT" && cargo build --release -p moat-benches --example floor_proxy)
    fi
    [ -x "$FLOOR_BIN" ] || die "no floor proxy at $FLOOR_BIN"
    ;;
esac
work_dir
chmod 755 "$WORK" # nginx workers run as nobody
write_peers
mkdir -p "$OUT"

start backend "$PROXY_CPU" nginx -p "$WORK/backend/" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf"
$TOOL wait-port "$P_B_HTTP" 20 || die "the backend did not start: $(cat "$WORK/backend.err")"

# conn_* reach the h1 services; port_of (peers.sh) knows the rest.
test_port() { # TEST SYSTEM
  local p
  case "$1" in conn_tls) p=$(port_of h1_tls "$2") ;; conn_plain) p=$(port_of h1_plain "$2") ;; *) p=$(port_of "$1" "$2") ;; esac
  [ -n "$p" ] || die "unknown test or system: $1 $2"
  echo "$p"
}
url_of() { # TEST SYSTEM
  case "$1" in h1_plain | conn_plain) echo "http://127.0.0.1:$(test_port "$1" "$2")/" ;; *) echo "https://127.0.0.1:$(test_port "$1" "$2")/" ;; esac
}
h2load_args() { # TEST N
  case "$1" in
    h2_tls) echo "-c$CONNS -m10" ;;
    conn_*) echo "--h1 -c$2 -m1" ;; # a connection per request: N of them
    *) echo "--h1 -c$CONNS -m1" ;;
  esac
}
# conn_*: the difference is in connections, not requests.
count_of() { case "$1:$2" in conn_*:a) echo "$CONN_A" ;; conn_*:b) echo "$CONN_B" ;; *:a) echo "$N_A" ;; *) echo "$N_B" ;; esac; }
# CMD: the command line of SYSTEM, run under callgrind.
system_cmd() { # SYSTEM
  case "$1" in
    moat) CMD=("$MOAT_BIN" run -c "$WORK/moat.toml") ;;
    nginx) CMD=(nginx -p "$WORK/nginx/" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -g "master_process off;") ;;
    haproxy) CMD=(haproxy -db -f "$WORK/haproxy.cfg") ;;
    floor) CMD=("$FLOOR_BIN" "127.0.0.1:$P_F_TLS" "127.0.0.1:$P_F_HTTP" "127.0.0.1:$P_B_HTTP" "$CERTS/server.pem" "$CERTS/server.key") ;;
    *) die "unknown system $1 (moat, nginx, haproxy, floor)" ;;
  esac
}
# The port that says the system is up: moat binds every service before its
# admin listener; nginx and HAProxy bind all theirs before serving.
ready_port() { case "$1" in moat) echo "$P_M_ADMIN" ;; *) test_port h1_plain "$1" ;; esac; }

run_load() { # TEST SYSTEM N FILE
  local args
  read -ra args <<<"$(h2load_args "$1" "$3")"
  taskset -c "$LOAD_CPU" h2load "${args[@]}" -n "$3" "$(url_of "$1" "$2")" >"$4" 2>&1 || true
  grep -q "requests: $3 total, $3 started, $3 done, $3 succeeded, 0 failed, 0 errored" "$4" \
    && grep -q "status codes: $3 2xx, 0 3xx, 0 4xx, 0 5xx" "$4" \
    || die "h2load failed ($1 $2, $3 requests): $(cat "$4")"
}
total_ir() { awk '/^summary:|^totals:/ {print $2; exit}' "$1"; }
last_dump() { ls -t "$1".* 2>/dev/null | head -n1; }

ROWS="$WORK/rows.tsv"
: >"$ROWS"
for sys in $SYSTEMS; do
  cg="$WORK/cg.$sys"
  system_cmd "$sys"
  log "$sys under callgrind"
  start "$sys" "$PROXY_CPU" env MOAT_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$cg.%p" $CALLGRIND_ARGS "${CMD[@]}"
  vpid=${PIDS[-1]}
  $TOOL wait-port "$(ready_port "$sys")" 120 || die "$sys did not start: $(tail -n 20 "$WORK/$sys.err")"
  for test in $TESTS; do
    # Warm-up: h2load wants at least one request per connection.
    run_load "$test" "$sys" "$((CONNS > 10 ? CONNS : 10))" "$WORK/warm.$sys.$test"
    callgrind_control -z "$vpid" >/dev/null 2>&1
    n_a=$(count_of "$test" a); n_b=$(count_of "$test" b)
    run_load "$test" "$sys" "$n_a" "$WORK/a.$sys.$test"
    callgrind_control -d "$test-a" "$vpid" >/dev/null 2>&1
    a="$OUT/callgrind.$sys.$test-a"; mv "$(last_dump "$cg.$vpid")" "$a"
    run_load "$test" "$sys" "$n_b" "$WORK/b.$sys.$test"
    callgrind_control -d "$test-b" "$vpid" >/dev/null 2>&1
    b="$OUT/callgrind.$sys.$test-b"; mv "$(last_dump "$cg.$vpid")" "$b"
    per=$(python3 -c "print(round(($(total_ir "$b") - $(total_ir "$a")) / ($n_b - $n_a)))")
    printf '%s\t%s\t%s\n' "$sys" "$test" "$per" >>"$ROWS"
    log "$sys $test: $per instructions per request"
    python3 "$HERE/callgrind_diff.py" --per-request "$a" "$b" "$((n_b - n_a))" "$TOP" >"$OUT/top.$sys.$test.txt"
    python3 "$HERE/callgrind_crates.py" "$a" "$b" "$((n_b - n_a))" >"$OUT/crates.$sys.$test.txt"
  done
  kill -TERM -- "-$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
done

python3 - "$ROWS" <<'PY'
import collections, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
per = collections.defaultdict(dict)
for s, t, v in rows:
    per[t][s] = int(v)
systems = list(dict.fromkeys(s for s, _, _ in rows))
print("instructions per request (conn_*: per connection) (callgrind, (B - A) / (N_B - N_A))")
print(f"{'test':10}" + "".join(f"{s:>10}" for s in systems) + "   moat/nginx  moat/haproxy  moat/floor")
for t, v in per.items():
    ratios = "".join(f"{v['moat'] / v[p]:>12.3f}" if "moat" in v and p in v else " " * 12 for p in ("nginx", "haproxy", "floor"))
    print(f"{t:10}" + "".join(f"{v.get(s, ''):>10}" for s in systems) + ratios)
PY
log "dumps and per-function tops (top.SYSTEM.TEST.txt) in $OUT"
