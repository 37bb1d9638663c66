#!/usr/bin/env python3
"""Corpus minimization from afl-showmap traces: cmin.py TRACES INPUTS OUT.

TRACES holds one `afl-showmap -e -i INPUTS -o TRACES` file per input (edge ids, hit counts
ignored). Keeps, for every edge, the smallest input that covers it (afl-cmin's rule), so the
kept set covers every edge the whole queue did. Used instead of afl-cmin: the Python afl-cmin
recorded no edges for these persistent-mode binaries here, and afl-cmin.bash with -e runs the
target once per process per input (minutes per target on a shared 2-core machine).
"""
import os, shutil, sys

traces, inputs, out = sys.argv[1:4]
edges = {}
for name in os.listdir(traces):
    path = os.path.join(inputs, name)
    if not os.path.isfile(path):
        continue
    size = os.path.getsize(path)
    with open(os.path.join(traces, name)) as f:
        for line in f:
            edge = line.split(":", 1)[0]
            best = edges.get(edge)
            if best is None or (size, name) < best:
                edges[edge] = (size, name)
keep = sorted({name for _, name in edges.values()})
os.makedirs(out, exist_ok=True)
for name in keep:
    shutil.copy(os.path.join(inputs, name), os.path.join(out, name))
print(f"{len(edges)} edges, {len(keep)} inputs kept")
