#!/usr/bin/env python3
"""Helpers for benches/load/run.sh and ci.sh (standard library only).

Subcommands:
  ports N                      print N free loopback TCP ports
  wait-port PORT [SECS]        wait until 127.0.0.1:PORT accepts
  cputicks PGID...             utime+stime (clock ticks) of every process in
                               the process groups, plus reaped children
  cpusplit PGID...             "utime stime" (clock ticks) of every process
                               in the process groups
  preemptions PGID...          involuntary context switches of every thread
                               in the process groups (times the scheduler
                               took the CPU away to run something else)
  runcpu OUT -- CMD...         run CMD, write its CPU seconds (user+sys, it and
                               its children) to OUT, exit with its status
  parse-wrk FILE               -> JSON {rps, requests, p50_ms, p99_ms, errors}
  parse-h2load FILE LOG        -> JSON (percentiles from h2load --log-file)
  parse-oha FILE               -> JSON
  parse-iperf FILE             -> JSON {gbit_s, bytes, errors}
  probe-resume PORT [h2]       does the server resume a TLS session? yes/no
  upstream-sampler PORT OUT PGID...
                               until killed: the most connections the
                               process groups held open to 127.0.0.1:PORT
  summary RAW_TSV OUT_TSV [RESUMING]
                               print the median table and ratios
  http-backend PORT            tiny keep-alive HTTP/1.1 server ("ok\\n")
  echo-server PORT             TCP echo server
  tls-echo-load PORT CA N R    N parallel TLS connections, R echo round
                               trips each; fails on any error or mismatch
  dicom-sink PORT              DICOM association acceptor: accepts the first
                               presentation context, discards P-DATA,
                               answers A-RELEASE-RQ (one thread per peer)
  dicom-store-load PORT CA CONNS MBYTES [PDU]
                               CONNS parallel TLS associations streaming
                               MBYTES in all as P-DATA PDUs of PDU bytes
                               (16384), then a release: JSON bytes, secs, MB/s
  threadcpu PGID...            JSON {thread name: CPU seconds} over every
                               live thread of the process groups (schedstat)
  totp SECRET                  the current RFC 6238 code of a base32 secret
  mfa-login PORT USER PASSWORD SECRET [SRC]
                               sign in on an `mfa` service over TLS (login
                               form, CSRF cookie and token, POST): prints the
                               session cookie's value
  login-flood PORT SRC CONNS SECS OUT [USER]
                               CONNS keep-alive TLS connections from address
                               SRC POSTing wrong passwords to /.moat/login
                               for SECS seconds, each with a valid CSRF
                               cookie and token; JSON counts to OUT
  metrics-sampler PORT OUT [INTERVAL] [PGID]
                               until killed: every INTERVAL s (0.05), the
                               admin /metrics hash gauges, and how many of
                               moat's blocking-pool threads (tokio-rt-worker)
                               are runnable (state R): max and counts to OUT
  metric PORT PREFIX           the lines of the admin /metrics starting
                               with PREFIX
  renice-threads PGID PREFIX NICE
                               until killed: every 0.2 s, sets the nice value
                               of the threads whose name starts with PREFIX
                               (an experiment: hashes at a lower priority)
"""

import base64
import hashlib
import hmac
import json
import os
import re
import resource
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import time


def die(msg):
    print(f"loadtool: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------- processes


def cmd_ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def cmd_wait_port(port, secs="20"):
    deadline = time.time() + float(secs)
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    die(f"nothing listens on 127.0.0.1:{port} after {secs}s")


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # Fields after "pid (comm) ": comm may contain spaces and parentheses.
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0]=state [1]=ppid [2]=pgrp ... [11]=utime [12]=stime [13]=cutime [14]=cstime
    return rest


def group_members(pgids):
    """(pid, /proc stat fields) of every process in the process groups."""
    want = {int(p) for p in pgids}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            f = proc_stat(name)
        except (OSError, ValueError):
            continue
        if int(f[2]) in want:
            yield name, f


def cmd_cputicks(*pgids):
    print(sum(int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]) for _, f in group_members(pgids)))


def cmd_cpusplit(*pgids):
    members = list(group_members(pgids))
    print(sum(int(f[11]) for _, f in members), sum(int(f[12]) for _, f in members))


def cmd_preemptions(*pgids):
    total = 0
    for pid, _ in group_members(pgids):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("nonvoluntary_ctxt_switches:"):
                            total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    print(total)


def cmd_runcpu(out, *cmd):
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    rc = subprocess.call(list(cmd))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(out, "w") as f:
        f.write(f"{cpu:.3f}\n")
    sys.exit(rc)


def cmd_upstream_sampler(port, out, *pgids):
    """Samples `ss` every 0.25 s; writes the maximum seen so far to OUT."""
    want = {int(p) for p in pgids}
    pg_of = {}
    best = 0
    while True:
        try:
            text = subprocess.run(
                ["ss", "-Htnp", "state", "established", f"( dport = :{port} )"],
                capture_output=True, text=True, timeout=5,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
        n = 0
        for line in text.splitlines():
            pids = {int(x) for x in re.findall(r"pid=(\d+)", line)}
            for pid in pids:
                if pid not in pg_of:
                    try:
                        pg_of[pid] = int(proc_stat(pid)[2])
                    except (OSError, ValueError):
                        pg_of[pid] = -1
            if any(pg_of[pid] in want for pid in pids):
                n += 1
        if n > best:
            best = n
            with open(out + ".tmp", "w") as f:
                f.write(f"{best}\n")
            os.replace(out + ".tmp", out)
        time.sleep(0.25)


# ---------------------------------------------------------------- parsers


def to_ms(value, unit):
    v = float(value)
    return {"us": v / 1000, "ms": v, "s": v * 1000, "m": v * 60000}[unit]


def cmd_parse_wrk(path):
    text = open(path).read()
    out = {"errors": []}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        out["errors"].append("wrk printed no Requests/sec")
    out["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    out["requests"] = int(m.group(1)) if m else 0
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        out[key] = to_ms(m.group(1), m.group(2)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m and any(int(x) for x in m.groups()):
        out["errors"].append(m.group(0))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m and int(m.group(1)):
        out["errors"].append(m.group(0))
    if out["requests"] == 0:
        out["errors"].append("wrk completed no request")
    print(json.dumps(out))


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def cmd_parse_h2load(path, log):
    text = open(path).read()
    out = {"errors": []}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    out["rps"] = float(m.group(2)) if m else 0.0
    if not m:
        out["errors"].append("h2load printed no req/s")
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        text,
    )
    if m:
        total, started, done, ok, failed, errored, timeout = map(int, m.groups())
        out["requests"] = ok
        if failed or errored or timeout:
            out["errors"].append(m.group(0))
        if ok == 0:
            out["errors"].append("h2load completed no request")
    else:
        out["requests"] = 0
        out["errors"].append("h2load printed no request counts")
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m and (int(m.group(3)) or int(m.group(4))):
        out["errors"].append(m.group(0))
    m = re.search(r"Application protocol: (\S+)", text)
    out["proto"] = m.group(1) if m else "?"
    if out["proto"] != "h2":
        out["errors"].append(f"negotiated {out['proto']}, not h2")
    durations = []
    try:
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    durations.append(int(parts[2]))
    except OSError:
        pass
    durations.sort()
    p50 = percentile(durations, 50)
    p99 = percentile(durations, 99)
    out["p50_ms"] = p50 / 1000 if p50 is not None else None
    out["p99_ms"] = p99 / 1000 if p99 is not None else None
    print(json.dumps(out))


def cmd_parse_oha(path):
    out = {"errors": []}
    try:
        data = json.load(open(path))
    except (OSError, ValueError) as e:
        out.update(rps=0.0, requests=0, p50_ms=None, p99_ms=None)
        out["errors"].append(f"oha printed no JSON: {e}")
        print(json.dumps(out))
        return
    codes = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k == "200")
    bad = {k: v for k, v in codes.items() if k != "200"}
    errs = data.get("errorDistribution", {})
    out["requests"] = ok
    out["rps"] = ok / data["summary"]["total"] if data["summary"]["total"] else 0.0
    lat = data.get("metrics", {}).get("latency_ms", {})
    out["p50_ms"] = lat.get("p50")
    out["p99_ms"] = lat.get("p99")
    if bad:
        out["errors"].append(f"non-200 responses: {bad}")
    if errs:
        out["errors"].append(f"errors: {errs}")
    if ok == 0:
        out["errors"].append("oha completed no request")
    print(json.dumps(out))


def cmd_parse_iperf(path):
    out = {"errors": [], "p50_ms": None, "p99_ms": None}
    try:
        data = json.load(open(path))
    except (OSError, ValueError) as e:
        out.update(gbit_s=0.0, bytes=0)
        out["errors"].append(f"iperf3 printed no JSON: {e}")
        print(json.dumps(out))
        return
    if data.get("error"):
        out["errors"].append(f"iperf3: {data['error']}")
    recv = data.get("end", {}).get("sum_received", {})
    out["bytes"] = int(recv.get("bytes", 0))
    out["gbit_s"] = recv.get("bits_per_second", 0.0) / 1e9
    out["rps"] = out["gbit_s"]
    out["requests"] = out["bytes"]
    if out["bytes"] == 0:
        out["errors"].append("iperf3 moved no bytes")
    print(json.dumps(out))


# ---------------------------------------------------------------- probes


def cmd_probe_resume(port, alpn="http/1.1"):
    """Two connections; the second offers the first one's session."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    session = None
    reused = False
    for _ in range(2):
        raw = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            reused = s.session_reused
            if alpn == "http/1.1":
                s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                try:
                    while s.recv(65536):
                        pass
                except (ssl.SSLError, OSError):
                    pass
            session = s.session
    print("yes" if reused else "no")


# ---------------------------------------------------------------- summary

# test -> (unit of the main figure, unit of the CPU figure, scale of CPU)
UNITS = {
    "h1_tls": ("req/s", "us/req"),
    "h2_tls": ("req/s", "us/req"),
    "handshake": ("conn/s", "us/conn"),
    "handshake_full": ("conn/s", "us/conn"),
    "h1_plain": ("req/s", "us/req"),
    "l4_tls": ("Gbit/s", "ms/GB"),
    "l4_plain": ("Gbit/s", "ms/GB"),
}


COLS = ("value", "p50_ms", "p99_ms", "proxy_cpu_per", "backend_cpu_per", "load_util",
        "proxy_preempted_per")


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=None):
    if v is None:
        return "-"
    if digits is None:
        digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
    return f"{v:,.{digits}f}"


def cmd_summary(raw, out, resuming=""):
    resuming = {x for x in resuming.split(",") if x}
    rows = []
    with open(raw) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))

    def num(r, k):
        v = r.get(k, "")
        return float(v) if v not in ("", "-", "None") else None

    groups = {}
    for r in rows:
        groups.setdefault((r["test"], r["system"]), []).append(r)
    tests = [t for t in UNITS if any(k[0] == t for k in groups)]
    order = ["direct", "moat", "nginx", "haproxy"]
    lines = []
    summary_rows = []
    for t in tests:
        unit, cpu_unit = UNITS[t]
        lines.append("")
        per = cpu_unit.split("/")[1]
        lines.append(f"== {t}  ({unit}; proxy CPU in {cpu_unit}; load = busy share of the load core; "
                     f"preempted = the proxy's involuntary context switches per {per})")
        lines.append(
            f"{'system':<9}{'runs':>5}{unit:>14}{'p50 ms':>10}{'p99 ms':>10}"
            f"{'proxy CPU':>12}{'backend CPU':>13}{'load':>7}{'upstream':>10}{'preempted':>11}"
        )
        meds = {}
        for s in order:
            rs = groups.get((t, s))
            if not rs:
                continue
            m = {
                k: med([num(r, k) for r in rs])
                for k in COLS
            }
            mx = [num(r, "upstream_max") for r in rs]
            mx = [v for v in mx if v is not None]
            m["upstream_max"] = max(mx) if mx else None
            meds[s] = m
            name = s + ("*" if t == "handshake" and s in resuming else "")
            lines.append(
                f"{name:<9}{len(rs):>5}{fmt(m['value']):>14}{fmt(m['p50_ms'], 3):>10}"
                f"{fmt(m['p99_ms'], 3):>10}{fmt(m['proxy_cpu_per']):>12}"
                f"{fmt(m['backend_cpu_per']):>13}{fmt(m['load_util'], 2):>7}"
                f"{fmt(m['upstream_max'], 0):>10}{fmt(m['proxy_preempted_per'], 2):>11}"
            )
            summary_rows.append([t, s, len(rs)] + [m[k] for k in COLS + ("upstream_max",)])
        if "moat" in meds:
            parts = []
            for other in ("nginx", "haproxy", "direct"):
                if other in meds and meds[other]["value"]:
                    r = meds["moat"]["value"] / meds[other]["value"]
                    parts.append(f"moat/{other} {r:.2f}")
            cpu_parts = []
            for other in ("nginx", "haproxy"):
                o = meds.get(other, {}).get("proxy_cpu_per")
                mm = meds["moat"]["proxy_cpu_per"]
                if o and mm:
                    cpu_parts.append(f"moat/{other} {mm / o:.2f}")
            if t == "handshake" and resuming & set(meds):
                lines.append("* offers TLS session resumption and the client resumes: mostly resumed "
                             "handshakes, not full ones (see handshake_full)")
            lines.append("throughput ratio: " + (", ".join(parts) or "-"))
            if cpu_parts:
                lines.append("proxy CPU per unit ratio: " + ", ".join(cpu_parts))
    print("\n".join(lines))
    with open(out, "w") as f:
        f.write("test\tsystem\truns\t" + "\t".join(COLS) + "\tupstream_max\n")
        for r in summary_rows:
            f.write("\t".join("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in r) + "\n")


# ---------------------------------------------------------------- CI peers


def serve_forever(port, handle):
    """Runs asyncio connection handler `handle` on 127.0.0.1:PORT until killed."""
    import asyncio

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", int(port), backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def cmd_http_backend(port):
    """A keep-alive HTTP/1.1 responder: every request gets 200 "ok\\n"."""
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"

    async def handle(reader, writer):
        buf = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    if m:  # drain a body, if any (the load sends none)
                        n = int(m.group(1))
                        while len(buf) < n:
                            more = await reader.read(65536)
                            if not more:
                                return
                            buf += more
                        buf = buf[n:]
                    writer.write(resp)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    serve_forever(port, handle)


def cmd_echo_server(port):
    async def handle(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    serve_forever(port, handle)


def cmd_tls_echo_load(port, ca, n, rounds):
    import asyncio

    n, rounds = int(n), int(rounds)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    failures = []
    moved = [0]

    async def one(i):
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", int(port), ssl=ctx, server_hostname="localhost"),
                timeout=20,
            )
        except Exception as e:  # noqa: BLE001 - every failure counts
            failures.append(f"conn {i}: connect/handshake: {e!r}")
            return
        try:
            for r in range(rounds):
                msg = os.urandom(256 + (i * 37 + r * 101) % 4096)
                writer.write(msg)
                await writer.drain()
                got = await asyncio.wait_for(reader.readexactly(len(msg)), timeout=20)
                if got != msg:
                    failures.append(f"conn {i} round {r}: echo mismatch")
                    return
                moved[0] += 2 * len(msg)
        except Exception as e:  # noqa: BLE001
            failures.append(f"conn {i}: {e!r}")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:  # noqa: BLE001 - a reset at close is not a lost round trip
                pass

    async def main():
        await asyncio.gather(*(one(i) for i in range(n)))

    t0 = time.monotonic()
    asyncio.run(main())
    dt = time.monotonic() - t0
    ok_trips = n * rounds if not failures else None
    print(
        f"tls echo: {n} connections x {rounds} round trips in {dt:.2f}s: "
        f"{n / dt:.0f} handshakes/s, {n * rounds / dt:.0f} round trips/s, "
        f"{moved[0] / dt / 1e6:.1f} MB/s"
    )
    if failures:
        for f_ in failures[:20]:
            print(f"  FAIL {f_}", file=sys.stderr)
        die(f"{len(failures)} of {n} connections failed")
    return ok_trips


# ---------------------------------------------------------------- DICOM


SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
EXPLICIT_LE = "1.2.840.10008.1.2.1"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"


def dicom_item(kind, body):
    return struct.pack(">BBH", kind, 0, len(body)) + body


def dicom_uid(uid):
    b = uid.encode()
    return b + b"\0" if len(b) % 2 else b


def dicom_pdu(kind, body):
    return struct.pack(">BBI", kind, 0, len(body)) + body


def dicom_associate_rq(calling, called, max_len=0):
    ctx = bytes([1, 0, 0, 0]) + dicom_item(0x30, dicom_uid(SC_STORAGE)) + dicom_item(0x40, dicom_uid(EXPLICIT_LE))
    user = dicom_item(0x51, struct.pack(">I", max_len)) + dicom_item(0x52, dicom_uid("1.2.826.0.1.3680043.9.7433.1"))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + dicom_item(0x10, dicom_uid(APP_CONTEXT))
        + dicom_item(0x20, ctx)
        + dicom_item(0x50, user)
    )
    return dicom_pdu(0x01, body)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_pdu(sock):
    head = recv_exact(sock, 6)
    kind, length = head[0], struct.unpack(">I", head[2:6])[0]
    return kind, recv_exact(sock, length)


def cmd_dicom_sink(port):
    """An association acceptor for benchmarks: accepts the first presentation
    context of any A-ASSOCIATE-RQ, discards P-DATA, answers A-RELEASE-RQ."""
    import threading

    def serve(conn):
        try:
            kind, body = read_pdu(conn)
            if kind != 0x01:
                return
            # The first presentation context's id (items start at byte 68).
            i, ctx_id = 68, 1
            while i + 4 <= len(body):
                item, length = body[i], struct.unpack(">H", body[i + 2 : i + 4])[0]
                if item == 0x20:
                    ctx_id = body[i + 4]
                    break
                i += 4 + length
            ac_ctx = bytes([ctx_id, 0, 0, 0]) + dicom_item(0x40, dicom_uid(EXPLICIT_LE))
            user = dicom_item(0x51, struct.pack(">I", 0))
            ac = dicom_pdu(0x02, body[:68] + dicom_item(0x10, dicom_uid(APP_CONTEXT)) + dicom_item(0x21, ac_ctx) + dicom_item(0x50, user))
            conn.sendall(ac)
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            pending = b""
            while True:
                # Walk PDU headers; skip payloads without copying them.
                head = pending + recv_exact(conn, 6 - len(pending))
                pending = b""
                kind, length = head[0], struct.unpack(">I", head[2:6])[0]
                left = length
                while left:
                    n = conn.recv_into(view[: min(left, len(buf))])
                    if not n:
                        return
                    left -= n
                if kind == 0x05:
                    conn.sendall(dicom_pdu(0x06, bytes(4)))
                    return
                if kind == 0x07:
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(port)))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def cmd_dicom_store_load(port, ca, conns, mbytes, pdu="16384"):
    """CONNS parallel TLS associations, each streaming MBYTES/CONNS of
    P-DATA in PDUs of PDU bytes (a large C-STORE), then a release. Prints
    one JSON line: bytes, seconds, MB/s."""
    import threading

    conns, total, pdu = int(conns), int(float(mbytes) * 1e6), int(pdu)
    per_conn = total // conns
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    fragment = os.urandom(pdu - 6)
    # One P-DATA PDU: a PDV of the whole fragment on context 1 (data, not last).
    one = dicom_pdu(0x04, struct.pack(">IBB", len(fragment) + 2, 1, 0x00) + fragment)
    batch = one * max(1, (256 * 1024) // len(one))
    failures, moved = [], [0] * conns

    def run(i):
        try:
            raw = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(dicom_associate_rq("BENCH", "SINK"))
            kind, _ = read_pdu(s)
            if kind != 0x02:
                raise RuntimeError(f"association not accepted (PDU type {kind})")
            sent = 0
            while sent < per_conn:
                s.sendall(batch)
                sent += len(batch)
            s.sendall(dicom_pdu(0x05, bytes(4)))
            kind, _ = read_pdu(s)
            if kind != 0x06:
                raise RuntimeError(f"no A-RELEASE-RP (PDU type {kind})")
            moved[i] = sent
            s.close()
        except Exception as e:  # noqa: BLE001 - every failure counts
            failures.append(f"conn {i}: {e!r}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    if failures:
        for f_ in failures[:20]:
            print(f"  FAIL {f_}", file=sys.stderr)
        die(f"{len(failures)} of {conns} associations failed")
    print(json.dumps({"bytes": sum(moved), "secs": round(dt, 3), "mbps": round(sum(moved) / dt / 1e6, 1)}))


def thread_states(pgids):
    """(comm, state, ns on CPU) of every thread of the process groups."""
    for pid, _ in group_members(pgids):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    data = f.read()
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            comm = data[data.index("(") + 1 : data.rindex(")")]
            state = data[data.rindex(")") + 2 :].split()[0]
            yield comm, state, ns


def cmd_threadcpu(*pgids):
    by_name = {}
    for comm, _, ns in thread_states(pgids):
        by_name[comm] = by_name.get(comm, 0.0) + ns / 1e9
    print(json.dumps(by_name, sort_keys=True))


# ---------------------------------------------------------------- MFA (issue 11)


def totp_code(secret, now=None, step=30, digits=6):
    """RFC 6238 with SHA-1, 6 digits, 30 s steps: what moat's TOTP uses."""
    secret = secret.strip().replace(" ", "").upper()
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    counter = int((time.time() if now is None else now) // step)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[off : off + 4])[0] & 0x7FFFFFFF) % 10**digits
    return f"{code:0{digits}d}"


def cmd_totp(secret):
    print(totp_code(secret))


def insecure_tls():
    """The dev certificate is for localhost; the load tools skip the check too."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def cookie_from(set_cookies, name):
    for sc in set_cookies:
        first = sc.split(";", 1)[0]
        n, _, v = first.partition("=")
        if n.strip() == name and v.strip():
            return v.strip()
    return None


def csrf_from(html):
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    return m.group(1) if m else None


def form_body(fields):
    from urllib.parse import urlencode

    return urlencode(fields).encode()


def cmd_mfa_login(port, user, password, secret, src="127.0.0.1"):
    import http.client

    conn = http.client.HTTPSConnection(
        "127.0.0.1", int(port), context=insecure_tls(), timeout=20, source_address=(src, 0)
    )
    host = {"Host": f"127.0.0.1:{port}"}
    conn.request("GET", "/.moat/login", headers=host)
    r = conn.getresponse()
    html = r.read().decode("utf-8", "replace")
    nonce = cookie_from(r.msg.get_all("Set-Cookie") or [], "__Host-moat-csrf")
    token = csrf_from(html)
    if r.status != 200 or not nonce or not token:
        die(f"login form: status {r.status}, csrf cookie {bool(nonce)}, token {bool(token)}")
    body = form_body(
        {"username": user, "password": password, "code": totp_code(secret), "csrf": token, "next": "/"}
    )
    conn.request(
        "POST",
        "/.moat/login",
        body=body,
        headers={
            **host,
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"__Host-moat-csrf={nonce}",
        },
    )
    r = conn.getresponse()
    r.read()
    session = cookie_from(r.msg.get_all("Set-Cookie") or [], "__Host-moat-session")
    conn.close()
    if r.status != 303 or not session:
        die(f"login as {user}: status {r.status}, no session cookie")
    print(session)


async def read_response(reader):
    """(status, headers lower-cased, body) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    cookies = []
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            k = k.strip().lower()
            headers[k] = v.strip()
            if k == "set-cookie":
                cookies.append(v.strip())
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            body += chunk[:-2]
            if size == 0:
                # trailers, if any, end with an empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
    else:
        body = b""
    return status, headers, cookies, body


def cmd_login_flood(port, src, conns, secs, out, user="flood-target"):
    """Wrong passwords, as fast as moat answers, from address SRC."""
    import asyncio

    port, conns, secs = int(port), int(conns), float(secs)
    host = f"127.0.0.1:{port}"
    statuses = {}
    latencies = []
    problems = []
    reconnects = [0]

    async def one(i):
        deadline = time.monotonic() + secs
        ctx = insecure_tls()
        n = 0
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="localhost", local_addr=(src, 0)
                )
            except OSError as e:
                problems.append(f"conn {i}: connect: {e!r}")
                await asyncio.sleep(0.1)
                continue
            try:
                writer.write(f"GET /.moat/login HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                status, _, cookies, body = await read_response(reader)
                nonce = cookie_from(cookies, "__Host-moat-csrf")
                token = csrf_from(body.decode("utf-8", "replace"))
                if status != 200 or not nonce or not token:
                    problems.append(f"conn {i}: login form status {status}")
                    return
                while time.monotonic() < deadline:
                    n += 1
                    body = form_body(
                        {"username": user, "password": f"wrong-{i}-{n}", "code": "000000",
                         "csrf": token, "next": "/"}
                    )
                    req = (
                        f"POST /.moat/login HTTP/1.1\r\nHost: {host}\r\n"
                        f"Content-Type: application/x-www-form-urlencoded\r\n"
                        f"Cookie: __Host-moat-csrf={nonce}\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode() + body
                    t0 = time.monotonic()
                    writer.write(req)
                    status, headers, _, _ = await asyncio.wait_for(read_response(reader), 30)
                    latencies.append(time.monotonic() - t0)
                    statuses[status] = statuses.get(status, 0) + 1
                    if headers.get("connection", "").lower() == "close":
                        break
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ssl.SSLError) as e:
                if time.monotonic() < deadline:
                    problems.append(f"conn {i}: {e!r}")
            finally:
                writer.close()
            reconnects[0] += 1

    async def main():
        await asyncio.gather(*(one(i) for i in range(conns)))

    t0 = time.monotonic()
    cpu0 = time.process_time()
    asyncio.run(main())
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    latencies.sort()
    res = {
        "posts": sum(statuses.values()),
        "per_s": sum(statuses.values()) / wall if wall else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": (percentile(latencies, 50) or 0) * 1000,
        "p99_ms": (percentile(latencies, 99) or 0) * 1000,
        "connections": reconnects[0],
        "problems": problems[:20],
        "wall_s": wall,
        "cpu_s": cpu,
    }
    with open(out, "w") as f:
        json.dump(res, f)


def admin_metrics(port):
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def metric_values(text, name):
    """Every sample of metric NAME: [(labels text, value)]."""
    out = []
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            labels = line[len(name) : line.rindex(" ")].strip()
            out.append((labels, float(line.split()[-1])))
    return out


def cmd_metric(port, prefix):
    for line in admin_metrics(port).splitlines():
        if line.startswith(prefix):
            print(line)


def cmd_metrics_sampler(port, out, interval="0.05", pgid=None):
    """The hash gauges, every INTERVAL s, until killed (SIGTERM writes the file)."""
    import signal

    interval = float(interval)
    state = {"samples": 0, "errors": 0, "in_progress_max": 0.0, "waiting_max": 0.0,
             "in_progress_hist": {}, "runnable_hash_threads_max": 0, "runnable_hist": {}}

    def write(*_):
        with open(out + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(out + ".tmp", out)
        if _:
            sys.exit(0)

    signal.signal(signal.SIGTERM, write)
    while True:
        t0 = time.monotonic()
        try:
            text = admin_metrics(port)
            running = sum(v for _, v in metric_values(text, "moat_password_hashes_in_progress"))
            waiting = sum(v for _, v in metric_values(text, "moat_password_hashes_waiting"))
            state["samples"] += 1
            state["in_progress_max"] = max(state["in_progress_max"], running)
            state["waiting_max"] = max(state["waiting_max"], waiting)
            h = state["in_progress_hist"]
            h[str(int(running))] = h.get(str(int(running)), 0) + 1
            if pgid:
                n = sum(1 for comm, st, _ in thread_states([pgid])
                        if comm.startswith("tokio-rt") and st == "R")
                state["runnable_hash_threads_max"] = max(state["runnable_hash_threads_max"], n)
                r = state["runnable_hist"]
                r[str(n)] = r.get(str(n), 0) + 1
        except Exception:  # noqa: BLE001 - a missed sample is counted, not fatal
            state["errors"] += 1
        if state["samples"] % 20 == 0:
            write()
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))



def cmd_renice_threads(pgid, prefix, nice):
    nice = int(nice)
    while True:
        for pid, _ in group_members([pgid]):
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/comm") as f:
                        comm = f.read().strip()
                    if comm.startswith(prefix) and os.getpriority(os.PRIO_PROCESS, int(tid)) != nice:
                        os.setpriority(os.PRIO_PROCESS, int(tid), nice)
                except OSError:
                    continue
        time.sleep(0.2)


COMMANDS = {
    "ports": cmd_ports,
    "wait-port": cmd_wait_port,
    "cputicks": cmd_cputicks,
    "cpusplit": cmd_cpusplit,
    "preemptions": cmd_preemptions,
    "runcpu": cmd_runcpu,
    "parse-wrk": cmd_parse_wrk,
    "parse-h2load": cmd_parse_h2load,
    "parse-oha": cmd_parse_oha,
    "parse-iperf": cmd_parse_iperf,
    "probe-resume": cmd_probe_resume,
    "upstream-sampler": cmd_upstream_sampler,
    "summary": cmd_summary,
    "http-backend": cmd_http_backend,
    "echo-server": cmd_echo_server,
    "tls-echo-load": cmd_tls_echo_load,
    "dicom-sink": cmd_dicom_sink,
    "dicom-store-load": cmd_dicom_store_load,
    "threadcpu": cmd_threadcpu,
    "totp": cmd_totp,
    "mfa-login": cmd_mfa_login,
    "login-flood": cmd_login_flood,
    "metrics-sampler": cmd_metrics_sampler,
    "metric": cmd_metric,
    "renice-threads": cmd_renice_threads,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
