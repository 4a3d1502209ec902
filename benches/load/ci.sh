#!/usr/bin/env bash
# Bounded CI load test (well under 60 s): moat under a short L7 HTTPS load
# and an L4 TLS load, on 127.0.0.1 only. Fails on any non-2xx response,
# socket error, refused, cut or dropped connection, or dropped audit event.
# Never fails on speed: throughput is printed for the log only.
#
# Needs: wrk and python3 (standard library only). On Debian:
#   apt-get install wrk python3
# (installed here when missing and apt-get is usable as root).
# Builds nothing: pass the binary as MOAT_BIN (default target/debug/moat,
# which `cargo test --workspace` leaves behind).
#
#   MOAT_BIN=target/debug/moat bash benches/load/ci.sh
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MOAT_BIN=${MOAT_BIN:-$ROOT/target/debug/moat}
DURATION=${CI_LOAD_DURATION:-8}
CONNS=${CI_LOAD_CONNS:-32}
ECHO_CONNS=${CI_ECHO_CONNS:-200}
ECHO_ROUNDS=${CI_ECHO_ROUNDS:-5}
TOOL="python3 $HERE/loadtool.py"
SECONDS=0

BENCH=ci-load
KEEP_WORK=${CI_LOAD_KEEP:-0}
# shellcheck source=lib.sh
source "$HERE/lib.sh"
fail() { log "FAIL: $*"; exit 1; }

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    fail "missing ${need[*]}: apt-get install ${need[*]}"
  fi
fi
[ -x "$MOAT_BIN" ] || fail "no moat binary at $MOAT_BIN (build it first, or set MOAT_BIN)"

work_dir

read -r P_HTTP P_ECHO P_M_TLS P_M_L4 P_ADMIN <<<"$($TOOL ports 5)"
"$MOAT_BIN" certs dev "$WORK/certs" >/dev/null

cat >"$WORK/moat.toml" <<EOF
[gateway]
audit_log = "$WORK/audit.log"
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:$P_ADMIN"

[[device]]
id = "ci-load"
name = "CI load backend"

  [[device.service]]
  name = "https"
  protocol = "http"
  listen = "127.0.0.1:$P_M_TLS"
  upstream = "127.0.0.1:$P_HTTP"
  allow = ["127.0.0.0/8"]
  max_connections = 1024
    [device.service.tls]
    certificates = [{ cert = "$WORK/certs/server.pem", key = "$WORK/certs/server.key" }]

  [[device.service]]
  name = "tls-echo"
  protocol = "tcp"
  listen = "127.0.0.1:$P_M_L4"
  upstream = "127.0.0.1:$P_ECHO"
  allow = ["127.0.0.0/8"]
  max_connections = 1024
    [device.service.tls]
    certificates = [{ cert = "$WORK/certs/server.pem", key = "$WORK/certs/server.key" }]
EOF

start backend - $TOOL http-backend "$P_HTTP"
start echo - $TOOL echo-server "$P_ECHO"
start moat - env MOAT_LOG=warn "$MOAT_BIN" run -c "$WORK/moat.toml"
# moat binds every service before its admin listener: waiting for the admin
# port does not open (and audit) a connection to a service.
for p in $P_HTTP $P_ECHO $P_ADMIN; do
  $TOOL wait-port "$p" 20 || fail "127.0.0.1:$p did not come up"
done

# -- L7: HTTPS keep-alive load through the HTTP proxy (every request audited)
log "L7: wrk -t1 -c$CONNS -d${DURATION}s https://127.0.0.1:$P_M_TLS/"
wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "https://127.0.0.1:$P_M_TLS/" >"$WORK/wrk.out" 2>&1 ||
  { cat "$WORK/wrk.out" >&2; fail "wrk exited non-zero"; }
WRK=$($TOOL parse-wrk "$WORK/wrk.out")
python3 - "$WRK" <<'PY' || { cat "$WORK/wrk.out" >&2; fail "L7 load had errors"; }
import json, sys
j = json.loads(sys.argv[1])
print(f"L7 HTTPS: {j['requests']} requests, {j['rps']:.0f} req/s, p50 {j['p50_ms']} ms, p99 {j['p99_ms']} ms")
if j["errors"]:
    print("errors: " + "; ".join(j["errors"]), file=sys.stderr)
    sys.exit(1)
PY

# -- L4: parallel TLS connections, echo round trips through the TCP proxy
log "L4: $ECHO_CONNS parallel TLS connections x $ECHO_ROUNDS echo round trips"
$TOOL tls-echo-load "$P_M_L4" "$WORK/certs/ca.pem" "$ECHO_CONNS" "$ECHO_ROUNDS" || fail "L4 TLS echo load had errors"

# -- moat's own record: nothing denied, cut or dropped
sleep 0.5 # let the last connection_closed events reach the audit file
python3 - "$WORK/audit.log" "$P_ADMIN" "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$WRK")" "$ECHO_CONNS" "$CONNS" <<'PY' || fail "moat's audit trail shows problems"
import collections, json, sys, urllib.request
path, admin, wrk_requests, echo_conns, conns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
events = collections.Counter()
statuses = collections.Counter()
closed = collections.Counter()
problems = []
https_reset = 0
wrk_probe = False
for line in open(path):
    e = json.loads(line)
    events[e["event"]] += 1
    if e["event"] == "http_request":
        statuses[e["status"]] += 1
    if e["event"] == "connection_closed":
        closed[(e["service"], e["closed_by"])] += 1
        if e["closed_by"] not in ("client", "upstream"):
            if e["service"] == "https" and e["closed_by"] == "error":
                # wrk exits with requests in flight: the kernel resets those
                # connections, and moat records the failed shutdown. Counted
                # below; a reset during the run shows up as a wrk socket error.
                https_reset += 1
            else:
                problems.append(f"connection {e['conn_id']} closed_by {e['closed_by']}: {e.get('error', '')}")
    if e["event"] in ("connection_denied", "connection_revoked"):
        if (e["service"] == "https" and e.get("reason") == "tls_handshake_failed"
                and e.get("detail") == "tls handshake eof" and not wrk_probe):
            # wrk opens one plain TCP connection to check the address before
            # it starts, and closes it: that one is an EOF in the handshake.
            wrk_probe = True
        else:
            problems.append(f"{e['event']}: {e.get('reason')} {e.get('detail', '')}")
# 499: a request still in flight when wrk stopped (wrk does not count it).
bad = {s: n for s, n in statuses.items() if not (200 <= s < 300 or s == 499)}
if bad:
    problems.append(f"non-2xx responses: {bad}")
ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
if ok < wrk_requests:
    problems.append(f"audit has {ok} 2xx requests, wrk completed {wrk_requests}")
if https_reset > conns:
    problems.append(f"{https_reset} https connections ended in error, more than the {conns} wrk opened")
echo_closed = sum(n for (svc, _), n in closed.items() if svc == "tls-echo")
if echo_closed != echo_conns:
    problems.append(f"{echo_closed} tls-echo connections closed, expected {echo_conns}")
metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
for line in metrics.splitlines():
    if line.startswith("moat_audit_dropped") and float(line.split()[-1]) > 0:
        problems.append(f"audit events dropped: {line}")
print(f"audit: {dict(events)}; http statuses {dict(statuses)}; "
      f"https connections reset when wrk stopped: {https_reset}")
for p in problems[:20]:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY

log "passed in ${SECONDS}s"
echo "ci load test: OK (L7 HTTPS and L4 TLS, no errors)"
