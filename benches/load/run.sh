#!/usr/bin/env bash
# Load harness: moat against nginx and HAProxy doing the same job, and against
# the backend directly, on loopback. See benches/load/README.md.
#
#   benches/load/run.sh                      # RUNS=3 DURATION=10
#   RUNS=5 DURATION=20 benches/load/run.sh
#   TESTS="h1_tls handshake" SYSTEMS="moat nginx" benches/load/run.sh
#   PROFILE=1 TESTS=h2_tls SYSTEMS="moat haproxy" RUNS=1 benches/load/run.sh
#                                            # + perf flamegraphs per proxy
#
# Installs what is missing (apt: nginx-light libnginx-mod-stream haproxy wrk
# nghttp2-client iperf3 socat openssl; cargo: oha), builds moat in release
# mode, generates development certificates, starts every server on 127.0.0.1
# only, runs the measurements round-robin and prints a table of medians.
# Exits non-zero on request errors, never on speed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
H2_STREAMS=${H2_STREAMS:-10}
STIME_PROCS=${STIME_PROCS:-16}
# nginx keeps this many idle connections to the backend: 64 is what moat's
# HTTP client pool keeps (hard-coded), HAProxy keeps all of them.
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
TESTS=${TESTS:-"h1_tls h2_tls handshake handshake_full h1_plain l4_tls l4_plain"}
SYSTEMS=${SYSTEMS:-"moat nginx haproxy direct"}
RESULTS=${RESULTS:-$HERE/results}
MOAT_BIN=${MOAT_BIN:-$ROOT/target/release/moat}
# PROFILE=1: record each proxy with perf while it is measured (which slows
# it: figures from such a run are not for comparison) and draw one
# flamegraph per test and proxy into $RESULTS (needs perf and inferno).
PROFILE=${PROFILE:-0}
TOOL="python3 $HERE/loadtool.py"

log() { printf '[load] %s\n' "$*" >&2; }

# ------------------------------------------------------------------ tools
install_tools() {
  local need=()
  command -v python3 >/dev/null || need+=(python3)
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v wrk >/dev/null || need+=(wrk)
  command -v h2load >/dev/null || need+=(nghttp2-client)
  command -v iperf3 >/dev/null || need+=(iperf3)
  command -v socat >/dev/null || need+=(socat)
  command -v openssl >/dev/null || need+=(openssl)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v ss >/dev/null || need+=(iproute2)
  if ! nginx_has_stream; then need+=(libnginx-mod-stream); fi
  if [ ${#need[@]} -gt 0 ]; then
    log "installing: ${need[*]}"
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  nginx_has_stream || { log "nginx has no stream module even after installing libnginx-mod-stream"; exit 1; }

  OHA=""
  # Only the handshake test uses oha (and installing it compiles for minutes).
  if ! [[ " $TESTS " == *" handshake "* ]]; then :
  elif command -v oha >/dev/null; then OHA=$(command -v oha)
  elif [ -x "$HOME/.cargo/bin/oha" ]; then OHA="$HOME/.cargo/bin/oha"
  else
    log "installing oha (cargo install oha --locked; takes several minutes)"
    if cargo install oha --locked >"${TMPDIR:-/tmp}/oha-install.log" 2>&1; then
      OHA="$HOME/.cargo/bin/oha"
    else
      log "cargo install oha failed (see ${TMPDIR:-/tmp}/oha-install.log): the handshake test falls back to wrk with 'Connection: close'"
    fi
  fi
}

# nginx_has_stream and write_peers: the systems and their configurations.
source "$HERE/peers.sh"

install_tools
if [ "$PROFILE" = 1 ]; then
  command -v perf >/dev/null || { log "PROFILE=1 needs perf (apt: linux-perf)"; exit 1; }
  if ! command -v inferno-flamegraph >/dev/null && [ -x "$HOME/.cargo/bin/inferno-flamegraph" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v inferno-flamegraph >/dev/null || {
    log "installing inferno (cargo install inferno --locked)"
    cargo install inferno --locked >"${TMPDIR:-/tmp}/inferno-install.log" 2>&1
    PATH="$HOME/.cargo/bin:$PATH"
  }
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building moat (cargo build --release -p moat)"
  (cd "$ROOT" && cargo build --release -p moat)
fi
[ -x "$MOAT_BIN" ] || { log "no moat binary at $MOAT_BIN"; exit 1; }

# ------------------------------------------------------------------ processes
WORK=$(mktemp -d /tmp/moat-load.XXXXXX)
chmod 755 "$WORK"   # nginx workers run as nobody
PGIDS=()
SAMPLER=""
PERF=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  [ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
  [ -z "$PERF" ] || kill -INT "$PERF" 2>/dev/null || true
  for p in "${PGIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PGIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP_WORK:-0}" = 1 ] || [ "$rc" -ne 0 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PG_backend="" PG_iperfs="" PG_nginx="" PG_haproxy="" PG_moat=""
# shellcheck disable=SC2034 # read indirectly, as ${!v}
PG_socat_moat="" PG_socat_nginx="" PG_socat_haproxy=""
# start NAME CPU CMD...: runs CMD in its own process group (so that it and
# any workers it forks can be measured and stopped together), pinned to CPU.
start() {
  local name=$1 cpu=$2; shift 2
  setsid taskset -c "$cpu" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  local pid=$!
  PGIDS+=("$pid")
  printf -v "PG_$name" '%s' "$pid"
}

ticks() { $TOOL cputicks "$@"; }
CLK_TCK=$(getconf CLK_TCK)

write_peers

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "starting servers on 127.0.0.1 (proxies and backend on cpu$PROXY_CPU, load on cpu$LOAD_CPU)"
start backend "$PROXY_CPU" nginx -p "$WORK/backend/" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf"
start iperfs "$PROXY_CPU" iperf3 -s -B 127.0.0.1 -p "$P_IPERF"
start nginx "$PROXY_CPU" nginx -p "$WORK/nginx/" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf"
start haproxy "$PROXY_CPU" haproxy -db -f "$WORK/haproxy.cfg"
# One worker, like nginx's one worker and HAProxy's one thread: with
# MOAT_WORKER_THREADS=1 (or pinned to one CPU) moat runs tokio's
# current-thread scheduler. The blocking pool, used for audit file writes,
# runs on the same CPU.
start moat "$PROXY_CPU" env MOAT_WORKER_THREADS=1 MOAT_LOG=warn "$MOAT_BIN" run -c "$WORK/moat.toml"
# Client-side TLS for the L4 TLS test: iperf3 -> socat (TLS client) -> proxy.
start socat_moat "$LOAD_CPU" socat -b 65536 "TCP-LISTEN:$P_S_MOAT,bind=127.0.0.1,fork,reuseaddr" "OPENSSL:127.0.0.1:$P_M_L4TLS,verify=0"
start socat_nginx "$LOAD_CPU" socat -b 65536 "TCP-LISTEN:$P_S_NGINX,bind=127.0.0.1,fork,reuseaddr" "OPENSSL:127.0.0.1:$P_N_L4TLS,verify=0"
start socat_haproxy "$LOAD_CPU" socat -b 65536 "TCP-LISTEN:$P_S_HAPROXY,bind=127.0.0.1,fork,reuseaddr" "OPENSSL:127.0.0.1:$P_H_L4TLS,verify=0"

# moat binds every service before its admin listener, so its admin port
# stands for all of them (a probe of a service port would be audited).
for p in $P_B_HTTP $P_B_TLS $P_IPERF $P_M_ADMIN $P_N_TLS $P_N_HTTP \
  $P_N_L4TLS $P_N_L4 $P_H_TLS $P_H_HTTP $P_H_L4TLS $P_H_L4 $P_S_MOAT $P_S_NGINX $P_S_HAPROXY; do
  $TOOL wait-port "$p" 20 || { tail -n 20 "$WORK"/*.err >&2; exit 1; }
done
MOAT_THREADS=$(ls /proc/"$PG_moat"/task | wc -l)

# ------------------------------------------------------------------ targets
proxy_pg() { case "$1" in moat) echo "$PG_moat" ;; nginx) echo "$PG_nginx" ;; haproxy) echo "$PG_haproxy" ;; esac; }
backend_pg() { case "$1" in l4_*) echo "$PG_iperfs" ;; *) echo "$PG_backend" ;; esac; }

# Session resumption: the handshake tests want full handshakes. nginx, HAProxy
# and the backend are configured without it; moat keeps rustls' defaults.
RESUME_NOTES=""
for s in direct moat nginx haproxy; do
  r=$($TOOL probe-resume "$(port_of h1_tls "$s")" 2>/dev/null || echo "probe failed")
  RESUME_NOTES+="$s=$r "
done
log "TLS session resumption offered: $RESUME_NOTES"

# ------------------------------------------------------------------ one measurement
# measure TEST SYSTEM RUN: runs the load, appends a row to $RAW.
ERRORS=()
measure() {
  local test=$1 sys=$2 run=$3 port out json
  port=$(port_of "$test" "$sys")
  [ -n "$port" ] || return 0
  out="$WORK/out.$test.$sys.$run"
  local ppg bpg p0=0 b0=0 p1=0 b1=0 s0=0 s1=0 x0=0 x1=0
  ppg=$(proxy_pg "$sys"); bpg=$(backend_pg "$test")
  [ -z "$ppg" ] || { p0=$(ticks "$ppg"); x0=$($TOOL preemptions "$ppg"); }
  b0=$(ticks "$bpg")
  local spg=""
  if [ "$test" = l4_tls ]; then
    local v="PG_socat_$sys"; spg=${!v}; s0=$(ticks "$spg")
  fi
  # How many connections the proxy holds open to the backend at most.
  if [ -n "$ppg" ] && [[ $test != l4_* ]]; then
    taskset -c "$LOAD_CPU" python3 "$HERE/loadtool.py" upstream-sampler "$P_B_HTTP" "$out.up" "$ppg" &
    SAMPLER=$!
  fi
  if [ "$PROFILE" = 1 ] && [ -n "$ppg" ]; then
    # Every thread of every process of the proxy, with DWARF unwinding
    # (release builds keep no frame pointers).
    local pids
    pids=$(ps -o pid= -s "$ppg" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
    perf record -q -F 499 --call-graph dwarf,16384 -o "$WORK/perf.$test.$sys.$run.data" -p "$pids" \
      >/dev/null 2>&1 &
    PERF=$!
  fi
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  case "$test" in
    h1_tls | h1_plain)
      local scheme=https; [ "$test" = h1_plain ] && scheme=http
      $TOOL runcpu "$out.cpu" -- taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$scheme://127.0.0.1:$port/" >"$out" 2>&1 || rc=$?
      json=$($TOOL parse-wrk "$out") ;;
    h2_tls)
      $TOOL runcpu "$out.cpu" -- taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D "$DURATION" --log-file="$out.log" "https://127.0.0.1:$port/" >"$out" 2>&1 || rc=$?
      json=$($TOOL parse-h2load "$out" "$out.log")
      rm -f "$out.log" ;;
    handshake)
      if [ -n "$OHA" ]; then
        $TOOL runcpu "$out.cpu" -- taskset -c "$LOAD_CPU" "$OHA" --no-tui --output-format json -o "$out" \
          --disable-keepalive -z "${DURATION}s" -c "$CONNS" --insecure -w --worker-threads 1 \
          "https://127.0.0.1:$port/" 2>"$out.err" || rc=$?
        json=$($TOOL parse-oha "$out")
      else # fallback: wrk, a new connection per request (wrk resumes sessions where offered)
        $TOOL runcpu "$out.cpu" -- taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Connection: close" "https://127.0.0.1:$port/" >"$out" 2>&1 || rc=$?
        json=$($TOOL parse-wrk "$out")
      fi ;;
    handshake_full)
      # openssl s_time -new never resumes: full handshakes on every system,
      # one HTTP/1.0 GET each. Expensive for the client (OpenSSL 3), so the
      # load core is the limit here: compare the proxy CPU per connection.
      $TOOL runcpu "$out.cpu" -- taskset -c "$LOAD_CPU" bash -c '
        for i in $(seq 1 '"$STIME_PROCS"'); do
          openssl s_time -connect 127.0.0.1:'"$port"' -new -time '"$DURATION"' -www / >'"$out"'.$i 2>&1 &
        done; wait' || rc=$?
      json=$(python3 - "$out" "$STIME_PROCS" "$DURATION" <<'PY'
import json, re, sys
out, n, d = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
total, errors, nbytes = 0, [], 0
for i in range(1, n + 1):
    try:
        text = open(f"{out}.{i}").read()
    except OSError as e:
        errors.append(str(e)); continue
    m = re.search(r"(\d+) connections in \d+ real seconds, (\d+) bytes read per connection", text)
    if not m:
        errors.append(f"s_time {i}: no result"); continue
    total += int(m.group(1)); nbytes = int(m.group(2))
    if int(m.group(1)) and int(m.group(2)) == 0:
        errors.append(f"s_time {i}: no response bytes")
    if re.search(r"(?i)error|fail", text.replace("connections/user sec", "")):
        errors.append(f"s_time {i}: " + text.strip().splitlines()[-1][:200])
if total == 0:
    errors.append("s_time made no connection")
print(json.dumps({"rps": total / d, "requests": total, "p50_ms": None, "p99_ms": None, "errors": errors}))
PY
) ;;
    l4_tls | l4_plain)
      $TOOL runcpu "$out.cpu" -- taskset -c "$LOAD_CPU" iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -J >"$out" 2>&1 || rc=$?
      json=$($TOOL parse-iperf "$out")
      sleep 0.5 ;; # iperf3 -s serves one test at a time
  esac
  t1=$(date +%s.%N)
  if [ -n "$PERF" ]; then
    kill -INT "$PERF" 2>/dev/null || true
    wait "$PERF" 2>/dev/null || true
    PERF=""
  fi
  if [ -n "$SAMPLER" ]; then
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
    SAMPLER=""
  fi
  [ -z "$ppg" ] || { p1=$(ticks "$ppg"); x1=$($TOOL preemptions "$ppg"); }
  b1=$(ticks "$bpg")
  [ -z "$spg" ] || s1=$(ticks "$spg")
  local row
  row=$(python3 - "$json" "$test" "$sys" "$run" "$p0" "$p1" "$b0" "$b1" "$s0" "$s1" "$CLK_TCK" "$t0" "$t1" "$(cat "$out.cpu" 2>/dev/null || echo 0)" "$rc" "${ppg:-}" "$(cat "$out.up" 2>/dev/null || true)" "$x0" "$x1" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
test, sys_, run = sys.argv[2:5]
p0, p1, b0, b1, s0, s1, hz = map(int, sys.argv[5:12])
t0, t1, load_cpu = float(sys.argv[12]), float(sys.argv[13]), float(sys.argv[14])
rc, has_proxy, upstream = int(sys.argv[15]), sys.argv[16] != "", sys.argv[17]
preempted = int(sys.argv[19]) - int(sys.argv[18]) if has_proxy else None
wall = t1 - t0
proxy_s = (p1 - p0) / hz if has_proxy else None
backend_s = (b1 - b0) / hz
load_s = load_cpu + (s1 - s0) / hz
units = j.get("requests") or 0
if test.startswith("l4_"):
    per = lambda s: None if s is None or not units else s / (units / 1e9) * 1000   # ms per GB
    value = j.get("gbit_s")
else:
    per = lambda s: None if s is None or not units else s / units * 1e6            # us per request
    value = j.get("rps")
errors = list(j.get("errors", []))
if rc != 0:
    errors.append(f"load tool exited {rc}")
def f(v):
    return "" if v is None else f"{v:.6g}"
print("\t".join([run, test, sys_, f(value), f(j.get("p50_ms")), f(j.get("p99_ms")), str(units),
                 f(proxy_s), f(per(proxy_s)), f(backend_s), f(per(backend_s)), f(load_s / wall if wall else None),
                 upstream, "; ".join(errors).replace("\t", " "),
                 f(None if preempted is None or not units
                   else preempted / (units / 1e9 if test.startswith("l4_") else units))]))
PY
)
  printf '%s\n' "$row" >>"$RAW"
  local value errs
  value=$(cut -f4 <<<"$row"); errs=$(cut -f14 <<<"$row")
  log "run $run $test $sys: $value${errs:+  ERROR: $errs}"
  if [ -n "$errs" ]; then ERRORS+=("run $run $test $sys: $errs (output in $out)"); fi
}

# ------------------------------------------------------------------ runs
mkdir -p "$RESULTS"
RAW="$WORK/raw.tsv"
printf 'run\ttest\tsystem\tvalue\tp50_ms\tp99_ms\tunits\tproxy_cpu_s\tproxy_cpu_per\tbackend_cpu_s\tbackend_cpu_per\tload_util\tupstream_max\terrors\tproxy_preempted_per\n' >"$RAW"
read -ra SYS_LIST <<<"$SYSTEMS"
n=${#SYS_LIST[@]}
log "RUNS=$RUNS DURATION=${DURATION}s CONNS=$CONNS; tests: $TESTS; systems: $SYSTEMS; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$RUNS"); do
  for test in $TESTS; do
    # Round-robin: each run starts with the next system, so no system always
    # goes first (cold) or last.
    for i in $(seq 0 $((n - 1))); do
      measure "$test" "${SYS_LIST[$(((i + run - 1) % n))]}" "$run"
    done
  done
done

# moat's own view: denials, audit drops, audit volume.
MOAT_NOTES=$(python3 - "$WORK/moat-audit.log" "$P_M_ADMIN" "$WORK/moat.err" <<'PY'
import collections, json, sys, urllib.request
denials = collections.Counter()
closed_err = lines = size = denied = 0
try:
    with open(sys.argv[1], "rb") as f:
        for raw in f:
            lines += 1; size += len(raw)
            if b'"connection_denied"' in raw:
                e = json.loads(raw)
                denials[f"{e.get('reason')}: {e.get('detail', '')}"] += 1
                # wrk opens and closes one plain TCP connection before each
                # run: an EOF in the TLS handshake. Anything else is an error.
                if e.get("detail") != "tls handshake eof":
                    denied += 1
            elif b'"closed_by":"error"' in raw:
                closed_err += 1
except OSError:
    pass
try:
    stderr_lines = sum(1 for _ in open(sys.argv[3], "rb"))
except OSError:
    stderr_lines = "?"
dropped = "?"
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("moat_audit_dropped"):
            dropped = line.split()[-1]
except Exception as e:  # noqa: BLE001
    dropped = f"? ({e})"
print(f"audit lines {lines} ({size / 1e6:.1f} MB), connection_denied {dict(denials) or 0}, "
      f"closed_by error {closed_err} (clients that stop with requests in flight), "
      f"audit dropped {dropped}, stderr lines {stderr_lines}")
if denied:
    sys.exit(3)
PY
) || ERRORS+=("moat denied connections: $MOAT_NOTES")

STAMP=$(date -u +%Y-%m-%dT%H:%M:%SZ)
{
  echo "# moat load benchmark, $STAMP"
  echo "# $("$MOAT_BIN" --version 2>/dev/null) at $MOAT_BIN, built $(date -u -r "$MOAT_BIN" +%Y-%m-%dT%H:%M:%SZ); work tree now at $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
  echo "# $(nginx -v 2>&1); $(haproxy -v | head -1); $(wrk -v 2>&1 | head -1); $(h2load --version | head -1); $(iperf3 -v | head -1); $(socat -V | sed -n 2p); $(openssl version)${OHA:+; $("$OHA" --version)}"
  echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs; proxies+backend on cpu$PROXY_CPU, load on cpu$LOAD_CPU; moat threads at start: $MOAT_THREADS (MOAT_WORKER_THREADS=1)"
  echo "# RUNS=$RUNS DURATION=${DURATION}s CONNS=$CONNS H2_STREAMS=$H2_STREAMS STIME_PROCS=$STIME_PROCS NGINX_KEEPALIVE=$NGINX_KEEPALIVE"
  echo "# TLS session resumption offered: $RESUME_NOTES"
  echo "# moat: $MOAT_NOTES"
} >"$WORK/header.txt"

cat "$WORK/header.txt"
RESUMING=$(tr ' ' '\n' <<<"$RESUME_NOTES" | sed -n 's/=yes$//p' | paste -sd, -)
$TOOL summary "$RAW" "$RESULTS/latest-summary.tsv" "$RESUMING" | tee "$WORK/table.txt"
{ cat "$WORK/header.txt"; cat "$RAW"; } >"$RESULTS/latest.tsv"
{ cat "$WORK/header.txt"; cat "$WORK/table.txt"; } >"$RESULTS/latest.txt"
log "results: $RESULTS/latest.tsv (every run), latest-summary.tsv (medians), latest.txt (this table)"

if [ "$PROFILE" = 1 ]; then
  for data in "$WORK"/perf.*.data; do
    [ -e "$data" ] || continue
    name=$(basename "$data" .data); name=${name#perf.}        # test.system.run
    svg="$RESULTS/flame-${name//./-}.svg"
    perf script -i "$data" 2>/dev/null | inferno-collapse-perf --all 2>/dev/null \
      | inferno-flamegraph --minwidth 0.5 --title "$name ($(date -u +%F))" >"$svg" \
      && log "flamegraph: $svg" || log "flamegraph for $name failed"
  done
fi

if [ ${#ERRORS[@]} -gt 0 ]; then
  printf '\nERRORS:\n' >&2
  printf '  %s\n' "${ERRORS[@]}" >&2
  KEEP_WORK=1
  exit 1
fi
