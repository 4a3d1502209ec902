#!/usr/bin/env bash
# MFA (issue 11) load benchmarks, on loopback. See benches/load/README.md
# ("mfa.sh") and docs/benchmarks.md ("MFA (issue 11)").
#
#   benches/load/mfa.sh                              # every mode, RUNS=3 DURATION=10
#   MODES=compare RUNS=5 benches/load/mfa.sh
#   MODES=flood MAX_HASHES=1 benches/load/mfa.sh
#   SKIP_BUILD=1 MOAT_BIN=target/release/moat benches/load/mfa.sh
#
# Modes (each starts its own moat; the backend is shared):
#   compare         h1 HTTPS req/s through an `access = "mfa"` service with a
#                   valid session cookie against a `network` service of the
#                   same device, the same wrk command (and Cookie header) on
#                   both, alternating order run by run. Target: mfa >= 0.95x.
#   callgrind       the same two services, moat under valgrind's callgrind:
#                   instructions per request on each (one h2load --h1
#                   connection, marginal over CG_N requests), exact where
#                   the wall clock of this shared machine is not.
#   flood           authenticated wrk traffic from 127.0.0.1 with and
#                   without a login flood from $FLOOD_SRC (wrong passwords,
#                   valid CSRF, $FLOOD_CONNS connections), limits raised so
#                   that every POST reaches the password hash. Target: the
#                   traffic keeps >= 0.8x. Samples the hash gauge.
#   flood_defaults  the same with [auth]'s default limits (login_rate
#                   "10/min burst 5", lockout after 5 failures).
#
# Bounded: about RUNS x (2 x DURATION + 5) s for compare, RUNS x (2 x DURATION
# + FLOOD_ALONE + 10) s per flood mode, under a minute for callgrind, plus the
# release build.
# Exits non-zero on request errors, never on speed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
FLOOD_CONNS=${FLOOD_CONNS:-16}
FLOOD_SRC=${FLOOD_SRC:-127.0.0.2}
MAX_HASHES=${MAX_HASHES:-2}
SAMPLE_INTERVAL=${SAMPLE_INTERVAL:-0.05}
# The flooder shares the load CPU with wrk: at a lower priority, so that wrk
# gets the CPU it had without the flood and the flood takes what is left.
FLOOD_NICE=${FLOOD_NICE:-10}
# Each flood run ends with the flood alone for this long: moat's CPU per
# flood POST.
FLOOD_ALONE=${FLOOD_ALONE:-5}
# An experiment, not a setting of moat: the nice value to give moat's
# blocking-pool threads (where the password hashes run) during the flood
# modes. Empty: left alone.
HASH_NICE=${HASH_NICE:-}
# callgrind mode: requests per service, after CG_N0 (marginal count).
CG_N=${CG_N:-2000}
CG_N0=${CG_N0:-200}
# PROFILE=1: a flat perf profile of moat during each "flood alone" phase
# (results/mfa-profile-MODE.txt; needs perf).
PROFILE=${PROFILE:-0}
if command -v valgrind >/dev/null; then DEFAULT_MODES="compare callgrind flood flood_defaults"; else DEFAULT_MODES="compare flood flood_defaults"; fi
MODES=${MODES:-$DEFAULT_MODES}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
# nginx (as in run.sh) when installed, else loadtool.py's Python backend,
# which is slower than moat and would hide part of moat's cost.
BACKEND=${BACKEND:-auto}
MOAT_BIN=${MOAT_BIN:-$ROOT/target/release/moat}
RESULTS=${RESULTS:-$HERE/results}
TOOL="python3 $HERE/loadtool.py"

log() { printf '[mfa] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

case "$RUNS$DURATION$CONNS$FLOOD_CONNS$MAX_HASHES$FLOOD_NICE$FLOOD_ALONE${HASH_NICE#-}$CG_N$CG_N0" in *[!0-9]*) die "RUNS, DURATION, CONNS, FLOOD_CONNS, MAX_HASHES are whole numbers" ;; esac
# A session cookie is re-sealed once it is 60 s old: a client that ignores
# Set-Cookie (wrk) would then cost a seal per request. Each measurement
# signs in anew, so it must stay well under that.
[ "$DURATION" -ge 2 ] && [ "$DURATION" -le 45 ] || die "DURATION must be 2..45 s (a cookie is refreshed at 60 s)"
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 15 ] || die "RUNS must be 1..15"
[ "$FLOOD_ALONE" -ge 1 ] && [ "$FLOOD_ALONE" -le 30 ] || die "FLOOD_ALONE must be 1..30 s"
[ "$FLOOD_CONNS" -ge 1 ] && [ "$FLOOD_CONNS" -le 256 ] || die "FLOOD_CONNS must be 1..256"
[ "$CG_N" -ge 100 ] && [ "$CG_N" -le 20000 ] && [ "$CG_N0" -le 2000 ] || die "CG_N must be 100..20000, CG_N0 at most 2000"
for m in $MODES; do
  case "$m" in compare | callgrind | flood | flood_defaults) ;; *) die "unknown mode $m (compare, callgrind, flood, flood_defaults)" ;; esac
done

[ "$PROFILE" != 1 ] || command -v perf >/dev/null || die "PROFILE=1 needs perf (apt: linux-perf)"
if [[ " $MODES " == *" callgrind "* ]]; then
  for t in valgrind callgrind_control h2load; do command -v "$t" >/dev/null || die "MODES=callgrind needs $t (apt-get install valgrind nghttp2-client)"; done
fi
for t in wrk curl python3 taskset; do command -v "$t" >/dev/null || die "needs $t (apt-get install wrk curl python3 util-linux)"; done
if [ "$BACKEND" = auto ]; then
  if command -v nginx >/dev/null; then BACKEND=nginx; else BACKEND=python; fi
fi
[ "$BACKEND" != nginx ] || command -v nginx >/dev/null || die "BACKEND=nginx needs nginx (apt-get install nginx-light)"
[ "$BACKEND" = nginx ] || log "backend: loadtool.py's Python server (no nginx): moat's share of the work is smaller, ratios look closer to 1"

if [ "${SKIP_BUILD:-0}" != 1 ] && [ "$MOAT_BIN" = "$ROOT/target/release/moat" ]; then
  log "building moat (cargo build --release -p moat)"
  (cd "$ROOT" && cargo build --release -p moat)
fi
[ -x "$MOAT_BIN" ] || die "no moat binary at $MOAT_BIN"

# ------------------------------------------------------------------ processes
WORK=$(mktemp -d /tmp/moat-mfa.XXXXXX)
chmod 755 "$WORK" # nginx workers run as nobody
mkdir -p "$RESULTS"
PGIDS=()
HELPERS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${HELPERS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PGIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PGIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP_WORK:-0}" = 1 ] || [ "$rc" -ne 0 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CPU CMD...: CMD in its own process group, pinned to CPU; its
# group id in PG_NAME.
start() {
  local name=$1 cpu=$2; shift 2
  setsid taskset -c "$cpu" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  PGIDS+=("$!")
  printf -v "PG_$name" '%s' "$!"
}
stop_group() { # PGID
  kill -TERM -- "-$1" 2>/dev/null || true
  local i
  for i in $(seq 1 30); do kill -0 -- "-$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$1" 2>/dev/null || true
}
ticks() { $TOOL cputicks "$@"; }
# cpu_busy CPU: "busy idle" clock ticks of that CPU so far (/proc/stat).
cpu_busy() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }
CLK_TCK=$(getconf CLK_TCK)

read -r P_BACKEND P_MFA P_NET P_ADMIN <<<"$($TOOL ports 4)"
CERTS="$WORK/certs"
"$MOAT_BIN" certs dev "$CERTS" >/dev/null

# -- the device: a plain HTTP/1.1 keep-alive backend answering 200 "ok\n"
if [ "$BACKEND" = nginx ]; then
  mkdir -p "$WORK/backend"
  cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
worker_rlimit_nofile 16384;
events { worker_connections 8000; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 1000000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$P_BACKEND backlog=4096;
    location / { return 200 "ok\n"; }
  }
}
EOF
  start backend "$PROXY_CPU" nginx -p "$WORK/backend/" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf"
else
  start backend "$PROXY_CPU" $TOOL http-backend "$P_BACKEND"
fi
$TOOL wait-port "$P_BACKEND" 20 || die "the backend did not come up"

# -- users: bench01..bench99 for the measured traffic (one sign-in each, so
#    no TOTP code is ever replayed), flood-target for the flood. One
#    password for all: argon2id with moat's parameters (m=19456 KiB, t=2,
#    p=1), made once with `moat::auth::password::hash("moat-bench-password")`
#    (benches/examples/phc.rs). The TOTP secret is fixed too.
PASSWORD="moat-bench-password"
PHC='$argon2id$v=19$m=19456,t=2,p=1$Gdl1yXiZdvnbeI2DOhf0Tw$FWu1VnB9c1X4be1PJim5sZz2+duPXHaOeineJqieYZ4'
SECRET="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
{
  for i in $(seq -w 1 99); do
    printf '[[user]]\nname = "bench%s"\npassword = "%s"\ntotp_secret = "%s"\ngroups = ["bench"]\n\n' "$i" "$PHC" "$SECRET"
  done
  printf '[[user]]\nname = "flood-target"\npassword = "%s"\ntotp_secret = "%s"\ngroups = ["bench"]\n' "$PHC" "$SECRET"
} >"$WORK/users.toml"
chmod 600 "$WORK/users.toml"
# `moat run` would create the session key, `moat check` does not: made here.
(umask 077 && python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' >"$WORK/session.key")
NEXT_USER=1

# write_config FILE AUTH_EXTRA: one device, two HTTPS services in front of
# it: `web-mfa` (access = "mfa") and `web` (network), configured like
# run.sh's HTTPS service otherwise.
write_config() {
  # The audit log in a directory of its own: moat watches the config's
  # directory, and an audit line per failed login there would wake the
  # file watcher thread each time (filtered, but not free).
  mkdir -p "$WORK/log"
  cat >"$1" <<EOF
[gateway]
audit_log = "$WORK/log/audit.$(basename "$1" .toml).log"
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:$P_ADMIN"

[auth]
users_file = "$WORK/users.toml"
session_key_file = "$WORK/session.key"
max_concurrent_hashes = $MAX_HASHES
$2

[[device]]
id = "bench-backend"
name = "MFA benchmark backend"

  [[device.service]]
  name = "web-mfa"
  protocol = "http"
  listen = "127.0.0.1:$P_MFA"
  upstream = "127.0.0.1:$P_BACKEND"
  allow = ["127.0.0.0/8"]
  max_connections = 8000
  access = "mfa"
  groups = ["bench"]
    [device.service.tls]
    certificates = [{ cert = "$CERTS/server.pem", key = "$CERTS/server.key" }]
    min_version = "1.3"
    session_resumption = false
    [device.service.http]
    audit_allowed = false

  [[device.service]]
  name = "web"
  protocol = "http"
  listen = "127.0.0.1:$P_NET"
  upstream = "127.0.0.1:$P_BACKEND"
  allow = ["127.0.0.0/8"]
  max_connections = 8000
    [device.service.tls]
    certificates = [{ cert = "$CERTS/server.pem", key = "$CERTS/server.key" }]
    min_version = "1.3"
    session_resumption = false
    [device.service.http]
    audit_allowed = false
EOF
}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PG_moat=""
start_moat() { # CONFIG
  "$MOAT_BIN" check -c "$1" >"$WORK/check.out" 2>&1 || { cat "$WORK/check.out" >&2; die "moat check failed for $1"; }
  # One runtime thread (pinned to one CPU, moat picks the current-thread
  # scheduler anyway); the blocking pool that runs the password hashes and
  # the audit thread share that CPU.
  start moat "$PROXY_CPU" env MOAT_WORKER_THREADS=1 MOAT_LOG=warn "$MOAT_BIN" run -c "$1"
  # moat binds every service before its admin listener.
  $TOOL wait-port "$P_ADMIN" 20 || { tail -n 20 "$WORK/moat.err" >&2; die "moat did not come up"; }
}
stop_moat() { [ -z "$PG_moat" ] || stop_group "$PG_moat"; PG_moat=""; }

# sign_in: a fresh session cookie for the next bench user, in $COOKIE.
COOKIE=""
sign_in() {
  local user try
  user=$(printf 'bench%02d' "$NEXT_USER")
  [ "$NEXT_USER" -le 99 ] || die "out of bench users (RUNS too high)"
  NEXT_USER=$((NEXT_USER + 1))
  for try in 1 2 3 4; do
    if COOKIE=$($TOOL mfa-login "$P_MFA" "$user" "$PASSWORD" "$SECRET" 127.0.0.1 2>"$WORK/login.err"); then
      local code
      code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Cookie: __Host-moat-session=$COOKIE" "https://127.0.0.1:$P_MFA/")
      [ "$code" = 200 ] || die "the new session of $user gets $code, not 200"
      return 0
    fi
    log "sign-in as $user failed ($(cat "$WORK/login.err")), retrying in 7 s"
    sleep 7
  done
  die "cannot sign in as $user"
}

# A browser's Cookie header: five cookies of the device's own UI, moat's last.
cookie_header() {
  printf 'Cookie: _ga=GA1.2.1234567890.1700000000; JSESSIONID=0A1B2C3D4E5F60718293A4B5C6D7E8F9; lang=en-GB; theme=dark; _gid=GA1.2.987654321.1700000000; __Host-moat-session=%s' "$COOKIE"
}

RAW="$WORK/raw.jsonl"
: >"$RAW"
ERRORS=()

# wrk_measure MODE LABEL RUN PORT [EXTRA_JSON_FILE...]: one wrk run, a JSON line in $RAW.
wrk_measure() {
  local mode=$1 label=$2 run=$3 port=$4
  local out="$WORK/wrk.$mode.$label.$run" m0 m1 b0 b1 t0 t1 tt0 tt1 rc=0 json
  local c0 c1 u0 u1
  m0=$(ticks "$PG_moat"); b0=$(ticks "$PG_backend"); tt0=$($TOOL threadcpu "$PG_moat"); u0=$($TOOL cpusplit "$PG_moat")
  c0=$(cpu_busy "$PROXY_CPU")
  t0=$(date +%s.%N)
  $TOOL runcpu "$out.cpu" -- taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
    -H "$(cookie_header)" "https://127.0.0.1:$port/" >"$out" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  c1=$(cpu_busy "$PROXY_CPU")
  m1=$(ticks "$PG_moat"); b1=$(ticks "$PG_backend"); tt1=$($TOOL threadcpu "$PG_moat"); u1=$($TOOL cpusplit "$PG_moat")
  json=$($TOOL parse-wrk "$out")
  python3 - "$json" "$mode" "$label" "$run" "$m0" "$m1" "$b0" "$b1" "$CLK_TCK" "$t0" "$t1" "$rc" "$tt0" "$tt1" "$(cat "$out.cpu" 2>/dev/null || echo 0)" "$c0" "$c1" "$u0" "$u1" >>"$RAW" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
mode, label, run = sys.argv[2:5]
m0, m1, b0, b1, hz = map(int, sys.argv[5:10])
t0, t1, rc = float(sys.argv[10]), float(sys.argv[11]), int(sys.argv[12])
th0, th1 = json.loads(sys.argv[13]), json.loads(sys.argv[14])
wrk_cpu = float(sys.argv[15])
(cb0, ci0), (cb1, ci1) = (map(int, sys.argv[16].split()), map(int, sys.argv[17].split()))
cpu_busy = (cb1 - cb0) / max(1, (cb1 - cb0) + (ci1 - ci0))
(us0, sy0), (us1, sy1) = (map(int, sys.argv[18].split()), map(int, sys.argv[19].split()))
n = j.get("requests") or 0
wall = t1 - t0
if rc:
    j["errors"].append(f"wrk exited {rc}")
print(json.dumps({
    "mode": mode, "label": label, "run": int(run), "rps": j["rps"], "requests": n,
    "p50_ms": j["p50_ms"], "p99_ms": j["p99_ms"], "errors": j["errors"], "wall_s": wall,
    "moat_us_per_req": (m1 - m0) / hz / n * 1e6 if n else None,
    "backend_us_per_req": (b1 - b0) / hz / n * 1e6 if n else None,
    "moat_user_us_per_req": (us1 - us0) / hz / n * 1e6 if n else None,
    "moat_sys_us_per_req": (sy1 - sy0) / hz / n * 1e6 if n else None,
    "moat_cpu_share": (m1 - m0) / hz / wall,
    "backend_cpu_share": (b1 - b0) / hz / wall,
    "wrk_cpu_share": wrk_cpu / wall,
    # the proxy CPU's busy share, and what of it was neither moat nor the
    # backend (other work on the shared machine)
    "proxy_cpu_busy": cpu_busy,
    "others_cpu_share": max(0.0, cpu_busy - (m1 - m0) / hz / wall - (b1 - b0) / hz / wall),
    # schedstat: exact CPU time per thread (by name) while wrk ran
    "threads_cpu_share": {k: (th1.get(k, 0) - th0.get(k, 0)) / wall for k in th1},
}))
PY
  local errs
  errs=$(python3 -c 'import json,sys; print("; ".join(json.loads(sys.argv[1])["errors"]))' "$(tail -n1 "$RAW")")
  [ -z "$errs" ] || ERRORS+=("$mode $label run $run: $errs")
}

logins_by_outcome() { $TOOL metric "$P_ADMIN" moat_logins_total | grep -v '^#' || true; }

# ------------------------------------------------------------------ modes
run_compare() {
  write_config "$WORK/compare.toml" ""
  start_moat "$WORK/compare.toml"
  local run order label
  for run in $(seq 1 "$RUNS"); do
    sign_in
    if [ $((run % 2)) = 1 ]; then order="network mfa"; else order="mfa network"; fi
    for label in $order; do
      log "compare run $run/$RUNS: $label (wrk -t1 -c$CONNS -d${DURATION}s)"
      if [ "$label" = mfa ]; then wrk_measure compare mfa "$run" "$P_MFA"; else wrk_measure compare network "$run" "$P_NET"; fi
      sleep 1
    done
  done
  stop_moat
}

# callgrind: instructions per request of each service, moat under valgrind.
run_callgrind() {
  write_config "$WORK/callgrind.toml" ""
  "$MOAT_BIN" check -c "$WORK/callgrind.toml" >/dev/null
  local cg="$WORK/callgrind" vpid
  setsid taskset -c "$PROXY_CPU" env MOAT_WORKER_THREADS=1 MOAT_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$cg.%p" "$MOAT_BIN" run -c "$WORK/callgrind.toml" \
    >"$WORK/moat-cg.out" 2>"$WORK/moat-cg.err" </dev/null &
  vpid=$!
  PGIDS+=("$vpid")
  PG_moat=$vpid
  $TOOL wait-port "$P_ADMIN" 120 || { tail -n 20 "$WORK/moat-cg.err" >&2; die "moat under valgrind did not come up"; }
  sign_in
  local svc port a b args=(--h1 -c1 -m1 -H "$(cookie_header)")
  # the newest dump of the running moat (not one renamed already)
  cg_last_dump() { ls -t "$cg.$vpid".* 2>/dev/null | head -n1; }
  # Warm-up: a first connection to each service pays one-off set-up.
  for port in "$P_NET" "$P_MFA"; do
    taskset -c "$LOAD_CPU" h2load "${args[@]}" -n 20 "https://127.0.0.1:$port/" >"$WORK/cg-warm.txt" 2>&1
  done
  for svc in network mfa; do
    if [ "$svc" = mfa ]; then port=$P_MFA; else port=$P_NET; fi
    callgrind_control -z "$vpid" >/dev/null 2>&1
    taskset -c "$LOAD_CPU" h2load "${args[@]}" -n "$CG_N0" "https://127.0.0.1:$port/" >"$WORK/cg-$svc-a.txt" 2>&1
    callgrind_control -d "$svc-a" "$vpid" >/dev/null 2>&1; mv "$(cg_last_dump)" "$cg.$svc-a"
    taskset -c "$LOAD_CPU" h2load "${args[@]}" -n "$((CG_N0 + CG_N))" "https://127.0.0.1:$port/" >"$WORK/cg-$svc-b.txt" 2>&1
    callgrind_control -d "$svc-b" "$vpid" >/dev/null 2>&1; mv "$(cg_last_dump)" "$cg.$svc-b"
    for f in "$WORK/cg-$svc-a.txt" "$WORK/cg-$svc-b.txt"; do
      grep -q "succeeded, 0 failed, 0 errored" "$f" && grep -q "status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" "$f" ||
        { cat "$f" >&2; ERRORS+=("callgrind $svc: h2load failed"); }
    done
    a=$(awk '/^summary:|^totals:/ {print $2; exit}' "$cg.$svc-a")
    b=$(awk '/^summary:|^totals:/ {print $2; exit}' "$cg.$svc-b")
    printf '{"mode": "callgrind", "label": "%s", "run": 1, "a": %s, "b": %s, "n0": %s, "n": %s}\n' \
      "$svc" "$a" "$b" "$CG_N0" "$CG_N" >>"$RAW"
  done
  mkdir -p "$RESULTS/callgrind"
  cp "$cg".network-b "$cg".mfa-b "$RESULTS/callgrind/" 2>/dev/null || true
  stop_moat
}

# flood_phase MODE RUN KIND: the flood from $FLOOD_SRC with the hash gauge
# sampled; KIND "flood": wrk measured meanwhile (the flood starts 1 s before
# it and ends 1 s after), "alone": the flood by itself for $FLOOD_ALONE s,
# with moat's CPU over all of it.
flood_phase() {
  local mode=$1 run=$2 kind=$3 secs
  local fl="$WORK/flood.$mode.$kind.$run.json" samp="$WORK/samples.$mode.$kind.$run.json"
  local l0 l1 m0=0 m1=0 tt0='{}' tt1='{}' sampler flooder
  if [ "$kind" = flood ]; then secs=$((DURATION + 2)); else secs=$FLOOD_ALONE; fi
  l0=$(logins_by_outcome)
  taskset -c "$LOAD_CPU" python3 "$HERE/loadtool.py" metrics-sampler "$P_ADMIN" "$samp" "$SAMPLE_INTERVAL" "$PG_moat" &
  sampler=$!
  HELPERS+=("$sampler")
  if [ "$kind" = alone ]; then m0=$(ticks "$PG_moat"); tt0=$($TOOL threadcpu "$PG_moat"); fi
  taskset -c "$LOAD_CPU" nice -n "$FLOOD_NICE" python3 "$HERE/loadtool.py" login-flood "$P_MFA" "$FLOOD_SRC" "$FLOOD_CONNS" "$secs" "$fl" &
  flooder=$!
  HELPERS+=("$flooder")
  local perf=""
  if [ "$PROFILE" = 1 ] && [ "$kind" = alone ] && [ "$run" = 1 ]; then
    sleep 0.5
    taskset -c "$LOAD_CPU" perf record -q -F 1999 -o "$WORK/perf.$mode.data" -p "$(ps -o pid= -s "$PG_moat" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')" \
      >/dev/null 2>&1 &
    perf=$!
    HELPERS+=("$perf")
  fi
  if [ "$kind" = flood ]; then
    sleep 1
    wrk_measure "$mode" flood "$run" "$P_MFA"
  fi
  wait "$flooder" || ERRORS+=("$mode $kind run $run: the flooder failed")
  if [ "$kind" = alone ]; then m1=$(ticks "$PG_moat"); tt1=$($TOOL threadcpu "$PG_moat"); fi
  if [ -n "$perf" ]; then
    kill -INT "$perf" 2>/dev/null || true
    wait "$perf" 2>/dev/null || true
    perf report -i "$WORK/perf.$mode.data" --stdio --no-children --sort comm,dso,symbol --percent-limit 0.7 2>/dev/null \
      | grep -v '^$' | head -n 80 >"$RESULTS/mfa-profile-$mode.txt" || true
    log "profile of moat, $mode flood alone: $RESULTS/mfa-profile-$mode.txt"
  fi
  kill -TERM "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  l1=$(logins_by_outcome)
  python3 - "$fl" "$samp" "$l0" "$l1" "$mode" "$run" "$kind" "$m0" "$m1" "$CLK_TCK" "$tt0" "$tt1" >>"$RAW" <<'PY'
import json, sys
fl, samp, l0, l1, mode, run, kind = sys.argv[1:8]
m0, m1, hz = int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10])
th0, th1 = json.loads(sys.argv[11]), json.loads(sys.argv[12])
def parse(text):
    out = {}
    for line in text.splitlines():
        if "outcome=" in line:
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = out.get(outcome, 0) + float(line.split()[-1])
    return out
a, b = parse(l0), parse(l1)
try:
    s = json.load(open(samp))
except (OSError, ValueError):
    s = {"samples": 0, "errors": "no samples file"}
f = json.load(open(fl))
row = {
    "mode": mode, "label": f"{kind}_stats", "run": int(run), "flood": f, "samples": s,
    "logins": {k: int(b.get(k, 0) - a.get(k, 0)) for k in sorted(b) if b.get(k, 0) - a.get(k, 0)},
}
if kind == "alone":
    wall = f["wall_s"]
    row["moat_cpu_share"] = (m1 - m0) / hz / wall
    row["moat_us_per_post"] = (m1 - m0) / hz / f["posts"] * 1e6 if f["posts"] else None
    row["threads_cpu_share"] = {k: (th1.get(k, 0) - th0.get(k, 0)) / wall for k in th1}
print(json.dumps(row))
PY
}

# run_flood MODE AUTH_EXTRA
run_flood() {
  local mode=$1
  write_config "$WORK/$mode.toml" "$2"
  start_moat "$WORK/$mode.toml"
  local renicer=""
  if [ -n "$HASH_NICE" ]; then
    taskset -c "$LOAD_CPU" python3 "$HERE/loadtool.py" renice-threads "$PG_moat" tokio-rt "$HASH_NICE" &
    renicer=$!
    HELPERS+=("$renicer")
    log "experiment: moat's blocking-pool threads at nice $HASH_NICE"
  fi
  local run order label
  for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then order="quiet flood"; else order="flood quiet"; fi
    for label in $order; do
      sign_in
      if [ "$label" = quiet ]; then
        log "$mode run $run/$RUNS: quiet (wrk -t1 -c$CONNS -d${DURATION}s on the mfa service)"
        wrk_measure "$mode" quiet "$run" "$P_MFA"
      else
        log "$mode run $run/$RUNS: flood ($FLOOD_CONNS connections from $FLOOD_SRC) + the same wrk"
        flood_phase "$mode" "$run" flood
      fi
      sleep 1
    done
    log "$mode run $run/$RUNS: the flood alone for ${FLOOD_ALONE}s"
    flood_phase "$mode" "$run" alone
    sleep 1
  done
  logins_by_outcome >"$WORK/logins.$mode.txt"
  if [ -n "$renicer" ]; then kill "$renicer" 2>/dev/null || true; wait "$renicer" 2>/dev/null || true; fi
  stop_moat
}

STAMP=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
for mode in $MODES; do
  case "$mode" in
    compare) run_compare ;;
    callgrind) run_callgrind ;;
    flood) run_flood flood $'lockout_failures = 1000000\nlogin_rate = "100000/s"' ;;
    flood_defaults) run_flood flood_defaults "" ;;
  esac
done

# ------------------------------------------------------------------ summary
{
  echo "# moat MFA load benchmark, $STAMP"
  echo "# $("$MOAT_BIN" --version 2>/dev/null) at $MOAT_BIN, built $(date -u -r "$MOAT_BIN" +%Y-%m-%dT%H:%M:%SZ); work tree at $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
  echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs; moat+backend ($BACKEND) on cpu$PROXY_CPU, wrk+flooder+sampler on cpu$LOAD_CPU; load average at start $LOAD_AT_START"
  echo "# RUNS=$RUNS DURATION=${DURATION}s CONNS=$CONNS FLOOD_CONNS=$FLOOD_CONNS FLOOD_SRC=$FLOOD_SRC MAX_HASHES=$MAX_HASHES SAMPLE_INTERVAL=${SAMPLE_INTERVAL}s FLOOD_NICE=$FLOOD_NICE FLOOD_ALONE=${FLOOD_ALONE}s HASH_NICE=${HASH_NICE:-unset} MODES=\"$MODES\""
} >"$WORK/header.txt"
python3 - "$RAW" "$MAX_HASHES" "$HASH_NICE" >"$WORK/table.txt" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
max_hashes, hash_nice = int(sys.argv[2]), sys.argv[3]
def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
def f(v, d=0):
    return "-" if v is None else f"{v:,.{d}f}"
def of(mode, label):
    return sorted((r for r in rows if r["mode"] == mode and r["label"] == label), key=lambda r: r["run"])
def threads(rs):
    th = {}
    for r in rs:
        for k, v in r.get("threads_cpu_share", {}).items():
            th.setdefault(k, []).append(v)
    return ", ".join(f"{k} {med(v):.2f}" for k, v in sorted(th.items(), key=lambda kv: -med(kv[1]))
                     if med(v) >= 0.005) or "-"
out = []
def table(mode, labels, title):
    if not any(of(mode, l) for l in labels):
        return {}
    out.append("")
    out.append(f"== {mode}: {title}")
    out.append(f"{'':<9}{'runs':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'moat us/req':>13}"
               f"{'moat CPU':>10}{'backend':>9}{'others':>8}{'wrk CPU':>9}   req/s of each run")
    meds = {}
    for l in labels:
        g = of(mode, l)
        if not g:
            continue
        m = {k: med([r.get(k) for r in g]) for k in ("rps", "p50_ms", "p99_ms", "moat_us_per_req",
                                                      "moat_cpu_share", "backend_cpu_share", "wrk_cpu_share",
                                                      "others_cpu_share")}
        meds[l] = m
        runs = " ".join(f"{r['rps']:.0f}" for r in g)
        out.append(f"{l:<9}{len(g):>5}{f(m['rps']):>10}{f(m['p50_ms'], 2):>9}{f(m['p99_ms'], 2):>9}"
                   f"{f(m['moat_us_per_req'], 1):>13}{f(m['moat_cpu_share'], 2):>10}"
                   f"{f(m['backend_cpu_share'], 2):>9}{f(m['others_cpu_share'], 2):>8}"
                   f"{f(m['wrk_cpu_share'], 2):>9}   {runs}")
    return meds
def paired(mode, a, b):
    by = {}
    for r in rows:
        if r["mode"] == mode and r["label"] in (a, b):
            by.setdefault(r["run"], {})[r["label"]] = r["rps"]
    return [v[a] / v[b] for _, v in sorted(by.items()) if a in v and b in v and v[b]]

m = table("compare", ["network", "mfa"], "h1 HTTPS keep-alive, wrk, the same Cookie header on both services")
if "mfa" in m and "network" in m:
    p = paired("compare", "mfa", "network")
    cpu = (m["mfa"]["moat_us_per_req"] or 0) - (m["network"]["moat_us_per_req"] or 0)
    out.append(f"mfa/network req/s: {m['mfa']['rps'] / m['network']['rps']:.3f} (ratio of the medians); "
               f"per run {' '.join(f'{x:.3f}' for x in p)}, median {med(p):.3f}; target >= 0.95")
    by = {}
    for r in rows:
        if r["mode"] == "compare" and r.get("moat_us_per_req") and r.get("backend_us_per_req"):
            by.setdefault(r["run"], {})[r["label"]] = r
    pc = [v["mfa"]["moat_us_per_req"] / v["network"]["moat_us_per_req"]
          for v in by.values() if "mfa" in v and "network" in v]
    # Proxy and backend share one CPU: when it is the limit, req/s goes as
    # 1 / (moat + backend CPU per request).
    pt = [(v["network"]["moat_us_per_req"] + v["network"]["backend_us_per_req"])
          / (v["mfa"]["moat_us_per_req"] + v["mfa"]["backend_us_per_req"])
          for v in by.values() if "mfa" in v and "network" in v]
    out.append("moat user / system CPU per request (medians): " + ", ".join(
        f"{l} {f(med([r.get('moat_user_us_per_req') for r in of('compare', l)]), 1)} / "
        f"{f(med([r.get('moat_sys_us_per_req') for r in of('compare', l)]), 1)} us" for l in ("network", "mfa")))
    out.append(f"moat CPU per request, mfa - network: {cpu:+.1f} us (medians); mfa/network per run, "
               f"median: {med(pc):.3f}; req/s it predicts for a saturated proxy CPU "
               f"(network/mfa moat+backend CPU per request, per run, median): {med(pt):.3f}")
cg = {r["label"]: r for r in rows if r["mode"] == "callgrind"}
if cg:
    out.append("")
    out.append("== callgrind: instructions per request (every moat thread; h2load --h1 -c1 -m1, the same Cookie header)")
    out.append(f"{'':<9}{'A (conn+N0)':>16}{'B (conn+N0+N)':>16}{'B/(N0+N)':>12}{'(B-A)/N':>12}")
    marg = {}
    for l in ("network", "mfa"):
        if l in cg:
            r = cg[l]
            marg[l] = (r["b"] - r["a"]) / r["n"]
            out.append(f"{l:<9}{r['a']:>16,}{r['b']:>16,}{r['b'] / (r['n0'] + r['n']):>12,.0f}{marg[l]:>12,.0f}")
    if len(marg) == 2:
        extra = marg["mfa"] / marg["network"] - 1
        out.append(f"mfa - network: {marg['mfa'] - marg['network']:+,.0f} instructions per request "
                   f"({extra:+.1%} of moat's user-space instructions)")
        net = [r for r in of("compare", "network") if r.get("moat_user_us_per_req")]
        if net:
            # callgrind counts user space only: scale moat's user CPU per
            # request by it, keep its system CPU and the backend's.
            u = med([r["moat_user_us_per_req"] for r in net])
            t = med([r["moat_us_per_req"] + r["backend_us_per_req"] for r in net])
            out.append(f"  with this run's network figures (moat user {u:.1f} us, moat + backend {t:.1f} us per "
                       f"request), a saturated proxy CPU would give mfa/network = {t / (t + extra * u):.3f}")
exceeded = False
for mode, what in (("flood", "limits raised, every flood POST reaches the hash"),
                   ("flood_defaults", "[auth] default limits")):
    nice = f"; hash threads at nice {hash_nice} (experiment)" if hash_nice else ""
    m = table(mode, ["quiet", "flood"], f"authenticated wrk traffic without and with the login flood ({what}{nice})")
    if not m:
        continue
    if "quiet" in m and "flood" in m:
        p = paired(mode, "flood", "quiet")
        out.append(f"flood/quiet req/s: {m['flood']['rps'] / m['quiet']['rps']:.3f} (ratio of the medians); "
                   f"per run {' '.join(f'{x:.3f}' for x in p)}, median {med(p):.3f}; target >= 0.8")
    out.append("moat's threads, share of one CPU (schedstat, medians): quiet: " + threads(of(mode, "quiet"))
               + "; flood: " + threads(of(mode, "flood")))
    st = of(mode, "flood_stats")
    if st:
        statuses, logins = {}, {}
        for s in st:
            for k, v in s["flood"]["statuses"].items():
                statuses[k] = statuses.get(k, 0) + v
            for k, v in s["logins"].items():
                logins[k] = logins.get(k, 0) + v
        out.append(f"flood beside wrk: {med([s['flood']['per_s'] for s in st]):,.0f} POSTs/s, answered in "
                   f"p50 {med([s['flood']['p50_ms'] for s in st]):,.1f} ms, p99 {med([s['flood']['p99_ms'] for s in st]):,.1f} ms "
                   f"(medians of runs); flooder CPU {med([s['flood']['cpu_s'] / s['flood']['wall_s'] for s in st]):.2f}; "
                   f"HTTP statuses, all runs: {statuses}")
        out.append(f"  moat_logins_total by outcome, all runs: {logins}")
    al = of(mode, "alone_stats")
    if al:
        out.append(f"flood alone: {med([s['flood']['per_s'] for s in al]):,.0f} POSTs/s, moat "
                   f"{f(med([s['moat_us_per_post'] for s in al]), 0)} us CPU per POST, moat CPU "
                   f"{med([s['moat_cpu_share'] for s in al]):.2f}; threads: {threads(al)}")
    allst = st + al
    if allst:
        mx = max(s["samples"].get("in_progress_max", 0) for s in allst)
        wmx = max(s["samples"].get("waiting_max", 0) for s in allst)
        rmx = max(s["samples"].get("runnable_hash_threads_max", 0) for s in allst)
        n = sum(s["samples"].get("samples", 0) for s in allst)
        hist, rhist = {}, {}
        for s in allst:
            for k, v in s["samples"].get("in_progress_hist", {}).items():
                hist[k] = hist.get(k, 0) + v
            for k, v in s["samples"].get("runnable_hist", {}).items():
                rhist[k] = rhist.get(k, 0) + v
        exceeded |= mx > max_hashes
        out.append(f"moat_password_hashes_in_progress: max {mx:.0f} over {n} samples (samples by value "
                   f"{dict(sorted(hist.items()))}); max_concurrent_hashes = {max_hashes}: "
                   f"{'within' if mx <= max_hashes else 'GAUGE ABOVE THE CAP'}; moat_password_hashes_waiting max {wmx:.0f}")
        out.append(f"  blocking-pool threads runnable (state R) at the same samples: max {rmx} "
                   f"(samples by value {dict(sorted(rhist.items()))})")
        probs = [p for s in allst for p in s["flood"].get("problems", [])]
        if probs:
            out.append("  flooder problems: " + "; ".join(probs[:5]))
out.append("")
out.append("columns: moat us/req = moat's CPU (every thread) per wrk request; moat CPU, backend, others = "
           "busy shares of the proxy CPU (others: neither, i.e. the rest of the machine); "
           "wrk CPU = wrk's share of the load CPU")
print("\n".join(out))
if exceeded:
    print("\nnote: the gauge above max_concurrent_hashes (see docs/benchmarks.md, MFA)")
PY
cat "$WORK/header.txt" "$WORK/table.txt"
{ cat "$WORK/header.txt"; cat "$WORK/table.txt"; } >"$RESULTS/mfa-latest.txt"
{ cat "$WORK/header.txt"; cat "$RAW"; } >"$RESULTS/mfa-latest.jsonl"
log "results: $RESULTS/mfa-latest.txt (tables), mfa-latest.jsonl (every measurement)"

if [ ${#ERRORS[@]} -gt 0 ]; then
  printf '\nERRORS:\n' >&2
  printf '  %s\n' "${ERRORS[@]}" >&2
  exit 1
fi
