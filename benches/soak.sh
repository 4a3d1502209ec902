#!/usr/bin/env bash
# Soak test (issue 16): mixed traffic through a real moat binary for
# SOAK_SECONDS, with a policy reload and a live revocation every few
# seconds; fails when moat's memory, descriptors, threads or tokio tasks grow
# beyond a bound, or when any allowed request fails or any denied one gets
# through. Everything on 127.0.0.0/8, bounded in count and time.
#
#   SOAK_SECONDS=60 MOAT_BIN=target/debug/moat bash benches/soak.sh
#   SOAK_SECONDS=600 bash benches/soak.sh        # target/release/moat if it exists
#
# Builds nothing. Needs nginx (Debian: nginx-light), wrk, curl, openssl and
# python3 (standard library); installed with apt-get when missing and root.
#
# The traffic, kept modest (2 shared cores):
#   L7 HTTPS   wrk -c$SOAK_WRK_CONNS from 127.0.0.1, each connection pausing
#              $SOAK_WRK_DELAY_MS ms between requests; curl keep-alive runs
#              from 127.0.0.2 (/ and a 256 KiB /big); openssl s_client
#   L7 HTTP    curl keep-alive runs from 127.0.0.1, plaintext service
#   L4 TLS     python3 TLS echo clients from 127.0.0.1 and 127.0.0.2, each
#              with two long-lived connections and a new one every 50 ms
#   denied     127.0.0.9 (not in the allowlist) and 127.0.0.10 (allowlisted
#              but denylisted) with curl, openssl s_client and python3, on
#              every service: any answer is a leak
#   control    every $SOAK_INTERVAL s: a real change to the main policy,
#              applied by the file watcher, SIGHUP and POST /reload in turn,
#              then a revocation: 127.0.0.3 holds one live connection per
#              service, is removed from the allowlist file, each connection
#              must be cut and a new one refused; then it is put back and
#              must get through again.
# A warm-up of SOAK_WARMUP s runs the same traffic first. The start figures
# are taken after it and the end figures after the soak, both once moat has
# drained (no connection active or to a backend; tasks and descriptors
# steady).
#
# Bounds (environment): SOAK_MAX_RSS_MIB (16) and SOAK_MAX_RSS_PCT (25): end
# RSS may exceed start by the larger of the two; SOAK_MAX_FDS,
# SOAK_MAX_TASKS, SOAK_MAX_THREADS (16 each). SOAK_KEEP=1 keeps the work
# directory (it is kept on failure anyway).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_WARMUP=${SOAK_WARMUP:-15}
SOAK_INTERVAL=${SOAK_INTERVAL:-3}
SOAK_WRK_CONNS=${SOAK_WRK_CONNS:-8}
SOAK_WRK_DELAY_MS=${SOAK_WRK_DELAY_MS:-20}
SOAK_MAX_RSS_MIB=${SOAK_MAX_RSS_MIB:-16}
SOAK_MAX_RSS_PCT=${SOAK_MAX_RSS_PCT:-25}
SOAK_MAX_FDS=${SOAK_MAX_FDS:-16}
SOAK_MAX_TASKS=${SOAK_MAX_TASKS:-16}
SOAK_MAX_THREADS=${SOAK_MAX_THREADS:-16}
DRAIN_DEADLINE=${SOAK_DRAIN_DEADLINE:-60}
if [ -z "${MOAT_BIN:-}" ]; then
  if [ -x "$ROOT/target/release/moat" ]; then MOAT_BIN=$ROOT/target/release/moat; else MOAT_BIN=$ROOT/target/debug/moat; fi
fi
SOAK=(python3 "$HERE/soak/soak.py")
LOADTOOL=(python3 "$HERE/load/loadtool.py")

BENCH=soak
KEEP_WORK=${SOAK_KEEP:-0}
# shellcheck source=load/lib.sh
source "$HERE/load/lib.sh"
fail() { log "FAIL: $*"; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in SOAK_SECONDS SOAK_WARMUP SOAK_INTERVAL SOAK_WRK_CONNS SOAK_WRK_DELAY_MS SOAK_MAX_RSS_MIB \
  SOAK_MAX_RSS_PCT SOAK_MAX_FDS SOAK_MAX_TASKS SOAK_MAX_THREADS DRAIN_DEADLINE; do
  is_uint "${!v}" || fail "$v must be a whole number, not '${!v}'"
done
[ "$SOAK_SECONDS" -ge 10 ] || fail "SOAK_SECONDS=$SOAK_SECONDS: at least 10"
[ "$SOAK_SECONDS" -le 3600 ] || fail "SOAK_SECONDS=$SOAK_SECONDS: at most 3600 (one hour)"
{ [ "$SOAK_WARMUP" -ge 5 ] && [ "$SOAK_WARMUP" -le 300 ]; } || fail "SOAK_WARMUP must be 5 to 300"
[ "$SOAK_INTERVAL" -ge 2 ] || fail "SOAK_INTERVAL must be at least 2 (a revocation cycle takes about 1 s)"
{ [ "$SOAK_WRK_CONNS" -ge 1 ] && [ "$SOAK_WRK_CONNS" -le 64 ]; } || fail "SOAK_WRK_CONNS must be 1 to 64"
[ -x "$MOAT_BIN" ] || fail "no moat binary at $MOAT_BIN (build it first, or set MOAT_BIN)"

need=()
command -v nginx >/dev/null || need+=(nginx-light)
for t in wrk curl openssl python3; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    fail "missing ${need[*]}: apt-get install ${need[*]}"
  fi
fi

# ------------------------------------------------------------------ processes
# Every process group `start` launches (servers and traffic generators) is
# stopped on exit by lib.sh's cleanup.
work_dir
chmod 755 "$WORK" # nginx workers may run as nobody
GENS=()   # traffic generators of the running phase
COUNTS=() # the count file every generator must leave
GEN_FAILED=()

read -r P_BACKEND P_ECHO P_HTTPS P_HTTP P_L4 P_ADMIN <<<"$("${LOADTOOL[@]}" ports 6)"
"$MOAT_BIN" certs dev "$WORK/certs" >/dev/null
CA=$WORK/certs/ca.pem
head -c 262144 /dev/urandom >"$WORK/big.bin"

# -- the device web UI: nginx, one worker, "ok\n" on / and 256 KiB on /big.
#    keepalive_timeout 2s: moat's idle pooled connections to it close soon
#    after the traffic stops, so that the drain can wait for none to be left.
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  default_type text/plain;
  keepalive_timeout 2s;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$P_BACKEND;
    location = / { return 200 "ok\n"; }
    location = /big { alias $WORK/big.bin; }
  }
}
EOF
nginx -t -q -p "$WORK/nginx/" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf"

# -- the policy. The main file is rendered from this template at every
#    reload (@MAXC@ alternates, @GEN@ counts); the allowlist is a network-set
#    file that each revocation rewrites.
cat >"$WORK/moat.toml.in" <<EOF
# moat soak policy (benches/soak.sh), rewritten at every reload
[gateway]
audit_log = "$WORK/audit.log"
shutdown_grace = "2s"

[admin]
listen = "127.0.0.1:$P_ADMIN"

[networks.clients]
file = "clients.txt"

[networks.quarantine]
cidrs = ["127.0.0.10"]

[[device]]
id = "soak"
name = "Soak backend"

  [[device.service]]
  name = "https"
  protocol = "http"
  listen = "127.0.0.1:$P_HTTPS"
  upstream = "127.0.0.1:$P_BACKEND"
  allow = ["clients"]
  deny = ["quarantine"]
    [device.service.tls]
    certificates = [{ cert = "certs/server.pem", key = "certs/server.key" }]

  [[device.service]]
  name = "http"
  protocol = "http"
  listen = "127.0.0.1:$P_HTTP"
  upstream = "127.0.0.1:$P_BACKEND"
  allow = ["clients"]
  deny = ["quarantine"]
  plaintext = true
  max_connections = @MAXC@

  [[device.service]]
  name = "l4"
  protocol = "tcp"
  listen = "127.0.0.1:$P_L4"
  upstream = "127.0.0.1:$P_ECHO"
  allow = ["clients"]
  deny = ["quarantine"]
    [device.service.tls]
    certificates = [{ cert = "certs/server.pem", key = "certs/server.key" }]
# soak reload @GEN@
EOF

write_conf() { # the JSON the helper reads
  cat >"$WORK/conf.json" <<EOF
{"template": "$WORK/moat.toml.in", "policy": "$WORK/moat.toml", "allow": "$WORK/clients.txt",
 "audit": "$WORK/audit.log", "ca": "$CA", "admin": $P_ADMIN, "moat_pid": ${MOAT_PID:-0},
 "interval": $SOAK_INTERVAL, "backend_ports": [$P_BACKEND, $P_ECHO],
 "ports": {"https": $P_HTTPS, "http": $P_HTTP, "l4": $P_L4},
 "bounds": {"rss_mib": $SOAK_MAX_RSS_MIB, "rss_pct": $SOAK_MAX_RSS_PCT, "fds": $SOAK_MAX_FDS,
            "tasks": $SOAK_MAX_TASKS, "threads": $SOAK_MAX_THREADS}}
EOF
}
write_conf
"${SOAK[@]}" render "$WORK/conf.json" 0
"${SOAK[@]}" allow "$WORK/conf.json"
"$MOAT_BIN" check -c "$WORK/moat.toml" >"$WORK/check.out" || { cat "$WORK/check.out" >&2; fail "moat check refused the policy"; }

start backend - nginx -p "$WORK/nginx/" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf"
start echo - "${LOADTOOL[@]}" echo-server "$P_ECHO"
start moat - env MOAT_LOG=warn "$MOAT_BIN" run -c "$WORK/moat.toml"
MOAT_PID=$LAST_PID
# moat binds every service before its admin listener: waiting for the admin
# port does not open (and audit) a connection to a service.
for p in $P_BACKEND $P_ECHO $P_ADMIN; do
  "${LOADTOOL[@]}" wait-port "$p" 20 || fail "127.0.0.1:$p did not come up"
done
[ "$(cat "/proc/$MOAT_PID/comm" 2>/dev/null)" = moat ] || fail "pid $MOAT_PID is not moat"
write_conf
log "moat $MOAT_BIN (pid $MOAT_PID), admin 127.0.0.1:$P_ADMIN; work directory $WORK"

cat >"$WORK/pace.lua" <<EOF
function delay() return $SOAK_WRK_DELAY_MS end
EOF

# ------------------------------------------------------------------ one phase
# traffic PHASE SECS: every generator for SECS seconds; counts in
# $WORK/PHASE/count.*.json. Each is its own process group, under `timeout`.
traffic() {
  local phase=$1 secs=$2 d="$WORK/$1" lim=$(($2 + 60))
  mkdir -p "$d"
  local c="$WORK/conf.json"
  local hs="https://localhost:$P_HTTPS" hp="http://127.0.0.1:$P_HTTP"
  GENS=()
  gen() { start "$phase.$1" - timeout "$lim" "${@:2}"; GENS+=("$LAST_PID"); COUNTS+=("$d/count.$1.json"); }
  gen wrk wrk -t1 -c"$SOAK_WRK_CONNS" -d"${secs}s" --timeout 5s -s "$WORK/pace.lua" \
    "https://127.0.0.1:$P_HTTPS/"
  gen curl-https "${SOAK[@]}" curl "$c" 127.0.0.2 "$secs" "$d/count.curl-https.json" allowed "$hs/" "$hs/big" "$hs/" "$hs/"
  gen curl-http "${SOAK[@]}" curl "$c" 127.0.0.1 "$secs" "$d/count.curl-http.json" allowed "$hp/" "$hp/big" "$hp/"
  gen curl-denied-9 "${SOAK[@]}" curl "$c" 127.0.0.9 "$secs" "$d/count.curl-denied-9.json" denied "$hs/" "$hp/"
  gen curl-denied-10 "${SOAK[@]}" curl "$c" 127.0.0.10 "$secs" "$d/count.curl-denied-10.json" denied "$hs/" "$hp/"
  gen sclient "${SOAK[@]}" sclient "$c" "$secs" "$d/count.sclient.json"
  gen l4-1 "${SOAK[@]}" l4 "$c" 127.0.0.1 "$secs" "$d/count.l4-1.json"
  gen l4-2 "${SOAK[@]}" l4 "$c" 127.0.0.2 "$secs" "$d/count.l4-2.json"
  gen l4-denied-9 "${SOAK[@]}" l4 "$c" 127.0.0.9 "$secs" "$d/count.l4-denied-9.json" denied
  gen l4-denied-10 "${SOAK[@]}" l4 "$c" 127.0.0.10 "$secs" "$d/count.l4-denied-10.json" denied
  gen control "${SOAK[@]}" control "$c" "$secs" "$d/count.control.json"
  local p rc=0
  for p in "${GENS[@]}"; do wait "$p" || rc=1; done
  GENS=()
  if [ "$rc" -ne 0 ]; then
    log "a $phase generator exited non-zero (see $WORK/$phase.*.err)"
    GEN_FAILED+=("$phase")
  fi
  "${SOAK[@]}" wrk "$WORK/$phase.wrk.out" "$d/count.wrk.json"
  return 0
}

figures() { "${SOAK[@]}" figures "$WORK/conf.json"; }
drain() {
  local t0=$SECONDS out
  out=$("${SOAK[@]}" drain "$WORK/conf.json" "$DRAIN_DEADLINE") || fail "moat did not drain after the $1"
  log "drained after the $1 in $((SECONDS - t0)) s: $out"
}

log "warm-up: ${SOAK_WARMUP}s of the same traffic"
traffic warmup "$SOAK_WARMUP"
drain warm-up
START=$(figures)
log "start: $START"

log "soak: ${SOAK_SECONDS}s (load average $(cut -d' ' -f1-3 /proc/loadavg))"
t0=$SECONDS
traffic soak "$SOAK_SECONDS"
log "traffic stopped after $((SECONDS - t0)) s"
drain soak
END=$(figures)
log "end: $END"

AUDIT=$("${SOAK[@]}" audit "$WORK/conf.json")
echo
echo "moat soak: $(basename "$MOAT_BIN") ($MOAT_BIN), ${SOAK_SECONDS}s after a ${SOAK_WARMUP}s warm-up, $(nproc) cores"
rc=0
"${SOAK[@]}" report "$WORK/conf.json" "$START" "$END" "$AUDIT" "${COUNTS[@]}" || rc=$?
[ "${#GEN_FAILED[@]}" -eq 0 ] || { echo "FAIL: a traffic generator exited non-zero in: ${GEN_FAILED[*]}"; rc=1; }
[ "$rc" -eq 0 ] || fail "see above"
echo
echo "soak: OK"
