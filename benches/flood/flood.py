#!/usr/bin/env python3
"""Driver and checker for benches/flood_memory.sh (standard library only).

  flood.py run --pid PID --admin PORT --http-port P [--tcp-port P] [options]

Every source address 127.1.0.0 + i (i < --sources) opens one connection to
the HTTP service, sends one request, reads the answer, closes; then (with
--tcp-port) one connection to the L4 echo service, one round trip, closes.
--concurrency sources run at once. Linux loopback accepts any 127.x.y.z as
a source, so no address is shared and no ephemeral port range runs out.
Sockets close normally (FIN, no SO_LINGER 0): the TIME_WAIT stays on the
client side, under distinct source addresses, and moat never sees a reset.

It samples moat's VmRSS / VmHWM (/proc/PID/status) every 50 ms and the
admin gauges every second, before, during and after the flood; waits for
the periodic sweep that forgets the flood's last source (2T + 10 s) and
then, with a deadline, for RSS to settle; optionally floods fresh sources
again (--waves); writes the figures as JSON (--out) and exits non-zero
when a check fails (request failed, peak growth over --bound-kib, RSS
after the sweep or a later wave's peak more than --slack-kib above the
first flood's peak, tasks or descriptors not back, audit events dropped).
"""

import argparse
import asyncio
import ipaddress
import json
import re
import sys
import threading
import time
import urllib.request


def status_all(pid):
    """VmRSS, VmHWM, RssAnon, RssFile in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                k, v = line.split()[:2]
                out[k[:-1]] = int(v)
    return out


def status(pid):
    """(VmRSS, VmHWM) in KiB."""
    s = status_all(pid)
    return s["VmRSS"], s["VmHWM"]


GAUGES = ("moat_process_resident_memory_bytes", "moat_runtime_tasks", "moat_process_open_fds")


def metrics(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = re.split(r"[ {]", line, 1)[0]
        value = float(line.split()[-1])
        if name in GAUGES:
            out[name] = value
        elif name in ("moat_connections_active", "moat_audit_dropped_total", "moat_audit_dropped"):
            out[name] = out.get(name, 0) + value
    for g in GAUGES:  # an older binary lacks the process gauges: reported as n/a
        out.setdefault(g, float("nan"))
    return out


def replenish_seconds(rate):
    """T = per / count of a moat rate such as "1/min burst 20"."""
    m = re.match(r"\s*(\d+)/(\w+)", rate)
    if not m:
        raise SystemExit(f"flood: cannot read rate {rate!r}")
    per = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}[m.group(2)]
    return per / int(m.group(1))


class Sampler:
    """VmRSS every 50 ms on the event loop; admin gauges every second in a thread."""

    def __init__(self, pid, admin):
        self.pid, self.admin = pid, admin
        self.peak_rss = 0
        self.peak = {g: 0 for g in GAUGES}
        self.stop = threading.Event()
        self.scrape_errors = 0

    def reset(self):
        self.peak_rss = 0
        self.peak = {g: 0 for g in GAUGES}

    async def rss_loop(self):
        while True:
            self.peak_rss = max(self.peak_rss, status(self.pid)[0])
            await asyncio.sleep(0.05)

    def gauge_loop(self):
        while not self.stop.wait(1.0):
            try:
                m = metrics(self.admin)
            except Exception:
                self.scrape_errors += 1
                continue
            for g in GAUGES:
                self.peak[g] = max(self.peak[g], m[g]) if m[g] == m[g] else m[g]


async def read_http(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].split()
    code = int(first[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    body = await reader.readexactly(int(m.group(1))) if m else b""
    return code, body


async def one_source(i, ip, a, errors):
    src = (ip, 0)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", a.http_port, local_addr=src)
        try:
            w.write(f"GET /flood/{i} HTTP/1.1\r\nHost: 127.0.0.1:{a.http_port}\r\n\r\n".encode())
            code, body = await asyncio.wait_for(read_http(r), a.timeout)
        finally:
            w.close()
            await w.wait_closed()
        if code != 200 or body != b"ok\n":
            errors[f"http {code}"] = errors.get(f"http {code}", 0) + 1
            return False
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
        k = f"http {type(e).__name__}: {e}"[:120]
        errors[k] = errors.get(k, 0) + 1
        return False
    if not a.tcp_port:
        return True
    try:
        r, w = await asyncio.open_connection("127.0.0.1", a.tcp_port, local_addr=src)
        try:
            payload = f"flood {i:08d}\n".encode()
            w.write(payload)
            back = await asyncio.wait_for(r.readexactly(len(payload)), a.timeout)
        finally:
            w.close()
            await w.wait_closed()
        if back != payload:
            errors["tcp echo mismatch"] = errors.get("tcp echo mismatch", 0) + 1
            return False
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
        k = f"tcp {type(e).__name__}: {e}"[:120]
        errors[k] = errors.get(k, 0) + 1
        return False
    return True


async def flood(a, base, n, sampler, label):
    errors, done, ok = {}, [0], [0]
    nxt = [0]
    t0 = time.monotonic()

    async def worker():
        while nxt[0] < n:
            i = nxt[0]
            nxt[0] += 1
            if await one_source(i, str(base + i), a, errors):
                ok[0] += 1
            done[0] += 1

    async def progress():
        while True:
            await asyncio.sleep(10)
            el = time.monotonic() - t0
            log(f"{label}: {done[0]}/{n} sources in {el:.0f}s ({done[0] / el:.0f}/s), "
                f"RSS {status(a.pid)[0] / 1024:.1f} MiB, errors {sum(errors.values())}")

    p = asyncio.create_task(progress())
    await asyncio.gather(*(worker() for _ in range(min(a.concurrency, n))))
    p.cancel()
    return {"sources": n, "ok": ok[0], "errors": errors, "seconds": time.monotonic() - t0}


def log(msg):
    print(f"[flood] {msg}", file=sys.stderr, flush=True)


def wait_for(cond, deadline_s, every=0.25):
    """Polls cond() until true or deadline_s pass; returns (result, seconds waited)."""
    t0 = time.monotonic()
    while True:
        r = cond()
        if r or time.monotonic() - t0 > deadline_s:
            return r, time.monotonic() - t0
        time.sleep(every)


def quiet(a):
    """Every flood connection closed (device connections may stay pooled)."""
    return metrics(a.admin).get("moat_connections_active", 0) == 0


def snapshot(a):
    s = status_all(a.pid)
    m = metrics(a.admin)
    return {"rss_kib": s["VmRSS"], "hwm_kib": s["VmHWM"], "anon_kib": s["RssAnon"], "file_kib": s["RssFile"],
            **{k: m[k] for k in GAUGES}}


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--pid", type=int, required=True)
    r.add_argument("--admin", type=int, required=True)
    r.add_argument("--http-port", type=int, required=True)
    r.add_argument("--tcp-port", type=int, default=0)
    r.add_argument("--sources", type=int, default=100_000)
    r.add_argument("--base", default="127.1.0.0")
    r.add_argument("--concurrency", type=int, default=200)
    r.add_argument("--warmup", type=int, default=1000)
    r.add_argument("--timeout", type=float, default=30.0)
    r.add_argument("--rates", nargs="+", required=True, help="the per-client rates configured")
    r.add_argument("--bound-kib", type=float, required=True, help="largest allowed peak RSS growth")
    r.add_argument("--slack-kib", type=float, required=True,
                   help="how far RSS after the sweep, or a later wave's peak, may pass the first flood's peak")
    r.add_argument("--waves", type=int, default=0,
                   help="further floods of fresh addresses after the sweep, each swept again")
    r.add_argument("--wave-sources", type=int, default=0, help="sources per further wave (default: --sources)")
    r.add_argument("--out")
    a = ap.parse_args()
    wave_n = a.wave_sources or a.sources

    base = ipaddress.IPv4Address(a.base)
    last = base + (a.sources + a.waves * wave_n) - 1
    if last not in ipaddress.IPv4Network("127.0.0.0/8"):
        raise SystemExit(f"flood: that many sources from {base} leave 127.0.0.0/8")
    T = max(replenish_seconds(x) for x in a.rates)
    # A source's state is forgotten once its bucket is full again: 2T after
    # its last hit (governor keeps keys whose TAT is within T of now), at the
    # next 10 s sweep.
    res = {"sources": a.sources, "concurrency": a.concurrency, "rates": a.rates,
           "replenish_s": T, "tcp": bool(a.tcp_port)}
    failures = []
    sampler = Sampler(a.pid, a.admin)

    def run_flood(b, n, label):
        async def go():
            t = asyncio.create_task(sampler.rss_loop())
            try:
                return await flood(a, b, n, sampler, label)
            finally:
                t.cancel()
        sampler.reset()
        sampler.stop.clear()
        th = threading.Thread(target=sampler.gauge_loop, daemon=True)
        th.start()
        try:
            f = asyncio.run(go())
        finally:
            sampler.stop.set()
            th.join()
        rss, hwm = status(a.pid)
        f["rate_per_s"] = f["sources"] / f["seconds"]
        f["peak"] = {"rss_kib": max(sampler.peak_rss, rss), "hwm_kib": hwm, **sampler.peak}
        log(f"{label}: {f['ok']}/{f['sources']} sources ok in {f['seconds']:.1f}s "
            f"({f['rate_per_s']:.0f}/s); peak RSS {f['peak']['rss_kib']} KiB, VmHWM {hwm} KiB")
        if f["ok"] != f["sources"]:
            failures.append(f"{label}: {f['sources'] - f['ok']} of {f['sources']} sources failed: {f['errors']}")
        return f

    def settle(f, label):
        """After a flood: every connection closed, then the sweep that
        forgets the flood's last source has run and RSS has settled."""
        end = time.monotonic()
        ok, _ = wait_for(lambda: quiet(a), 30)
        if not ok:
            failures.append(f"{label}: connections still open 30 s after the flood: {snapshot(a)}")
        f["after"] = snapshot(a)
        # A source is forgotten 2T after its hit: a flood longer than 2T has
        # had its oldest sources swept before it ended.
        f["tracked_at_end"] = min(f["sources"], round(f["sources"] * 2 * T / f["seconds"]))
        # The sweep runs every 10 s, so the one that forgets the last source
        # has run by 2T + 10 s after the flood (1 s margin for moat's clock).
        # Then RSS must settle: unchanged (within 256 KiB) for 3 s.
        sweep_due = end + 2 * T + 10 + 1
        log(f"{label}: after (connections closed, per-client state still tracked): "
            f"RSS {f['after']['rss_kib']} KiB, tasks {f['after']['moat_runtime_tasks']:.0f}, "
            f"fds {f['after']['moat_process_open_fds']:.0f}; the last source is swept by "
            f"{2 * T + 11:g}s after the flood, then RSS should settle (deadline 30s more)")
        timeline = f["timeline"] = []  # (s after the flood, VmRSS, RssAnon), every 5 s
        recent = []

        def swept():
            now = time.monotonic()
            st = status_all(a.pid)
            if not timeline or now - end >= timeline[-1][0] + 5:
                timeline.append((round(now - end), st["VmRSS"], st["RssAnon"]))
            if now < sweep_due:
                return False
            recent.append(st["VmRSS"])
            del recent[:-4]
            return len(recent) == 4 and max(recent) - min(recent) <= 256

        settled, _ = wait_for(swept, sweep_due + 30 - time.monotonic(), 1.0)
        f["after_gc"] = snapshot(a)
        f["after_gc"]["seconds_after_flood"] = time.monotonic() - end
        f["after_gc"]["settled"] = settled
        log(f"{label}: after the sweep ({f['after_gc']['seconds_after_flood']:.0f}s after the flood"
            f"{'' if settled else ', RSS still moving'}): RSS {f['after_gc']['rss_kib']} KiB, "
            f"tasks {f['after_gc']['moat_runtime_tasks']:.0f}, fds {f['after_gc']['moat_process_open_fds']:.0f}")

    # Warm-up from other addresses (127.254.x.y): one-time allocations
    # (device connection pool, audit buffers, worker thread caches) are
    # not per source.
    run_flood(ipaddress.IPv4Address("127.254.0.0"), a.warmup, "warm-up")
    wait_for(lambda: quiet(a), 30)
    res["before"] = before = snapshot(a)
    log(f"before: RSS {before['rss_kib']} KiB, VmHWM {before['hwm_kib']} KiB, tasks "
        f"{before['moat_runtime_tasks']:.0f}, fds {before['moat_process_open_fds']:.0f}")

    res["flood"] = f = run_flood(base, a.sources, "flood")
    settle(f, "flood")
    # VmRSS and VmHWM come from per-thread counters that the kernel syncs
    # lazily: either can be the higher by a little.
    peak = f["peak"]["top_kib"] = max(f["peak"]["hwm_kib"], f["peak"]["rss_kib"])
    growth = peak - before["rss_kib"]
    freed = f["after"]["rss_kib"] - f["after_gc"]["rss_kib"]
    res["growth_kib"] = growth
    res["bytes_per_source_peak"] = growth * 1024 / a.sources
    res["bytes_per_source_swept"] = freed * 1024 / f["tracked_at_end"]
    if f["tracked_at_end"] < a.sources:
        log(f"note: the flood took {f['seconds']:.0f}s, longer than 2T = {2 * T:g}s: about "
            f"{a.sources - f['tracked_at_end']} of its oldest sources were swept before it ended, "
            f"so fewer than {a.sources} were tracked at the peak (slow host? raise T with FLOOD_CONN_RATE/FLOOD_REQ_RATE)")
    log(f"peak growth {growth} KiB = {res['bytes_per_source_peak']:.0f} B per source (bound {a.bound_kib:.0f} KiB); "
        f"freed by the sweep {freed} KiB = {res['bytes_per_source_swept']:.0f} B per source still tracked "
        f"({f['tracked_at_end']}); after the sweep {f['after_gc']['rss_kib'] - before['rss_kib']} KiB above the start")
    if growth > a.bound_kib:
        failures.append(f"peak RSS grew {growth} KiB under the flood, above the bound of {a.bound_kib:.0f} KiB "
                        f"({res['bytes_per_source_peak']:.0f} B per source)")
    if f["after_gc"]["rss_kib"] > peak + a.slack_kib:
        failures.append(f"RSS kept growing after the flood: {f['after_gc']['rss_kib']} KiB once the sweep of idle "
                        f"per-client state had run, more than {a.slack_kib:.0f} KiB above the flood's peak of {peak} KiB")
    for g in ("moat_runtime_tasks", "moat_process_open_fds"):
        if f["after_gc"][g] > before[g] + 5:
            failures.append(f"{g} {f['after_gc'][g]:.0f} after the sweep, {before[g]:.0f} before the flood")

    # Fresh addresses after the sweep: per-source state that was freed is
    # reused, so a later wave does not peak above the first flood. Had the
    # first flood's state never been freed, the limiter maps would have to
    # grow for the new sources on top of it (50k sources more: ~13 MiB).
    res["waves"] = []
    for k in range(a.waves):
        label = f"wave {k + 2}"
        b = base + a.sources + k * wave_n
        w = run_flood(b, wave_n, label)
        res["waves"].append(w)
        wpeak = w["peak"]["top_kib"] = max(w["peak"]["hwm_kib"], w["peak"]["rss_kib"])
        if wpeak > peak + a.slack_kib:
            failures.append(f"{label} of {wave_n} fresh sources peaked at {wpeak} KiB, more than {a.slack_kib:.0f} KiB "
                            f"above the first flood's {peak} KiB: per-source memory is not reused (never freed?)")
        if k == a.waves - 1:
            # The last wave's own sweep adds nothing the first one did not show.
            wait_for(lambda: quiet(a), 30)
            w["after"] = snapshot(a)
        else:
            settle(w, label)
            if w["after_gc"]["rss_kib"] > peak + a.slack_kib:
                failures.append(f"{label}: {w['after_gc']['rss_kib']} KiB after its sweep, more than "
                                f"{a.slack_kib:.0f} KiB above the first flood's peak of {peak} KiB")

    m = metrics(a.admin)
    res["audit_dropped"] = m.get("moat_audit_dropped_total", m.get("moat_audit_dropped", 0))
    if res["audit_dropped"]:
        failures.append(f"moat dropped {res['audit_dropped']:.0f} audit events")
    res["scrape_errors"] = sampler.scrape_errors
    res["failures"] = failures
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    for x in failures:
        log("FAIL: " + x)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
