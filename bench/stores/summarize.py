"""Median over rounds of every RESULT figure: python3 summarize.py results-*.txt"""
import re, sys, statistics
from collections import defaultdict
vals = defaultdict(list)
for path in sys.argv[1:]:
    for line in open(path):
        if not line.startswith("RESULT"):
            continue
        f = dict(kv.split("=", 1) for kv in line.split()[1:])
        for k, v in f.items():
            if k not in ("store", "round", "test", "n"):
                try: x = float(v)
                except ValueError: continue
                vals[(f["test"], f["store"], k)].append(x)
for (test, store, k), v in sorted(vals.items()):
    print(f"{test:12} {store:14} {k:24} median={statistics.median(v):>10.2f}  runs={[round(x) for x in v]}")
