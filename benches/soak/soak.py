#!/usr/bin/env python3
"""Helpers for benches/soak.sh (standard library only). Every command is
bounded in time; every socket is on 127.0.0.0/8.

  soak.py render CONF GEN                 write the policy from its template, reload number GEN
  soak.py l4 CONF SRC SECS OUT [denied]   TLS echo clients through the L4 service
  soak.py control CONF SECS OUT           every INTERVAL s: a reload and a revocation
  soak.py drain CONF DEADLINE             wait until moat holds no connection
  soak.py figures CONF                    RSS, descriptors, threads, tasks of moat (JSON)
  soak.py audit CONF                      a summary of the audit trail (JSON)
  soak.py curl CONF SRC SECS OUT MODE URL...  curl clients (MODE allowed or denied)
  soak.py wrk WRK_OUTPUT OUT               wrk's summary as counts
  soak.py sclient CONF SECS OUT           openssl s_client clients, allowed and denied
  soak.py report CONF START END AUDIT COUNTS...  the tables; exit 1 when a bound is broken

CONF is the JSON file soak.sh writes: ports, paths, the moat pid, bounds.
"""

import json
import os
import signal
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request

REVOKED = "127.0.0.3"  # the allowed source that every revocation takes away and gives back


def load(conf):
    with open(conf) as f:
        return json.load(f)


def die(msg):
    print(f"soak.py: {msg}", file=sys.stderr)
    sys.exit(1)


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def replace_file(path, text):
    """Write to a temporary name, then rename over PATH (what moat's docs advise)."""
    assert text.endswith("\n")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------- policy


def render(c, gen):
    with open(c["template"]) as f:
        text = f.read()
    # A real change at every reload: one service's cap alternates, and the
    # closing comment counts the reloads.
    text = text.replace("@MAXC@", str(256 + gen % 2)).replace("@GEN@", str(gen))
    replace_file(c["policy"], text)


def write_allow(c, with_revoked):
    lines = ["# soak clients: allowed sources", "127.0.0.1", "127.0.0.2"]
    if with_revoked:
        lines.append(REVOKED + "   # revoked and restored at every cycle")
    lines.append("127.0.0.10  # allowed here, denylisted by the quarantine set")
    replace_file(c["allow"], "\n".join(lines) + "\n")


# ---------------------------------------------------------------- admin


def admin_get(c, path, timeout=5):
    url = f"http://127.0.0.1:{c['admin']}{path}"
    return urllib.request.urlopen(url, timeout=timeout).read().decode()


def metrics(c):
    out = {}
    for line in admin_get(c, "/metrics").splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out.setdefault(name, []).append((name_labels, float(value)))
        except ValueError:
            pass
    return out


def policy_version(c):
    return json.loads(admin_get(c, "/policy"))["version"]


# ---------------------------------------------------------------- clients


def tls_ctx(c):
    ctx = ssl.create_default_context(cafile=c["ca"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def connect(c, port, src, tls, timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
        if tls:
            s = tls_ctx(c).wrap_socket(s, server_hostname="localhost")
    except BaseException:
        s.close()
        raise
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def echo(s, size):
    msg = os.urandom(size)
    s.sendall(msg)
    if recv_exact(s, size) != msg:
        raise ValueError("echo mismatch")


def http_get(s, host, path="/"):
    """One keep-alive HTTP/1.1 GET on socket S; returns the status."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: moat-soak\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("EOF before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if "content-length" in hdrs:
        n = int(hdrs["content-length"])
        if len(body) < n:
            body += recv_exact(s, n - len(body))
    elif hdrs.get("transfer-encoding", "").lower() == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("EOF inside a chunked body")
            body += chunk
    return status


def wait_cut(s, deadline):
    """True when the peer closes (EOF, reset or TLS alert) before DEADLINE."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        s.settimeout(left)
        try:
            if not s.recv(65536):
                return True
        except socket.timeout:
            return False
        except (OSError, ssl.SSLError):
            return True


def host_for(port, tls):
    """The Host a service answers to: the certificate's name, or the listen address."""
    return "localhost" if tls else f"127.0.0.1:{port}"


def served(c, name, src, tls, http):
    """A connection from src to service `name` that has had one answer (a
    200, or a 256-byte echo); raises if it had none."""
    s = connect(c, c["ports"][name], src, tls)
    try:
        if http:
            st = http_get(s, host_for(c["ports"][name], tls))
            if st != 200:
                raise ConnectionError(f"status {st}")
        else:
            echo(s, 256)
    except BaseException:
        s.close()
        raise
    return s


def try_denied(c, port, src, tls, http):
    """A new connection from SRC: True when moat refuses it (no answer gets through)."""
    try:
        s = connect(c, port, src, tls)
    except (OSError, ssl.SSLError):
        return True
    try:
        if http:
            return http_get(s, host_for(port, tls)) >= 400
        echo(s, 64)
        return False
    except (OSError, ssl.SSLError, ValueError):
        return True
    finally:
        s.close()


class Counts:
    def __init__(self):
        self.d = {"allowed": 0, "allowed_failed": 0, "denied": 0, "denied_leaked": 0}
        self.errors = []

    def ok(self, kind):
        self.d[kind] += 1

    def bad(self, kind, what):
        self.d[kind] += 1
        self.d[{"allowed": "allowed_failed", "denied": "denied_leaked"}[kind]] += 1
        if len(self.errors) < 20:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {what}")

    def dump(self, out, **extra):
        write_json(out, {**self.d, **extra, "errors": self.errors})


# ---------------------------------------------------------------- l4


def cmd_l4(conf, src, secs, out, mode="allowed"):
    """Allowed: two long-lived TLS echo connections (an echo on each every
    iteration; a cut one is a failure) and a new short connection per
    iteration, ~20 iterations/s. Denied: a connection every 0.2 s that must
    not get an echo back."""
    c = load(conf)
    port = c["ports"]["l4"]
    n = Counts()
    end = time.monotonic() + float(secs)
    i = 0
    if mode == "denied":
        while time.monotonic() < end:
            if try_denied(c, port, src, tls=True, http=False):
                n.ok("denied")
            else:
                n.bad("denied", f"l4 from {src}: a denied source got an echo back")
            time.sleep(0.2)
        n.dump(out)
        return
    held = []
    for k in range(2):
        try:
            held.append(connect(c, port, src, tls=True))
        except (OSError, ssl.SSLError) as e:
            n.bad("allowed", f"l4 long-lived {k} from {src}: {e!r}")
    while time.monotonic() < end:
        t0 = time.monotonic()
        for k, s in enumerate(list(held)):
            try:
                echo(s, 512 + (i * 131) % 8192)
                n.ok("allowed")
            except (OSError, ssl.SSLError, ValueError) as e:
                n.bad("allowed", f"l4 long-lived {k} from {src}: {e!r}")
                held.remove(s)
                s.close()
        try:
            s = connect(c, port, src, tls=True)
            try:
                for r in range(1 + i % 3):
                    echo(s, 64 + (i * 37 + r * 101) % 4096)
            finally:
                s.close()
            n.ok("allowed")
        except (OSError, ssl.SSLError, ValueError) as e:
            n.bad("allowed", f"l4 short from {src}: {e!r}")
        i += 1
        time.sleep(max(0.0, 0.05 - (time.monotonic() - t0)))
    for s in held:
        s.close()
    n.dump(out)


# ---------------------------------------------------------------- curl, openssl


def cmd_curl(conf, src, secs, out, mode, *urls):
    """curl from SRC, all URLS on one connection per run (keep-alive), a run
    every 0.2 s. Allowed: every URL must answer 200. Denied: none may answer
    2xx or 3xx (moat closes a refused source before TLS: curl exits 35/56)."""
    import subprocess

    c = load(conf)
    n = Counts()
    end = time.monotonic() + float(secs)
    cmd = ["curl", "-s", "--max-time", "5", "--interface", src, "--cacert", c["ca"],
           "--resolve", f"localhost:{c['ports']['https']}:127.0.0.1", "-w", "%{http_code}\n"]
    for url in urls:  # each URL needs its own -o
        cmd += ["-o", "/dev/null", url]
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=15)
            codes = p.stdout.decode("latin-1").split()
            rc = p.returncode
        except subprocess.TimeoutExpired:
            codes, rc = [], "timeout"
        codes += ["000"] * (len(urls) - len(codes))
        for url, code in zip(urls, codes):
            if mode == "denied":
                if code[0] in "23":
                    n.bad("denied", f"curl from {src} {url}: {code}: a denied source got an answer")
                else:
                    n.ok("denied")
            elif code == "200":
                n.ok("allowed")
            else:
                n.bad("allowed", f"curl from {src} {url}: status {code}, curl exit {rc}")
        time.sleep(max(0.0, 0.2 - (time.monotonic() - t0)))
    n.dump(out)


def cmd_sclient(conf, secs, out):
    """openssl s_client, one HTTP/1.0 GET per handshake, every 0.5 s: in
    turn from the allowed 127.0.0.2 (must get 200 "ok") and from the
    refused 127.0.0.9 (must get nothing)."""
    import subprocess

    c = load(conf)
    n = Counts()
    end = time.monotonic() + float(secs)
    i = 0
    while time.monotonic() < end:
        t0 = time.monotonic()
        src = "127.0.0.9" if i % 2 else "127.0.0.2"
        cmd = ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{c['ports']['https']}",
               "-bind", f"{src}:0", "-servername", "localhost", "-CAfile", c["ca"],
               "-verify_return_error"]
        try:
            p = subprocess.run(cmd, input=b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n",
                               capture_output=True, timeout=10)
            outb, rc = p.stdout, p.returncode
        except subprocess.TimeoutExpired:
            outb, rc = b"", "timeout"
        got = outb.startswith((b"HTTP/1.0 200 ", b"HTTP/1.1 200 ")) and outb.endswith(b"\r\n\r\nok\n")
        if src == "127.0.0.9":
            if outb.startswith(b"HTTP/"):
                n.bad("denied", f"s_client from {src}: got {outb[:40]!r}")
            else:
                n.ok("denied")
        elif got:
            n.ok("allowed")
        else:
            n.bad("allowed", f"s_client from {src}: exit {rc}, {outb[:60]!r}")
        i += 1
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
    n.dump(out)


def cmd_wrk(text_path, out):
    """wrk's own summary as counts: every response not 2xx or 3xx and every
    socket error (connect, read, write, timeout) is a failed allowed request."""
    import re

    text = open(text_path).read()
    m = re.search(r"(\d+) requests in", text)
    done = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    sock = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(m.group(1)) if m else 0
    errors = [ln.strip() for ln in text.splitlines() if "errors" in ln or "Non-2xx" in ln][:5]
    if not done:
        errors.append("wrk completed no request: " + text.strip()[-200:])
    write_json(out, {"allowed": done + sock, "allowed_failed": non2xx + sock + (0 if done else 1),
                     "denied": 0, "denied_leaked": 0, "errors": errors if (non2xx or sock or not done) else []})


# ---------------------------------------------------------------- control


def wait_version(c, above, secs=10.0):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            v = policy_version(c)
            if v > above:
                return v
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return None


def cmd_control(conf, secs, out):
    """Every INTERVAL s, one cycle: (1) a reload of the main policy (a real
    change), by the file watcher, SIGHUP or POST /reload in turn; (2) a
    revocation: REVOKED holds a TLS echo, an HTTPS and an HTTP keep-alive
    connection; it is removed from the allowlist file, each connection must
    be cut and a new one refused; then it is put back and must get through."""
    c = load(conf)
    interval = float(c["interval"])
    n = Counts()
    stats = {"cycles": 0, "reloads": 0, "reloads_failed": 0, "revocations": 0,
             "not_cut": 0, "cut_ms_max": 0.0, "by_trigger": {}}
    errors = n.errors
    services = [("l4", True, False), ("https", True, True), ("http", False, True)]
    with open(c["policy"]) as f:  # the last line is "# soak reload N"
        gen = int(f.read().rstrip("\n").rsplit(" ", 1)[1])
    end = time.monotonic() + float(secs)
    next_at = time.monotonic()
    kinds = ["file", "sighup", "admin"]
    while time.monotonic() + 2 < end:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        stats["cycles"] += 1
        # -- (1) reload
        kind = kinds[stats["cycles"] % 3]
        try:
            v0 = policy_version(c)
        except OSError as e:
            n.errors.append(f"admin /policy: {e!r}")
            stats["reloads_failed"] += 1
            continue
        gen += 1
        render(c, gen)
        if kind == "sighup":
            os.kill(int(c["moat_pid"]), signal.SIGHUP)
        elif kind == "admin":
            req = urllib.request.Request(f"http://127.0.0.1:{c['admin']}/reload", method="POST")
            try:
                body = json.loads(urllib.request.urlopen(req, timeout=10).read())
                if body.get("result") == "rejected":
                    errors.append(f"POST /reload rejected: {body.get('errors')}")
            except (OSError, ValueError) as e:
                errors.append(f"POST /reload: {e!r}")
        stats["reloads"] += 1
        stats["by_trigger"][kind] = stats["by_trigger"].get(kind, 0) + 1
        v1 = wait_version(c, v0)
        if v1 is None:
            stats["reloads_failed"] += 1
            if len(errors) < 20:
                errors.append(f"reload {gen} ({kind}): policy version stayed {v0}")
            continue
        # -- (2) revocation
        held = []
        for name, tls, http in services:
            try:
                held.append((name, served(c, name, REVOKED, tls, http)))
                n.ok("allowed")
            except (OSError, ssl.SSLError, ValueError) as e:
                n.bad("allowed", f"{name} from {REVOKED} before revocation: {e!r}")
        stats["revocations"] += 1
        write_allow(c, with_revoked=False)
        t0 = time.monotonic()
        deadline = t0 + 10
        for name, s in held:
            if wait_cut(s, deadline):
                stats["cut_ms_max"] = max(stats["cut_ms_max"], (time.monotonic() - t0) * 1000)
            else:
                stats["not_cut"] += 1
                if len(errors) < 20:
                    errors.append(f"{name}: live connection from {REVOKED} not cut within 10 s of its revocation")
            s.close()
        v2 = wait_version(c, v1)
        if v2 is None:
            stats["reloads_failed"] += 1
            errors.append("revocation: policy version did not move")
        for name, tls, http in services:
            if try_denied(c, c["ports"][name], REVOKED, tls, http):
                n.ok("denied")
            else:
                n.bad("denied", f"{name}: new connection from revoked {REVOKED} got through")
        write_allow(c, with_revoked=True)
        v3 = wait_version(c, v2 or v1)
        if v3 is None:
            stats["reloads_failed"] += 1
            errors.append("restore: policy version did not move")
        for name, tls, http in services:
            try:
                served(c, name, REVOKED, tls, http).close()
                n.ok("allowed")
            except (OSError, ssl.SSLError, ValueError) as e:
                n.bad("allowed", f"{name} from {REVOKED} after it was restored: {e!r}")
    n.dump(out, gen=gen, **stats)


# ---------------------------------------------------------------- figures


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split()[1]
    return None


def cmd_figures(conf):
    c = load(conf)
    pid = int(c["moat_pid"])
    fig = {
        "rss_kib": int(proc_status(pid, "VmRSS")),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(proc_status(pid, "Threads")),
        "tasks": None,
        "metric_rss_kib": None,
        "metric_fds": None,
    }
    try:
        m = metrics(c)
        if "moat_runtime_tasks" in m:
            fig["tasks"] = int(m["moat_runtime_tasks"][0][1])
        if "moat_process_resident_memory_bytes" in m:
            fig["metric_rss_kib"] = int(m["moat_process_resident_memory_bytes"][0][1] // 1024)
        if "moat_process_open_fds" in m:
            fig["metric_fds"] = int(m["moat_process_open_fds"][0][1])
    except OSError as e:
        die(f"admin /metrics: {e!r}")
    print(json.dumps(fig))


# ---------------------------------------------------------------- drain


def established_to(ports):
    """Established TCP connections whose remote port is one of PORTS (moat's
    connections to the backends: nothing else on the machine uses them)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "01" and int(parts[2].rsplit(":", 1)[1], 16) in ports:
                        n += 1
        except FileNotFoundError:
            pass
    return n


def cmd_drain(conf, deadline_s):
    """Waits until moat relays no connection (moat_connections_active all 0,
    no handshake in progress), holds no connection to a backend (idle
    keep-alive ones are closed by nginx after 2 s) and its task and
    descriptor counts hold still over two polls 0.5 s apart."""
    c = load(conf)
    pid = int(c["moat_pid"])
    backends = set(c["backend_ports"])
    deadline = time.monotonic() + float(deadline_s)
    last, state = None, {}
    while time.monotonic() < deadline:
        m = metrics(c)
        active = sum(v for _, v in m.get("moat_connections_active", []))
        hs = sum(v for _, v in m.get("moat_tls_handshakes_in_progress", []))
        up = established_to(backends)
        tasks = m.get("moat_runtime_tasks", [(None, -1)])[0][1]
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        state = {"active": active, "handshakes": hs, "upstream": up, "tasks": tasks, "fds": fds}
        if active == 0 and hs == 0 and up == 0:
            if last == (tasks, fds):
                print(json.dumps(state))
                return
            last = (tasks, fds)
        else:
            last = None
        time.sleep(0.5)
    die(f"moat did not drain within {deadline_s} s: {state}")


# ---------------------------------------------------------------- audit


def cmd_audit(conf):
    c = load(conf)
    ev, denied, revoked, closed, status = {}, {}, {}, {}, {}
    problems = []
    with open(c["audit"]) as f:
        for line in f:
            e = json.loads(line)
            k = e["event"]
            ev[k] = ev.get(k, 0) + 1
            ip = e.get("client", "").rsplit(":", 1)[0]
            if k == "connection_denied":
                key = f"{ip} {e.get('reason')}"
                denied[key] = denied.get(key, 0) + 1
            elif k == "connection_revoked":
                key = f"{ip} {e.get('reason')}"
                revoked[key] = revoked.get(key, 0) + 1
                if ip != REVOKED:
                    problems.append(f"connection of {ip} revoked: {e.get('reason')}")
            elif k == "connection_closed":
                closed[e["closed_by"]] = closed.get(e["closed_by"], 0) + 1
            elif k == "http_request":
                st = str(e.get("status"))
                status[st] = status.get(st, 0) + 1
            elif k == "reload_rejected":
                problems.append(f"reload rejected: {e.get('errors')}")
    try:
        m = metrics(c)
        dropped = sum(v for _, v in m.get("moat_audit_dropped_total", []))
        if dropped:
            problems.append(f"{dropped:.0f} audit events dropped")
    except OSError:
        pass
    print(json.dumps({"events": ev, "denied": denied, "revoked": revoked, "closed_by": closed,
                      "http_status": status, "problems": problems[:20], "n_problems": len(problems)}))


# ---------------------------------------------------------------- report


def cmd_report(conf, start, end, audit, *counts):
    c = load(conf)
    s, e, a = json.loads(start), json.loads(end), json.loads(audit)
    b = c["bounds"]
    fails = []

    def mib(kib):
        return f"{kib / 1024:.1f} MiB"

    rss_allow = max(b["rss_mib"] * 1024, s["rss_kib"] * b["rss_pct"] / 100)
    rows = [("RSS (VmRSS)", mib(s["rss_kib"]), mib(e["rss_kib"]), f"{(e['rss_kib'] - s['rss_kib']) / 1024:+.1f} MiB",
             f"+{mib(rss_allow)}")]
    if e["rss_kib"] - s["rss_kib"] > rss_allow:
        fails.append(f"RSS grew {mib(e['rss_kib'] - s['rss_kib'])}, over the bound of {mib(rss_allow)}")
    for key, label, bound in (("fds", "open descriptors", b["fds"]), ("threads", "threads", b["threads"]),
                              ("tasks", "tokio tasks", b["tasks"])):
        sv, ev_ = s.get(key), e.get(key)
        if sv is None or ev_ is None:
            rows.append((label, "n/a", "n/a", "", f"+{bound}"))
            continue
        rows.append((label, str(sv), str(ev_), f"{ev_ - sv:+d}", f"+{bound}"))
        if ev_ - sv > bound:
            fails.append(f"{label} grew by {ev_ - sv} ({sv} -> {ev_}), over the bound of {bound}")
    for key, label in (("metric_rss_kib", "RSS (moat_process_resident_memory_bytes)"),
                       ("metric_fds", "descriptors (moat_process_open_fds)")):
        sv, ev_ = s.get(key), e.get(key)
        if sv is None or ev_ is None:
            rows.append((label, "n/a", "n/a", "", "report only"))
        elif key == "metric_rss_kib":
            rows.append((label, mib(sv), mib(ev_), f"{(ev_ - sv) / 1024:+.1f} MiB", "report only"))
        else:
            rows.append((label, str(sv), str(ev_), f"{ev_ - sv:+d}", "report only"))
    print()
    print(f"{'figure':<42} {'start':>12} {'end':>12} {'change':>12} {'bound':>12}")
    for r in rows:
        print(f"{r[0]:<42} {r[1]:>12} {r[2]:>12} {r[3]:>12} {r[4]:>12}")
    print()
    print(f"{'traffic':<42} {'allowed':>10} {'failed':>8} {'denied':>10} {'leaked':>8}")
    tot = {"allowed": 0, "allowed_failed": 0, "denied": 0, "denied_leaked": 0}
    ctls = []
    errs = []
    for path in counts:
        name = (os.path.basename(os.path.dirname(path)) + " "
                + os.path.basename(path).removeprefix("count.").removesuffix(".json"))
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as ex:
            fails.append(f"{name}: no counts ({ex})")
            continue
        for k in tot:
            tot[k] += d.get(k, 0)
        print(f"{name:<42} {d.get('allowed', 0):>10} {d.get('allowed_failed', 0):>8} "
              f"{d.get('denied', 0):>10} {d.get('denied_leaked', 0):>8}")
        if d.get("errors"):
            errs += [f"{name}: {x}" for x in d["errors"][:5]]
        if "cycles" in d:
            ctls.append((name, d))
        if d.get("allowed", 0) + d.get("denied", 0) == 0:
            fails.append(f"{name}: made no attempt")
    print(f"{'total':<42} {tot['allowed']:>10} {tot['allowed_failed']:>8} {tot['denied']:>10} {tot['denied_leaked']:>8}")
    if tot["allowed_failed"]:
        fails.append(f"{tot['allowed_failed']} of {tot['allowed']} allowed attempts failed")
    if tot["denied_leaked"]:
        fails.append(f"{tot['denied_leaked']} of {tot['denied']} denied attempts got through")
    if not ctls:
        fails.append("no control counts")
    print()
    for name, ctl in ctls:
        print(f"{name}: {ctl['cycles']} cycles every {c['interval']} s; {ctl['reloads']} policy reloads "
              f"{ctl['by_trigger']}, {ctl['reloads_failed']} failed; {ctl['revocations']} revocations "
              f"x 3 live connections, {ctl['not_cut']} not cut, slowest cut {ctl['cut_ms_max']:.0f} ms "
              f"after the allowlist write")
        if ctl["reloads_failed"]:
            fails.append(f"{name}: {ctl['reloads_failed']} reloads did not apply")
        if ctl["not_cut"]:
            fails.append(f"{name}: {ctl['not_cut']} revoked live connections were not cut")
        if ctl["revocations"] == 0:
            fails.append(f"{name}: no revocation ran")
    print()
    print(f"audit trail: {a['events']}")
    print(f"  denied: {a['denied']}; revoked: {a['revoked']}")
    print(f"  closed_by: {a['closed_by']}; http status: {a['http_status']}")
    if a["n_problems"]:
        fails.append(f"audit trail: {a['n_problems']} problems: " + "; ".join(a["problems"][:5]))
    if errs:
        print()
        print("first errors:")
        for x in errs[:20]:
            print("  " + x)
    if fails:
        print()
        for f_ in fails:
            print(f"FAIL: {f_}")
        sys.exit(1)


def main():
    cmds = {"render": lambda conf, gen: render(load(conf), int(gen)), "l4": cmd_l4, "wrk": cmd_wrk, "curl": cmd_curl, "sclient": cmd_sclient,
            "control": cmd_control, "figures": cmd_figures, "drain": cmd_drain,
            "audit": cmd_audit, "report": cmd_report,
            "allow": lambda conf: write_allow(load(conf), True)}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        die(f"usage: soak.py {'|'.join(cmds)} ...")
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
