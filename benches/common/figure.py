#!/usr/bin/env python3
"""The shell benches' side of benches/common/figures.rs: the same JSON, the same ratio rule.

    figure.py add FILE id=… what=… unit=… value=N [baseline=N baseline_what=…]
              [target=KIND:N] [series=… x=N] [note=…]
        appends one figure to FILE (JSON lines)
    figure.py write FILE BENCH     writes $MAXIONS_BENCH_DIR/BENCH.json (default target/bench)
    figure.py median FILE          prints the median of the numbers in FILE, one per line
"""

import json
import os
import statistics
import sys
from pathlib import Path

NUMBERS = ("value", "baseline", "x")


def add(path, pairs):
    figure = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key in NUMBERS:
            figure[key] = float(value)
        elif key == "target":
            kind, _, limit = value.partition(":")
            figure["target"] = {"kind": kind, "value": float(limit)}
        else:
            figure[key] = value
    value, baseline = figure["value"], figure.get("baseline")
    if baseline is not None:
        rate = "/" in figure["unit"]
        if rate and value > 0:
            figure["ratio"] = baseline / value
        elif not rate and baseline > 0:
            figure["ratio"] = value / baseline
    target = figure.get("target")
    if target:
        kind, limit = target["kind"], target["value"]
        met = {
            "ratio_at_most": lambda: figure["ratio"] <= limit,
            "at_most": lambda: value <= limit,
            "at_least": lambda: value >= limit,
            "over_baseline_at_most": lambda: value - baseline <= limit,
        }[kind]
        try:
            figure["met"] = bool(met())
        except (KeyError, TypeError):
            pass
    with open(path, "a") as out:
        out.write(json.dumps(figure) + "\n")


def write(path, bench):
    figures = [json.loads(line) for line in open(path) if line.strip()]
    root = Path(__file__).resolve().parent.parent.parent
    out_dir = Path(os.environ.get("MAXIONS_BENCH_DIR") or root / "target" / "bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{bench}.json"
    out.write_text(json.dumps({"bench": bench, "figures": figures}, indent=2) + "\n")
    print(f"figures: {out}")


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "add":
        add(args[0], args[1:])
    elif command == "write":
        write(args[0], args[1])
    elif command == "median":
        print(statistics.median(float(l) for l in open(args[0]) if l.strip()))
    else:
        sys.exit(f"figure.py: unknown command {command}")


if __name__ == "__main__":
    main()
