#!/usr/bin/env bash
# Memory under a flood of distinct source addresses (issue 16): moat's RSS
# while FLOOD_SOURCES (default 100,000) addresses 127.1.0.0 + i each make
# one plaintext HTTP request and one L4 TCP echo round trip, with per-client
# rate limits that keep state for every source. Fails (non-zero) when peak
# RSS growth passes the bound, when RSS keeps growing once moat's periodic
# sweep (every 10 s) has forgotten the idle clients, when a second wave of
# fresh sources peaks above the first flood (state not reused), or when
# any request or echo fails. Loopback only; builds nothing.
#
#   benches/flood_memory.sh                                   (target/debug/moat)
#   MOAT_BIN=target/release/moat FLOOD_SOURCES=20000 benches/flood_memory.sh
#
# Knobs (defaults): FLOOD_SOURCES (100000), FLOOD_CONCURRENCY (200),
# FLOOD_TCP (1: each source also makes one L4 echo round trip),
# FLOOD_CONN_RATE ("1/min burst 20"), FLOOD_REQ_RATE ("1/min burst 50"),
# FLOOD_BOUND_KIB (peak RSS growth allowed: 16 MiB + 512 B per source,
# 64.8 MiB for 100k), FLOOD_WAVES (1) and FLOOD_WAVE_SOURCES
# (FLOOD_SOURCES / 2): floods of fresh addresses after the sweep,
# FLOOD_SLACK_KIB (8 MiB: how far RSS after the sweep, or a later wave's
# peak, may pass the first flood's peak), FLOOD_PURGE_DELAY (unset:
# mimalloc's default; 0 runs moat with MIMALLOC_PURGE_DELAY=0),
# FLOOD_BASE (127.1.0.0), FLOOD_KEEP=1 keeps the work directory.
#
# The rates replenish slowly on purpose (T = 60 s per token): a source's
# state is forgotten only once its bucket is full again, 2T after its hit,
# so every source of a flood shorter than 2 minutes is still tracked at the
# peak (the driver says so when the flood took longer). The sweep that
# forgets the last source comes by 2T + 10 s after the flood. A default
# run takes about 5 minutes on 2 cores against the debug build (the 100k
# flood itself 1.5-2.5 minutes).
# What "comes back down" means here: RSS after the sweep varies from the
# start level to ~15 MiB above it (and the sweep's own map shrinking can
# raise it for a while), as mimalloc keeps freed pages of idle threads;
# a fixed ceiling over the start would be noise. Instead: RSS after the
# sweep may not pass the flood's peak, and the second wave of fresh
# sources may not peak above the first flood (+ slack): freed state is
# reused. Had it never been freed, the maps would grow for the 50k new
# sources on top of the 100k old ones (~13 MiB more), past the slack.
# Sockets close normally (FIN; no SO_LINGER 0): TIME_WAIT stays on the
# client side, under distinct source addresses, so no port range runs out.
# IPv4 only: moat keys IPv6 clients by their /64, so 100k distinct IPv6
# sources would need 100k distinct /64s (addresses inside one /64 share one
# entry). Loopback IPv4 gives 16M distinct sources without any setup.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MOAT_BIN=${MOAT_BIN:-$ROOT/target/debug/moat}
SOURCES=${FLOOD_SOURCES:-100000}
CONC=${FLOOD_CONCURRENCY:-200}
TCP=${FLOOD_TCP:-1}
WAVES=${FLOOD_WAVES:-1}
WAVE_SOURCES=${FLOOD_WAVE_SOURCES:-$((SOURCES / 2))}
CONN_RATE=${FLOOD_CONN_RATE:-1/min burst 20}
REQ_RATE=${FLOOD_REQ_RATE:-1/min burst 50}
BOUND_KIB=${FLOOD_BOUND_KIB:-$(( 16 * 1024 + SOURCES * 512 / 1024 ))}
SLACK_KIB=${FLOOD_SLACK_KIB:-$(( 8 * 1024 ))}
TOOL="python3 $ROOT/benches/load/loadtool.py"
SECONDS=0

BENCH=flood-memory
KEEP_WORK=${FLOOD_KEEP:-0}
# shellcheck source=load/lib.sh
source "$ROOT/benches/load/lib.sh"
die() { log "FAIL: $*"; exit 1; }
[ -x "$MOAT_BIN" ] || die "no moat binary at $MOAT_BIN (build it, or set MOAT_BIN)"
ulimit -n "$(ulimit -Hn)"
work_dir

read -r P_HTTP P_ECHO P_M_HTTP P_M_TCP P_ADMIN <<<"$($TOOL ports 5)"
cat >"$WORK/moat.toml" <<EOF
[gateway]
audit_log = "$WORK/audit.jsonl"
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:$P_ADMIN"

[[device]]
id = "flood"
name = "flood memory backend"

  [[device.service]]
  name = "http"
  protocol = "http"
  listen = "127.0.0.1:$P_M_HTTP"
  upstream = "127.0.0.1:$P_HTTP"
  allow = ["127.0.0.0/8"]
  plaintext = true
  max_connections = 1024
    [device.service.limits]
    connections_per_client = "$CONN_RATE"
    requests_per_client = "$REQ_RATE"

  [[device.service]]
  name = "tcp"
  protocol = "tcp"
  listen = "127.0.0.1:$P_M_TCP"
  upstream = "127.0.0.1:$P_ECHO"
  allow = ["127.0.0.0/8"]
  plaintext = true
  max_connections = 1024
    [device.service.limits]
    connections_per_client = "$CONN_RATE"
EOF

start backend - $TOOL http-backend "$P_HTTP"
start echo - $TOOL echo-server "$P_ECHO"
purge=()
[ -n "${FLOOD_PURGE_DELAY:-}" ] && purge=(MIMALLOC_PURGE_DELAY="$FLOOD_PURGE_DELAY")
start moat - env MOAT_LOG=warn "${purge[@]}" "$MOAT_BIN" run -c "$WORK/moat.toml"
MOAT_PID=$LAST_PID
for p in $P_HTTP $P_ECHO $P_ADMIN; do
  $TOOL wait-port "$p" 20 || die "127.0.0.1:$p did not come up"
done
[ "$(cat /proc/$MOAT_PID/comm 2>/dev/null)" = moat ] || die "pid $MOAT_PID is not moat"
tcp_arg=()
[ "$TCP" = 1 ] && tcp_arg=(--tcp-port "$P_M_TCP")
log "moat $MOAT_BIN (pid $MOAT_PID); $SOURCES sources x (1 HTTP request$([ "$TCP" = 1 ] && echo ' + 1 TCP echo')), $CONC at once; rates \"$CONN_RATE\" / \"$REQ_RATE\"; bound $BOUND_KIB KiB, slack $SLACK_KIB KiB"
rc=0
python3 "$ROOT/benches/flood/flood.py" run --pid "$MOAT_PID" --admin "$P_ADMIN" \
  --http-port "$P_M_HTTP" "${tcp_arg[@]}" --base "${FLOOD_BASE:-127.1.0.0}" --sources "$SOURCES" --concurrency "$CONC" \
  --rates "$CONN_RATE" "$REQ_RATE" --waves "$WAVES" --wave-sources "$WAVE_SOURCES" \
  --bound-kib "$BOUND_KIB" --slack-kib "$SLACK_KIB" --out "$WORK/result.json" || rc=$?
[ -s "$WORK/result.json" ] || die "the flood driver wrote no result"
python3 - "$WORK/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
mib = lambda k: f"{k / 1024:.1f} MiB"
f = r["flood"]
b, p, a, g = r["before"], f["peak"], f["after"], f["after_gc"]
print(f"sources {r['sources']} ({'HTTP + TCP' if r['tcp'] else 'HTTP'}), {r['flood']['ok']} ok, "
      f"{r['flood']['seconds']:.1f} s, {r['flood']['rate_per_s']:.0f} sources/s")
print(f"VmRSS  before {mib(b['rss_kib'])}  peak {mib(p['top_kib'])}  "
      f"after {mib(a['rss_kib'])}  after sweep {mib(g['rss_kib'])} ({g['seconds_after_flood']:.0f} s after the flood)")
print(f"gauges before / peak / after / after sweep: "
      + "; ".join(f"{k.replace('moat_', '')} {b[k]:.0f} / {p[k]:.0f} / {a[k]:.0f} / {g[k]:.0f}"
                  for k in ("moat_runtime_tasks", "moat_process_open_fds")))
print(f"resident gauge (MiB) before / peak / after / after sweep: "
      f"{b['moat_process_resident_memory_bytes'] / 2**20:.1f} / {p['moat_process_resident_memory_bytes'] / 2**20:.1f} / "
      f"{a['moat_process_resident_memory_bytes'] / 2**20:.1f} / {g['moat_process_resident_memory_bytes'] / 2**20:.1f}")
print(f"peak growth {mib(r['growth_kib'])} = {r['bytes_per_source_peak']:.0f} B per source; "
      f"freed by the sweep {mib(a['rss_kib'] - g['rss_kib'])} = {r['bytes_per_source_swept']:.0f} B per source "
      f"still tracked when the flood ended ({f['tracked_at_end']} of {r['sources']}; T = {r['replenish_s']:g} s)")
print("VmRSS after the flood (s: MiB): " + ", ".join(f"{t}: {v / 1024:.1f}" for t, v, _ in f["timeline"][::4]))
for k, s in enumerate(r["waves"]):
    swept = f", after sweep {mib(s['after_gc']['rss_kib'])}" if "after_gc" in s else ""
    print(f"wave {k + 2}: {s['ok']}/{s['sources']} fresh sources, {s['seconds']:.1f} s; VmRSS peak {mib(s['peak']['rss_kib'])} "
          f"(first flood {mib(p['top_kib'])}), after {mib(s['after']['rss_kib'])}{swept}")
print("audit events dropped:", int(r["audit_dropped"]))
PY
[ "$rc" -eq 0 ] || die "see the FAIL lines above"
log "passed in ${SECONDS}s"
echo "flood memory: OK ($SOURCES sources, peak growth within $BOUND_KIB KiB, no growth after the sweep)"
