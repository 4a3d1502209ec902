#!/usr/bin/env bash
# Grants (issue 12): L4 TLS through an `access = "mfa"` tcp service with a
# live grant (and EXTRA_GRANTS more, from other addresses) against a `network` tcp service
# of the same device, same backend, same load, alternating order run by
# run. See docs/benchmarks.md ("Grants (issue 12)").
#
#   benches/load/grants.sh                           # RUNS=5 CONNS=400 ROUNDS=20
#   SKIP_BUILD=1 MOAT_BIN=target/release/moat benches/load/grants.sh
#
# The load is loadtool.py's tls-echo-load: CONNS TLS connections (64 at a
# time), ROUNDS echo round trips each, so each connection's accept (where
# the grant is checked), handshake and relay are all measured. Bounded:
# RUNS x 2 loads of a few seconds each, plus the release build.
# Exits non-zero on any failed connection, never on speed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-5}
CONNS=${CONNS:-400}
ROUNDS=${ROUNDS:-20}
# More grants of the same person, each for another address: at most 31
# (one person holds at most 32). The lookup with 10,000 grants is the
# criterion benchmark's (benches/benches/grants.rs).
EXTRA_GRANTS=${EXTRA_GRANTS:-31}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
MOAT_BIN=${MOAT_BIN:-$ROOT/target/release/moat}
TOOL="python3 $HERE/loadtool.py"

BENCH=grants
# shellcheck source=lib.sh
. "$HERE/lib.sh"
case "$RUNS$CONNS$ROUNDS$EXTRA_GRANTS" in *[!0-9]*) die "RUNS, CONNS, ROUNDS, EXTRA_GRANTS are whole numbers" ;; esac
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 15 ] || die "RUNS must be 1..15"
[ "$CONNS" -ge 10 ] && [ "$CONNS" -le 5000 ] || die "CONNS must be 10..5000"
[ "$EXTRA_GRANTS" -le 31 ] || die "EXTRA_GRANTS must be at most 31 (one person holds at most 32 grants)"
for t in curl python3 taskset oathtool; do command -v "$t" >/dev/null || die "needs $t (apt-get install curl python3 util-linux oathtool)"; done

build_moat

work_dir

cd "$WORK"
"$MOAT_BIN" certs dev certs >/dev/null
PASSWORD="bench password $$"
SECRET=$(printf '%s\n' "$PASSWORD" | "$MOAT_BIN" user --users users.toml add bench --group biomed --password-stdin \
  | sed -n 's/^ *secret: //p')
[ -n "$SECRET" ] || die "moat user add printed no secret"
read -r P_BACKEND P_NET P_GRANT P_PORTAL P_ADMIN <<<"$($TOOL ports 5)"
cat >moat.toml <<TOML
[gateway]
audit_log = "audit.jsonl"
[admin]
listen = "127.0.0.1:$P_ADMIN"
[auth]
users_file = "users.toml"
session_key_file = "session.key"
[[device]]
id = "ct"
name = "CT"
[[device.service]]
name = "network"
protocol = "tcp"
listen = "127.0.0.1:$P_NET"
upstream = "127.0.0.1:$P_BACKEND"
allow = ["127.0.0.0/8"]
max_connections = 4096
  [device.service.limits]
  max_connections_per_client = 4096
  [device.service.tls]
  certificates = [{ cert = "certs/server.pem", key = "certs/server.key" }]
[[device.service]]
name = "grant"
protocol = "tcp"
listen = "127.0.0.1:$P_GRANT"
upstream = "127.0.0.1:$P_BACKEND"
allow = ["127.0.0.0/8"]
max_connections = 4096
access = "mfa"
groups = ["biomed"]
max_grant = "12h"
  [device.service.limits]
  max_connections_per_client = 4096
  [device.service.tls]
  certificates = [{ cert = "certs/server.pem", key = "certs/server.key" }]
[[device]]
id = "moat"
name = "portal"
[[device.service]]
name = "portal"
protocol = "portal"
listen = "127.0.0.1:$P_PORTAL"
allow = ["127.0.0.0/8"]
  [device.service.tls]
  certificates = [{ cert = "certs/server.pem", key = "certs/server.key" }]
TOML
start backend "$LOAD_CPU" $TOOL echo-server "$P_BACKEND"
start moat "$PROXY_CPU" env MOAT_LOG=warn "$MOAT_BIN" run -c moat.toml
for p in "$P_BACKEND" "$P_PORTAL" "$P_GRANT"; do $TOOL wait-port "$p"; done

# Sign in on the portal and open a grant for 127.0.0.1, as a person would.
C=(curl -sS -k -c jar -b jar)
URL="https://127.0.0.1:$P_PORTAL/.moat"
csrf() { grep -o 'name="csrf" value="[^"]*"' | head -1 | sed 's/.*value="//; s/"$//'; }
T=$("${C[@]}" "$URL/login" | csrf)
"${C[@]}" -o /dev/null "$URL/login" --data-urlencode "username=bench" --data-urlencode "password=$PASSWORD" \
  --data-urlencode "code=$(oathtool --totp -b "$SECRET")" --data-urlencode "csrf=$T" --data-urlencode "next=/"
T=$("${C[@]}" "$URL/session" | csrf)
[ -n "$T" ] || die "portal sign-in failed (see $WORK/moat.err)"
"${C[@]}" -o /dev/null -w '%{http_code}' "$URL/grants" -d "csrf=$T&service=ct/grant&minutes=720&bind=address" \
  | grep -q 303 || die "opening the grant failed"
# The other grants: as many more people, each from an address of their own
# (opened through the same form, from other 127.0.0.0/8 sources).
if [ "$EXTRA_GRANTS" -gt 0 ]; then
  log "opening $EXTRA_GRANTS more grants (one per address, through the portal)"
  python3 - "$P_PORTAL" "$T" "$EXTRA_GRANTS" "$(grep -o '__Host-moat-session.*' jar | awk '{print $2}')" <<'PY'
import http.client, ssl, sys
port, csrf, n, cookie = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
# One connection per source address (the grant binds the address the
# portal sees); the session is the same person's.
opened = 0
for i in range(n):
    src = f"127.0.1.{i + 2}"
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, source_address=(src, 0))
    c.request("POST", "/.moat/grants", body=f"csrf={csrf}&service=ct/grant&minutes=720&bind=address",
              headers={"Cookie": f"__Host-moat-session={cookie}", "Content-Type": "application/x-www-form-urlencoded",
                       "Host": f"127.0.0.1:{port}"})
    r = c.getresponse(); r.read(); c.close()
    opened += r.status == 303
print(f"extra grants opened: {opened}", file=sys.stderr)
PY
fi
OPEN=$(curl -s "http://127.0.0.1:$P_ADMIN/grants" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["grants"]))')
log "grants open: $OPEN"

declare -A RATE
for run in $(seq 1 "$RUNS"); do
  order="network grant"; [ $((run % 2)) -eq 0 ] && order="grant network"
  for svc in $order; do
    port=P_NET; [ "$svc" = grant ] && port=P_GRANT
    out=$(taskset -c "$LOAD_CPU" $TOOL tls-echo-load "${!port}" certs/ca.pem "$CONNS" "$ROUNDS")
    hs=$(sed -n 's/.* \([0-9]*\) handshakes\/s.*/\1/p' <<<"$out")
    RATE[$svc]="${RATE[$svc]:-} $hs"
    log "run $run $svc: $out"
  done
done
python3 - "${RATE[network]}" "${RATE[grant]}" "$OPEN" <<'PY'
import statistics, sys
net = [float(x) for x in sys.argv[1].split()]; grant = [float(x) for x in sys.argv[2].split()]
ratios = [g / n for g, n in zip(grant, net)]
print(f"grants open: {sys.argv[3]}")
print(f"network service: median {statistics.median(net):.0f} connections/s  {net}")
print(f"grant service:   median {statistics.median(grant):.0f} connections/s  {grant}")
print(f"grant / network: median of medians {statistics.median(grant) / statistics.median(net):.3f}, per-run {[round(r, 3) for r in ratios]}")
PY
