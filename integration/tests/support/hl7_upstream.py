#!/usr/bin/python3
"""An HL7 MLLP device for the HL7 guard suite, on python3-hl7's asyncio server.

Usage: hl7_upstream.py READY_FILE LOG_FILE

Listens on 127.0.0.1 (a free port), then writes the port to READY_FILE
(atomically: a temporary file renamed into place). Every connection and
every message is appended to LOG_FILE, one line each, flushed at once:

    CONN <n>              connection n accepted
    MSG <n> <hex>         a complete MLLP block (between 0x0B and 0x1C 0x0D)
    PARTIAL <n> <hex>     bytes left without an end block at EOF
    ERR <n> <text>        a block python3-hl7 refused (no start byte, too long)
    RESET <n> <text>      the connection was reset
    EOF <n>               connection n closed

Each message is answered with python3-hl7's own `create_ack()` (AA).
"""

import asyncio
import os
import sys

import hl7
from hl7.mllp import InvalidBlockError, start_hl7_server


def main():
    ready, log_path = sys.argv[1], sys.argv[2]
    log = open(log_path, "a", encoding="ascii")
    counter = [0]

    def record(line):
        log.write(line + "\n")
        log.flush()

    async def on_client(reader, writer):
        counter[0] += 1
        n = counter[0]
        record(f"CONN {n}")
        try:
            while True:
                try:
                    block = await reader.readblock()
                except asyncio.IncompleteReadError as e:
                    if e.partial:
                        record(f"PARTIAL {n} {e.partial.hex()}")
                    break
                except (InvalidBlockError, ValueError) as e:
                    record(f"ERR {n} {type(e).__name__}: {e}")
                    break
                record(f"MSG {n} {block.hex()}")
                try:
                    message = hl7.parse(block.decode("latin-1"))
                    ack = message.create_ack()
                except Exception as e:  # not HL7: say so, answer nothing
                    record(f"ERR {n} unparseable: {e}")
                    continue
                writer.writemessage(ack)
                await writer.drain()
        except ConnectionError as e:
            # moat closing with the device's ACK unread resets: not garbage.
            record(f"RESET {n} {type(e).__name__}")
        finally:
            record(f"EOF {n}")
            writer.close()

    async def serve():
        server = await start_hl7_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with open(ready + ".tmp", "w", encoding="ascii") as f:
            f.write(f"{port}\n")
        os.rename(ready + ".tmp", ready)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
