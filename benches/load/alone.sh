#!/usr/bin/env bash
# Each proxy alone: run.sh's job and configurations (peers.sh), but every
# measurement starts the proxy fresh, with no other proxy running and no
# sampler beside it, and counts a fixed number of requests. What it adds to
# run.sh: whether a difference between proxies is theirs or the
# surroundings' (run.sh keeps all three proxies up and samples `ss -p`
# every 0.25 s), and A/B runs of two moat binaries.
#
#   benches/load/alone.sh                              # h2_tls: moat haproxy
#   TESTS="h1_tls h2_tls" SYSTEMS="moat nginx haproxy" RUNS=5 benches/load/alone.sh
#   SYSTEMS="moat /tmp/moat.old haproxy" benches/load/alone.sh   # a path: another moat
#
# Per test and run, systems round-robin: start the proxy on cpu$PROXY_CPU
# (the backend is there too, as in run.sh), a warm-up of WARM requests, then
# N requests with h2load on cpu$LOAD_CPU (h2: CONNS connections of 10
# streams; h1: --h1, one at a time per connection). Prints, per run and as
# medians, requests per second and the proxy's user and system CPU per
# request from /proc (every thread). Exits non-zero on failed requests.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BENCH=alone
MOAT_BIN=${MOAT_BIN:-$ROOT/target/release/moat}
SYSTEMS=${SYSTEMS:-"moat haproxy"}
TESTS=${TESTS:-h2_tls}
RUNS=${RUNS:-5}
N=${N:-200000}
WARM=${WARM:-20000}
CONNS=${CONNS:-50}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-64}
TOOL="python3 $HERE/loadtool.py"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
# shellcheck source=peers.sh
source "$HERE/peers.sh"

for t in h2load nginx haproxy python3 taskset; do
  command -v "$t" >/dev/null || die "needs $t (apt-get install nghttp2-client nginx-light haproxy)"
done
nginx_has_stream || die "nginx has no stream module (apt-get install libnginx-mod-stream)"
build_moat
work_dir
chmod 755 "$WORK" # nginx workers run as nobody
write_peers
start backend "$PROXY_CPU" nginx -p "$WORK/backend/" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf"
$TOOL wait-port "$P_B_HTTP" 20 || die "the backend did not start: $(cat "$WORK/backend.err")"

# start_system SYSTEM: the proxy, fresh; its process group in SYS_PID.
start_system() {
  case "$1" in
    nginx) start nginx "$PROXY_CPU" nginx -p "$WORK/nginx/" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" ;;
    haproxy) start haproxy "$PROXY_CPU" haproxy -db -f "$WORK/haproxy.cfg" ;;
    moat) start moat "$PROXY_CPU" env MOAT_WORKER_THREADS=1 MOAT_LOG=warn "$MOAT_BIN" run -c "$WORK/moat.toml" ;;
    /*) start moat "$PROXY_CPU" env MOAT_WORKER_THREADS=1 MOAT_LOG=warn "$1" run -c "$WORK/moat.toml" ;;
    *) die "unknown system $1 (moat, nginx, haproxy, or a path to a moat binary)" ;;
  esac
  SYS_PID=$LAST_PID
}
port_for() { # TEST SYSTEM
  case "$2" in /*) port_of "$1" moat ;; *) port_of "$1" "$2" ;; esac
}
ready_port() { # TEST SYSTEM: moat binds every service before its admin port
  case "$2" in moat | /*) echo "$P_M_ADMIN" ;; *) port_for "$1" "$2" ;; esac
}
load() { # TEST PORT COUNT
  local mode
  case "$1" in h2_tls) mode="-c$CONNS -m10" ;; *) mode="--h1 -c$CONNS -m1" ;; esac
  # shellcheck disable=SC2086
  taskset -c "$LOAD_CPU" h2load $mode -n "$3" "https://127.0.0.1:$2/" 2>&1
}

ROWS="$WORK/rows.tsv"
for test in $TESTS; do
  for ((run = 1; run <= RUNS; run++)); do
    for sys in $SYSTEMS; do
      start_system "$sys"
      $TOOL wait-port "$(ready_port "$test" "$sys")" 20 || die "$sys did not start: $(tail -n 5 "$WORK"/*.err)"
      port=$(port_for "$test" "$sys")
      load "$test" "$port" "$WARM" >/dev/null
      read -r u0 s0 <<<"$($TOOL cpusplit "$SYS_PID")"
      out=$(load "$test" "$port" "$N")
      read -r u1 s1 <<<"$($TOOL cpusplit "$SYS_PID")"
      ok=$(grep -o '[0-9]* succeeded' <<<"$out" | grep -o '[0-9]*' || echo 0)
      [ "$ok" = "$N" ] || die "$sys $test run $run: $ok of $N requests succeeded: $(grep -m1 '^requests:' <<<"$out")"
      rps=$(grep -o '[0-9.]* req/s' <<<"$out" | grep -o '^[0-9.]*')
      python3 - "$test" "$sys" "$run" "$rps" "$u0" "$s0" "$u1" "$s1" "$N" "$(getconf CLK_TCK)" >>"$ROWS" <<'PY'
import sys
t, s, r, rps, u0, s0, u1, s1, n, hz = sys.argv[1:]
us = 1e6 / float(hz) / int(n)
print(f"{t}\t{s}\t{r}\t{float(rps):.0f}\t{(int(u1) - int(u0)) * us:.2f}\t{(int(s1) - int(s0)) * us:.2f}")
PY
      log "$(tail -n 1 "$ROWS" | tr '\t' ' ')"
      stop_groups TERM "$SYS_PID"
      for ((i = 0; i < 50; i++)); do kill -0 -- "-$SYS_PID" 2>/dev/null || break; sleep 0.1; done
      stop_groups KILL "$SYS_PID"
    done
  done
done

python3 - "$ROWS" <<'PY'
import collections, statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
by = collections.defaultdict(list)
for t, s, _, rps, u, k in rows:
    by[(t, s)].append((float(rps), float(u), float(k)))
print(f"{'test':8} {'system':24} {'runs':>4} {'req/s':>9} {'user us/req':>12} {'sys us/req':>11} {'CPU us/req':>11}")
for (t, s), v in by.items():
    med = lambda i: statistics.median(x[i] for x in v)
    cpu = statistics.median(x[1] + x[2] for x in v)
    print(f"{t:8} {s[-24:]:24} {len(v):>4} {med(0):>9,.0f} {med(1):>12.2f} {med(2):>11.2f} {cpu:>11.2f}")
PY
