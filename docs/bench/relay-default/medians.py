"""Medians across `glasswing bench datapath --quick` runs: kernel against engine, per metric and
topology (the tcp rows). Usage: python3 medians.py run1.json run2.json run3.json
(the bench.json of each run). The default relay is the "mesh" row: kernel when the run also
has "mesh engine", else engine."""
import json, statistics, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
defaults = []
rows = {}
for r in runs:
    have = {x["path"] for x in r["results"]}
    default = "kernel" if "mesh engine" in have else "engine"  # the default relay is the "mesh" row
    defaults.append(default)
    for x in r["results"]:
        if x["mode"] not in ("tcp", "-"):
            continue
        path = {"mesh": default, "mesh engine": "engine", "mesh kernel": "kernel"}.get(x["path"], x["path"])
        rows.setdefault((x["metric"], x["topology"], path), []).append(x["median"])
order = list(dict.fromkeys((m, t) for m, t, _ in rows))
print("defaults per run:", defaults)
print(f"{'metric':24} {'topology':10} {'path':13} {'median':>10} {'min':>10} {'max':>10}  runs")
for m, t in order:
    for p in ("direct", "kernel", "engine", "haproxy", "haproxy pair"):
        v = rows.get((m, t, p))
        if v:
            print(f"{m:24} {t:10} {p:13} {statistics.median(v):10.2f} {min(v):10.2f} {max(v):10.2f}  {' '.join(f'{x:.2f}' for x in v)}")
    k, e = (statistics.median(rows[(m, t, p)]) for p in ("kernel", "engine"))
    print(f"{'':24} {'':10} {'kernel/engine':13} {k / e:10.2f}")
