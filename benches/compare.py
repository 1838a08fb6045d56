#!/usr/bin/env python3
"""Compares two benchmark runs (benches/results/latest.json files, or the figures directory of
one run) figure by figure, and names what got slower.

    benches/compare.py OLD NEW [--threshold PERCENT] [--fail]

A figure counts as slower when its cost grew by more than the threshold (default 10 %): for a
time, a larger value; for a rate (a unit with a `/`), a smaller one. Ratios against a baseline of the same
run are compared too: they move less with the machine's load than raw values, so a change that
shows in the ratio and not only in the value is the one to believe. With --fail, exits 1 when
anything got slower. Standard library only.
"""

import argparse
import json
import sys
from pathlib import Path


def load(path):
    path = Path(path)
    if path.is_dir():
        figures = []
        for file in sorted(path.glob("*.json")):
            data = json.loads(file.read_text())
            figures += data.get("figures", [])
        return {f["id"]: f for f in figures}
    data = json.loads(path.read_text())
    return {f["id"]: f for f in data.get("figures", [])}


def cost_change(old, new, unit):
    """New cost over old, minus one (positive = slower)."""
    if not old or not new:
        return None
    return (old / new if "/" in unit else new / old) - 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--threshold", type=float, default=10.0)
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args()
    old, new = load(args.old), load(args.new)
    slower = []
    print(f"{'figure':<34} {'old':>12} {'new':>12} {'cost':>8} {'ratio old→new':>18}")
    for key in sorted(old.keys() | new.keys()):
        if key not in old or key not in new:
            print(f"{key:<34} {'only in ' + ('new' if key in new else 'old'):>34}")
            continue
        a, b = old[key], new[key]
        change = cost_change(a["value"], b["value"], b["unit"])
        ratios = ""
        if a.get("ratio") is not None and b.get("ratio") is not None:
            ratios = f"{a['ratio']:.2f}x → {b['ratio']:.2f}x"
        mark = ""
        ratio_change = None
        if a.get("ratio") and b.get("ratio"):
            ratio_change = b["ratio"] / a["ratio"] - 1
        if change is not None and change * 100 > args.threshold:
            both = ratio_change is None or ratio_change * 100 > args.threshold
            mark = "  SLOWER" if both else "  slower (value only: machine load?)"
            if both:
                slower.append(key)
        print(
            f"{key:<34} {a['value']:>9.2f} {a['unit'][:3]:<3}"
            f"{b['value']:>9.2f} {b['unit'][:3]:<3}"
            f"{'' if change is None else f'{change * 100:+.0f} %':>7} {ratios:>18}{mark}"
        )
    if slower:
        print(f"\n{len(slower)} figure(s) slower by more than {args.threshold:g} %: {', '.join(slower)}")
    else:
        print(f"\nnothing slower by more than {args.threshold:g} %")
    if args.fail and slower:
        sys.exit(1)


if __name__ == "__main__":
    main()
