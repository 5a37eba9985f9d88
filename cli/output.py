"""Printing: aligned tables for people, JSON for programs."""
import json
import sys


def table(rows, headers):
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*headers).rstrip())
    for r in rows:
        print(fmt.format(*r).rstrip())


def emit(obj, as_json: bool, human):
    if as_json:
        json.dump(obj, sys.stdout, indent=1, sort_keys=True)
        print()
    else:
        human(obj)
