#!/usr/bin/env bash
# RSS of moat holding N idle TLS connections, per connection, for an L4
# (TCP relay) service and an L7 (HTTP) service. Loopback only; bounded.
#
#   N=10000 benches/load/idle_memory.sh          (MOAT_BIN defaults to the release build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MOAT_BIN=${MOAT_BIN:-$ROOT/target/release/moat}
N=${N:-10000}
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/moat-idle.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
"$MOAT_BIN" certs dev "$WORK/certs" >/dev/null
python3 "$ROOT/benches/load/loadtool.py" echo_server 0 >/dev/null 2>&1 & PIDS+=($!)
ECHO_PORT=$(python3 - <<'PY'
import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])
PY
)
python3 -c "
import socket,threading
l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind(('127.0.0.1',$ECHO_PORT)); l.listen(65535)
conns=[]
while True:
    c,_=l.accept(); conns.append(c)
" & PIDS+=($!)
cat > "$WORK/moat.toml" <<TOML
[gateway]
audit_log = "audit.jsonl"
[admin]
listen = "127.0.0.1:0"
[[device]]
id = "dev"
name = "idle test"
[[device.service]]
name = "l4"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:$ECHO_PORT"
allow = ["127.0.0.0/8"]
max_connections = 100000
[device.service.tls]
certificates = [{ cert = "$WORK/certs/server.pem", key = "$WORK/certs/server.key" }]
[[device.service]]
name = "l7"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:$ECHO_PORT"
allow = ["127.0.0.0/8"]
max_connections = 100000
[device.service.tls]
certificates = [{ cert = "$WORK/certs/server.pem", key = "$WORK/certs/server.key" }]
[device.service.http]
keepalive_timeout = "10m"
header_read_timeout = "10m"
TOML
start_moat() {
  rm -f "$WORK/audit.jsonl"
  MOAT_WORKER_THREADS=1 "$MOAT_BIN" run -c "$WORK/moat.toml" >/dev/null 2>"$WORK/moat.err" & PIDS+=($!)
  MOAT_PID=$!
  for _ in $(seq 100); do grep -q '"service":"l7"' "$WORK/audit.jsonl" 2>/dev/null && break; sleep 0.1; done
}
port_of() { grep "\"service\":\"$1\"" "$WORK/audit.jsonl" | grep listener_started | sed 's/.*"listen":"127.0.0.1:\([0-9]*\)".*/\1/'; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$MOAT_PID/status"; }
for svc in l4 l7; do
  # A fresh process per service: freed memory is not returned to the OS.
  start_moat
  port=$(port_of $svc)
  before=$(rss)
  python3 - "$port" "$WORK/certs/ca.pem" "$N" "$MOAT_PID" "$before" "$svc" <<'PY'
import socket, ssl, sys, time
port, ca, n, pid, before, svc = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
conns = []
t0 = time.time()
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    conns.append(ctx.wrap_socket(s, server_hostname="localhost"))
time.sleep(1.0)  # let moat settle its buffers; measurement, not synchronisation
rss = int([l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0])
per = (rss - before) / n
print(f"{svc}: {n} idle TLS connections: RSS {before} -> {rss} KiB, {per:.1f} KiB per connection (opened in {time.time()-t0:.1f}s)")
for c in conns:
    c.close()
PY
  kill "$MOAT_PID"; wait "$MOAT_PID" 2>/dev/null || true
done
