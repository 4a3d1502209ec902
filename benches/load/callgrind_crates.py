#!/usr/bin/env python3
"""Instructions per request by crate: where a proxy's user-space work goes.

    python3 benches/load/callgrind_crates.py A B REQUESTS

A and B are dumps of the same process after two loads that differ by
REQUESTS requests (instructions.sh writes them); the self cost of the
difference is summed by the crate (or C library) each function belongs to.
Standard library only.
"""
import collections
import importlib.util
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("callgrind_diff", os.path.join(HERE, "callgrind_diff.py"))
diff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diff)

# The first matching pattern names the group; Rust generics are named by
# the impl's type (`<hyper::… as tokio::…>` belongs to hyper).
GROUPS = [
    ("memcpy/memmove/memset (libc)", r"^__(memcpy|memmove|memset|mempcpy)"),
    ("allocator (mimalloc, malloc)", r"^(_?mi_|mi_|malloc|free|realloc|calloc|_int_|__libc_)"),
    ("TLS: rustls", r"^<?rustls|^<?tokio_rustls"),
    ("TLS: AES-GCM, hashing (aws-lc)", r"aws_lc|^<?aws_lc_rs|^aes_|^gcm_|^aead_"),
    ("moat", r"^<?moat::|^core::ptr::drop_in_place<moat"),
    ("hyper, hyper-util", r"^<?hyper(_util)?::|^core::ptr::drop_in_place<hyper"),
    ("h2", r"^<?h2::|^core::ptr::drop_in_place<h2"),
    ("http (HeaderMap, names)", r"^<?http::|^core::ptr::drop_in_place<http::"),
    ("httparse", r"^<?httparse"),
    ("tokio, tokio-util", r"^<?tokio(_util)?::|^core::ptr::drop_in_place<tokio"),
    ("bytes", r"^<?bytes::"),
    ("Rust core/alloc/std", r"^<?(core|alloc|std)::"),
    ("nginx", r"^ngx_"),
]


def group_of(name):
    for label, pat in GROUPS:
        if re.search(pat, name):
            return label
    # Debian's nginx, HAProxy and OpenSSL are stripped: their functions
    # show as addresses. Only moat's figures break down in full.
    return "other (C code, or no symbol)"


def main():
    a, b, n = diff.self_cost(sys.argv[1]), diff.self_cost(sys.argv[2]), float(sys.argv[3])
    d = collections.Counter(b)
    d.subtract(a)
    by = collections.Counter()
    for k, v in d.items():
        by[group_of(k)] += v
    total = sum(by.values())
    print(f"per request: {total / n:.0f} instructions")
    for label, v in by.most_common():
        print(f"{v / n:8.0f} {v / total * 100:5.1f} %  {label}")


if __name__ == "__main__":
    main()
