#!/usr/bin/env python3
"""Which functions grew between two callgrind dumps of the same load.

    python3 benches/load/callgrind_diff.py OLD NEW REQUESTS [TOP]
    python3 benches/load/callgrind_diff.py --per-request A B REQUESTS [TOP]

Self cost (instructions spent in the function's own code, not its callees)
per request, summed by function name; prints the TOP (25) that grew most and
the 10 that shrank most. Inlining differs between builds, so read a pair of
lines that move together (one shrinks, a caller or callee grows) as one.
For inclusive costs: callgrind_annotate --inclusive=yes FILE.

--per-request: A and B are dumps of the same process after two loads that
differ by REQUESTS requests (instructions.sh); prints the TOP (25) functions
by self cost per request of the difference, with their share.

--event E[,E...] (first, before the files): count these events instead of
instructions, summed, for dumps made with more of them, e.g. last-level
cache misses `--event ILmr,DLmr,DLmw` of a run with
CALLGRIND_ARGS="--cache-sim=yes --LL=1048576,16,64" instructions.sh.
Standard library only.
"""
import collections
import re
import sys

NAME = re.compile(r"c?fn=\((\d+)\)(?: (.*))?")


EVENTS = ["Ir"]


def self_cost(path):
    names, cost, fn, skip = {}, collections.Counter(), None, False
    columns = [1]  # Ir, the first event, after the position
    for line in open(path, errors="replace"):
        if line.startswith("events:"):
            names_of_events = line.split()[1:]
            missing = [e for e in EVENTS if e not in names_of_events]
            if missing:
                sys.exit(f"{path}: no event {', '.join(missing)} (it has {' '.join(names_of_events)})")
            # +1: the first column of a cost line is its position.
            columns = [names_of_events.index(e) + 1 for e in EVENTS]
        elif line.startswith(("fn=", "cfn=")):
            m = NAME.match(line.rstrip("\n"))
            if m and m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("fn="):
                fn = names[m.group(1)] if m else line[3:].strip()
        elif line.startswith("calls="):
            skip = True  # the next cost line is the call's inclusive cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            if skip:
                skip = False
                continue
            parts = line.split()
            if len(parts) >= 2 and fn is not None:
                # Trailing zero events are left out of a cost line.
                cost[re.sub(r"::h[0-9a-f]{16}$", "", fn)] += sum(
                    int(parts[c]) for c in columns if c < len(parts)
                )
    return cost


def per_request(a, b, n, top):
    d = collections.Counter(b)
    d.subtract(a)
    total = sum(d.values())
    print(f"per request: {total / n:.0f} {'+'.join(EVENTS)} (self cost, by function)")
    for k, v in d.most_common(top):
        value = f"{v / n:8.0f}" if EVENTS == ["Ir"] else f"{v / n:8.1f}"
        print(f"{value} {v / total * 100:5.1f} %  {k[:140]}")


def main():
    global EVENTS
    if sys.argv[1] == "--event":
        EVENTS = sys.argv[2].split(",")
        del sys.argv[1:3]
    if sys.argv[1] == "--per-request":
        a, b, n = self_cost(sys.argv[2]), self_cost(sys.argv[3]), float(sys.argv[4])
        per_request(a, b, n, int(sys.argv[5]) if len(sys.argv) > 5 else 25)
        return
    old, new, n = self_cost(sys.argv[1]), self_cost(sys.argv[2]), float(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    to, tn = sum(old.values()), sum(new.values())
    print(f"per request: old {to / n:.0f}, new {tn / n:.0f}, {(tn - to) / n:+.0f} ({(tn / to - 1) * 100:+.1f} %)")
    d = sorted(((new[k] - old[k]) / n, k) for k in set(old) | set(new))
    print("grew (per request: change, old -> new, function):")
    for v, k in reversed(d[-top:]):
        print(f"{v:+8.0f} {old[k] / n:8.0f} -> {new[k] / n:8.0f}  {k[:140]}")
    print("shrank:")
    for v, k in d[:10]:
        print(f"{v:+8.0f} {old[k] / n:8.0f} -> {new[k] / n:8.0f}  {k[:140]}")


if __name__ == "__main__":
    main()
