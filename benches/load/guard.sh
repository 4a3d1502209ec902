#!/usr/bin/env bash
# Protocol guards (issue 13): L4 TLS throughput of a large C-STORE-like
# stream through a `guard = "dicom"` service against the same service
# without a guard, same backend, same load, alternating order run by run.
# See docs/benchmarks.md ("Protocol guards (issue 13)").
#
#   benches/load/guard.sh                              # RUNS=5 MBYTES=400 CONNS=4
#   SKIP_BUILD=1 MOAT_BIN=target/release/moat benches/load/guard.sh
#   MODE=callgrind SKIP_BUILD=1 benches/load/guard.sh   # instructions per MB, exact
#
# The load is loadtool.py's dicom-store-load: CONNS TLS associations at
# once, each an A-ASSOCIATE-RQ, MBYTES/CONNS of P-DATA in PDUs of PDU bytes
# (16384, dcmtk's default), and a release, to loadtool's dicom-sink. moat
# runs on PROXY_CPU; the client and the sink share LOAD_CPU, so moat's CPU
# per byte (from /proc) is printed beside the throughput: where the
# Python peers bound the throughput, the CPU figure still shows the
# guard's cost. Bounded: RUNS x 2 loads of MBYTES each, plus the build.
# MODE=callgrind runs moat under valgrind's callgrind instead and prints
# the user-space instructions moat spends per MB on each service: one
# association of CG_A MB, then one of CG_A + CG_N MB, dumped after each;
# (B - A) / CG_N is the marginal cost per MB (set-up, handshake and the
# association cancel out). Repeatable to the instruction, whatever else
# the machine does.
# Exits non-zero on any failed association, never on speed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-5}
MBYTES=${MBYTES:-400}
CONNS=${CONNS:-4}
PDU=${PDU:-16384}
MODE=${MODE:-throughput}
CG_A=${CG_A:-4}
CG_N=${CG_N:-40}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
MOAT_BIN=${MOAT_BIN:-$ROOT/target/release/moat}
TOOL="python3 $HERE/loadtool.py"

BENCH=guard
# shellcheck source=lib.sh
. "$HERE/lib.sh"
case "$RUNS$MBYTES$CONNS$PDU" in *[!0-9]*) die "RUNS, MBYTES, CONNS, PDU are whole numbers" ;; esac
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 15 ] || die "RUNS must be 1..15"
[ "$MBYTES" -ge 1 ] && [ "$MBYTES" -le 4000 ] || die "MBYTES must be 1..4000"
[ "$CONNS" -ge 1 ] && [ "$CONNS" -le 64 ] || die "CONNS must be 1..64"
[ "$PDU" -ge 64 ] && [ "$PDU" -le 131072 ] || die "PDU must be 64..131072"
for t in python3 taskset; do command -v "$t" >/dev/null || die "needs $t"; done

build_moat

work_dir

cd "$WORK"
"$MOAT_BIN" certs dev certs >/dev/null
read -r P_SINK P_PLAIN P_GUARD <<<"$($TOOL ports 3)"
service() { # NAME PORT EXTRA
  cat <<TOML
[[device.service]]
name = "$1"
protocol = "tcp"
listen = "127.0.0.1:$2"
upstream = "127.0.0.1:$P_SINK"
allow = ["127.0.0.0/8"]
$3
  [device.service.tls]
  certificates = [{ cert = "certs/server.pem", key = "certs/server.key" }]
TOML
}
{
  printf '[gateway]\naudit_log = "audit.jsonl"\n[admin]\nenabled = false\n[[device]]\nid = "ct"\nname = "CT"\n'
  service plain "$P_PLAIN" ""
  service dicom "$P_GUARD" 'guard = "dicom"'
  printf '  [device.service.dicom]\n  ae_title = "SINK"\n  calling_ae_titles = ["BENCH"]\n'
} >moat.toml
"$MOAT_BIN" check -c moat.toml >/dev/null || die "moat check failed: $("$MOAT_BIN" check -c moat.toml 2>&1)"
start sink "$LOAD_CPU" $TOOL dicom-sink "$P_SINK"

if [ "$MODE" = callgrind ]; then
  for t in valgrind callgrind_control; do command -v "$t" >/dev/null || die "needs $t (apt-get install valgrind)"; done
  cg="$WORK/callgrind"
  start moat "$PROXY_CPU" env MOAT_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$cg.%p" "$MOAT_BIN" run -c moat.toml
  for p in "$P_SINK" "$P_PLAIN" "$P_GUARD"; do $TOOL wait-port "$p" 120; done
  vpid=$(pgrep -g "${PIDS[-1]}" -f "valgrind|callgrind|moat run" | head -n1)
  last_dump() { ls -t "$cg".* 2>/dev/null | grep -v '\.\(plain\|dicom\)' | head -n1; }
  total_ir() { awk '/^summary:|^totals:/ {print $2; exit}' "$1"; }
  load() { taskset -c "$LOAD_CPU" $TOOL dicom-store-load "$1" certs/ca.pem 1 "$2" "$PDU" >/dev/null; }
  # Warm-up: the first TLS connection pays one-off initialisation.
  load "$P_PLAIN" 1; load "$P_GUARD" 1
  printf '%-6s %16s %16s %14s\n' service "A ($CG_A MB)" "B ($((CG_A + CG_N)) MB)" "(B-A) per MB"
  for svc in plain dicom; do
    port=$P_PLAIN; [ "$svc" = dicom ] && port=$P_GUARD
    callgrind_control -z "$vpid" >/dev/null 2>&1
    load "$port" "$CG_A"
    callgrind_control -d "$svc-a" "$vpid" >/dev/null 2>&1; mv "$(last_dump)" "$cg.$svc-a"
    load "$port" "$((CG_A + CG_N))"
    callgrind_control -d "$svc-b" "$vpid" >/dev/null 2>&1; mv "$(last_dump)" "$cg.$svc-b"
    A=$(total_ir "$cg.$svc-a"); B=$(total_ir "$cg.$svc-b")
    per=$(( (B - A) / CG_N ))
    printf '%-6s %16s %16s %14s\n' "$svc" "$A" "$B" "$per"
    echo "$svc $per" >>cg.txt
  done
  python3 - cg.txt <<'PY'
import sys
d = dict(l.split() for l in open(sys.argv[1]))
print(f"ratio dicom/plain instructions per MB: {int(d['dicom']) / int(d['plain']):.4f}")
PY
  grep -q '"event":"dicom_association"' audit.jsonl || die "no dicom_association recorded"
  [ -z "${KEEP_CALLGRIND:-}" ] || cp "$cg".*-b "$KEEP_CALLGRIND"/
  exit 0
fi

start moat "$PROXY_CPU" env MOAT_LOG=warn "$MOAT_BIN" run -c moat.toml
MOAT_PGID=${PIDS[-1]}
for p in "$P_SINK" "$P_PLAIN" "$P_GUARD"; do $TOOL wait-port "$p"; done

# One warm-up each, not counted.
for p in "$P_PLAIN" "$P_GUARD"; do
  taskset -c "$LOAD_CPU" $TOOL dicom-store-load "$p" certs/ca.pem "$CONNS" 20 "$PDU" >/dev/null
done

measure() { # NAME PORT -> appends "name mbps moat_ticks_per_gb"
  local before after out
  before=$($TOOL cputicks "$MOAT_PGID")
  out=$(taskset -c "$LOAD_CPU" $TOOL dicom-store-load "$2" certs/ca.pem "$CONNS" "$MBYTES" "$PDU")
  after=$($TOOL cputicks "$MOAT_PGID")
  python3 - "$1" "$out" "$before" "$after" >>results.tsv <<'PY'
import json, os, sys
name, out, before, after = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hz = os.sysconf("SC_CLK_TCK")
cpu_ms_per_gb = (after - before) / hz * 1000 / (out["bytes"] / 1e9)
print(f"{name}\t{out['mbps']}\t{cpu_ms_per_gb:.0f}")
PY
  log "$(tail -1 results.tsv)"
}
: >results.tsv
for r in $(seq 1 "$RUNS"); do
  if [ $((r % 2)) -eq 1 ]; then
    measure plain "$P_PLAIN"; measure dicom "$P_GUARD"
  else
    measure dicom "$P_GUARD"; measure plain "$P_PLAIN"
  fi
done
grep -c '"event":"dicom_association"' audit.jsonl >/dev/null || die "no dicom_association recorded"
python3 - results.tsv <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
def med(name, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == name)
plain, guard = med("plain", 1), med("dicom", 1)
cpu_plain, cpu_guard = med("plain", 2), med("dicom", 2)
print("service\tMB/s (median)\tmoat CPU ms per GB (median)")
print(f"plain\t{plain:.1f}\t{cpu_plain:.0f}")
print(f"dicom\t{guard:.1f}\t{cpu_guard:.0f}")
print(f"ratio dicom/plain: throughput {guard / plain:.3f}, CPU per byte {cpu_guard / cpu_plain:.3f}")
PY
