#!/usr/bin/env python3
"""RSS that slow readers of a large response cost moat (issue 10, item 5).

Starts the release moat with one TLS `http` service in front of a device
that answers every GET with SIZE bytes, opens N clients that ask for it and
then read slowly (RATE bytes/s each), and samples moat's VmRSS before they
connect and while they read. Prints the increase. Loopback only; bounded
(each phase has a deadline; about 25 s per mode).

    python3 benches/load/slow_readers.py                  # h1 and h2, N=256, 4 MiB
    MODES=h2 N=256 SIZE=4194304 python3 benches/load/slow_readers.py
    MOAT_BIN=/path/to/moat python3 benches/load/slow_readers.py
    MODES=download SIZE=268435456 python3 benches/load/slow_readers.py   # throughput, curl

h1: N TLS connections (ALPN http/1.1), one GET each, read RATE bytes/s.
h2: N streams over N/STREAMS connections (ALPN h2), the client's windows
    left at the RFC default of 64 KiB and topped up only as it reads.
Standard library only.
"""
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOAT_BIN = os.environ.get("MOAT_BIN", os.path.join(ROOT, "target/release/moat"))
N = int(os.environ.get("N", "256"))
SIZE = int(os.environ.get("SIZE", str(4 << 20)))
RATE = int(os.environ.get("RATE", str(64 << 10)))  # bytes/s per client
STREAMS = int(os.environ.get("STREAMS", "8"))  # h2 streams per connection
HOLD = float(os.environ.get("HOLD", "6"))  # seconds of sampling while reading
MODES = os.environ.get("MODES", "h1 h2").split()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def device(port):
    """HTTP/1.1 keep-alive device: SIZE bytes for any request."""
    body = b"x" * SIZE
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % SIZE
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4096)

    def conn(c):
        f = c.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                c.sendall(head + body)
        except OSError:
            pass

    def accept():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=conn, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def frame(t, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", stream) + payload


class H1Client:
    def __init__(self, ctx, port):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s = ctx.wrap_socket(raw, server_hostname="localhost")
        self.s.sendall(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.s.setblocking(False)
        self.got = 0

    def read(self, budget):
        n = 0
        try:
            while n < budget:
                d = self.s.recv(min(16384, budget - n))
                if not d:
                    break
                n += len(d)
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        self.got += n
        return n


class H2Client:
    """STREAMS GETs on one connection; WINDOW_UPDATEs only for what was read."""

    def __init__(self, ctx, port, streams):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        ctx.set_alpn_protocols(["h2"])
        self.s = ctx.wrap_socket(raw, server_hostname="localhost")
        assert self.s.selected_alpn_protocol() == "h2"
        # :method GET, :scheme https, :path /big, :authority localhost
        path = b"/big"
        hpack = bytes([0x82, 0x87, 0x44, len(path)]) + path + bytes([0x41, 9]) + b"localhost"
        out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0)
        for i in range(streams):
            out += frame(1, 5, 1 + 2 * i, hpack)
        self.s.sendall(out)
        self.s.setblocking(False)
        self.buf = b""
        self.got = 0
        self.unacked = {}

    def read(self, budget):
        n = 0
        try:
            while n < budget:
                d = self.s.recv(min(16384, budget - n))
                if not d:
                    break
                n += len(d)
                self.buf += d
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        out = b""
        while len(self.buf) >= 9:
            ln = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + ln:
                break
            t, flags, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            if t == 0 and ln:
                self.got += ln
                out += frame(8, 0, sid, struct.pack(">I", ln)) + frame(8, 0, 0, struct.pack(">I", ln))
            elif t == 4 and not flags & 1:
                out += frame(4, 1, 0)
            elif t == 6 and not flags & 1:
                out += frame(6, 1, 0, self.buf[9:17])
            self.buf = self.buf[9 + ln:]
        if out:
            self.s.setblocking(True)
            self.s.sendall(out)
            self.s.setblocking(False)
        return n


def download(port, ca):
    """Throughput check: one fast client, curl, h1 and h2, median of 3."""
    for flag in ("--http1.1", "--http2"):
        rates = []
        for _ in range(3):
            out = subprocess.run(
                ["curl", "-sS", flag, "--cacert", ca, "--noproxy", "*", "--max-time", "60",
                 "-o", "/dev/null", "-w", "%{speed_download}", f"https://localhost:{port}/big"],
                capture_output=True, text=True, check=True,
            )
            rates.append(float(out.stdout) * 8 / 1e9)
        rates.sort()
        print(f"download {flag}: {SIZE >> 20} MiB at {rates[1]:.2f} Gbit/s (median of 3: {', '.join(f'{r:.2f}' for r in rates)})", flush=True)


def run(mode, work, ca):
    dev_port, port, admin = free_port(), free_port(), free_port()
    device(dev_port)
    cfg = os.path.join(work, f"moat-{mode}.toml")
    with open(cfg, "w") as f:
        f.write(f"""[gateway]
audit_log = "{work}/audit-{mode}.jsonl"
[admin]
listen = "127.0.0.1:{admin}"
[[device]]
id = "dev"
name = "slow readers"
[[device.service]]
name = "ui"
protocol = "http"
listen = "127.0.0.1:{port}"
upstream = "127.0.0.1:{dev_port}"
allow = ["127.0.0.0/8"]
max_connections = 4096
[device.service.tls]
certificates = [{{ cert = "{work}/certs/server.pem", key = "{work}/certs/server.key" }}]
[device.service.http]
keepalive_timeout = "5m"
response_timeout = "5m"
max_concurrent_streams = {max(STREAMS, 1)}
""")
    env = dict(os.environ, MOAT_WORKER_THREADS=os.environ.get("MOAT_WORKER_THREADS", "2"))
    moat = subprocess.Popen([MOAT_BIN, "run", "-c", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        # One request first, so that moat's pools and allocator are warm.
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["http/1.1"])
        w = H1Client(ctx, port)
        end = time.time() + 10
        while w.got < SIZE and time.time() < end:
            select.select([w.s], [], [], 0.2)
            w.read(1 << 20)
        w.s.close()
        time.sleep(0.5)
        if mode == "download":
            return download(port, ca)
        before = rss_kib(moat.pid)
        clients = []
        if mode == "h1":
            for _ in range(N):
                c = ssl.create_default_context(cafile=ca)
                c.set_alpn_protocols(["http/1.1"])
                clients.append(H1Client(c, port))
        else:
            for _ in range(max(1, N // STREAMS)):
                clients.append(H2Client(ssl.create_default_context(cafile=ca), port, STREAMS))
        per = RATE * (STREAMS if mode == "h2" else 1)
        peak, samples, t0 = before, [], time.time()
        tick = 0.1
        while time.time() - t0 < HOLD:
            start = time.time()
            for c in clients:
                c.read(int(per * tick))
            r = rss_kib(moat.pid)
            samples.append(r)
            peak = max(peak, r)
            time.sleep(max(0, tick - (time.time() - start)))
        got = sum(c.got for c in clients)
        last = samples[-1]
        streams = N if mode == "h1" else len(clients) * STREAMS
        print(
            f"{mode}: {streams} slow readers of {SIZE >> 10} KiB over {len(clients)} connections: "
            f"RSS {before} KiB before, peak {peak} KiB (+{(peak - before) / 1024:.1f} MiB), "
            f"after {HOLD:.0f}s {last} KiB (+{(last - before) / 1024:.1f} MiB); "
            f"clients read {got / streams / 1024:.0f} KiB each",
            flush=True,
        )
        for c in clients:
            c.s.close()
        return (peak - before) / 1024
    finally:
        moat.terminate()
        moat.wait(timeout=10)


def main():
    with tempfile.TemporaryDirectory(prefix="moat-slow.") as work:
        subprocess.run([MOAT_BIN, "certs", "dev", os.path.join(work, "certs")], check=True, stdout=subprocess.DEVNULL)
        ca = os.path.join(work, "certs", "ca.pem")
        for mode in MODES:
            run(mode, work, ca)


if __name__ == "__main__":
    sys.exit(main())
