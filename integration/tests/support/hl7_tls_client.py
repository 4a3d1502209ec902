#!/usr/bin/python3
"""An HL7 MLLP sender over TLS, on python3-hl7's asyncio client.

Usage: hl7_tls_client.py HOST PORT CA_FILE SERVER_NAME MESSAGES_FILE

MESSAGES_FILE holds one message per line, JSON-encoded (segments separated
by "\\r"). Each is sent in its own MLLP block over one TLS connection
(verified against CA_FILE for SERVER_NAME), and its ACK is awaited before
the next; each ACK is printed on stdout as one JSON string per line. Exits
non-zero if the handshake fails or an ACK does not come within 10 s.
"""

import asyncio
import json
import ssl
import sys

from hl7.mllp import open_hl7_connection


async def run(host, port, ca, name, path):
    with open(path, encoding="utf-8") as f:
        messages = [json.loads(line) for line in f if line.strip()]
    ctx = ssl.create_default_context(cafile=ca)
    reader, writer = await asyncio.wait_for(
        open_hl7_connection(host, port, ssl=ctx, server_hostname=name), 10
    )
    print(json.dumps(writer.get_extra_info("ssl_object").version()), flush=True)
    for m in messages:
        writer.writeblock(m.encode("latin-1"))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readblock(), 10)
        print(json.dumps(ack.decode("latin-1")), flush=True)
    writer.close()


def main():
    host, port, ca, name, path = sys.argv[1:6]
    asyncio.run(run(host, int(port), ca, name, path))


if __name__ == "__main__":
    main()
