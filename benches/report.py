#!/usr/bin/env python3
"""Turns the figures the benches wrote (target/bench/*.json, see benches/common/figures.rs) into
benches/results/latest.json (every figure, the machine, the commit), one SVG plot per growth
curve in benches/results/, and the generated table of BENCHMARKS.md (between its
`<!-- figures:begin -->` and `<!-- figures:end -->` markers; the prose around them is kept).

    benches/report.py [FIGURES_DIR]      (default: target/bench)

Standard library only. Compare two runs with benches/compare.py.
"""

import datetime
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def sh(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine():
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": sh("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "docker": sh("docker", "version", "--format", "{{.Server.Version}}"),
        "rustc": sh("rustc", "--version"),
    }


def load(figures_dir):
    figures = []
    for path in sorted(Path(figures_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            sys.exit(f"report: cannot read {path}: {error}")
        for figure in data.get("figures", []):
            figure["bench"] = data.get("bench", path.stem)
            figures.append(figure)
    if not figures:
        sys.exit(f"report: no figures in {figures_dir}; run the benches first (benches/run.sh)")
    return figures


def number(value, unit):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}"


def target_text(figure):
    target = figure.get("target")
    if not target:
        return ""
    kind, value, unit = target["kind"], target["value"], figure["unit"]
    return {
        "ratio_at_most": f"≤ {value:.2f}x",
        "at_most": f"≤ {number(value, unit)}",
        "at_least": f"≥ {number(value, unit)}",
        "over_baseline_at_most": f"≤ baseline + {number(value, unit)}",
    }.get(kind, kind)


def table(figures):
    rows = [
        "| figure | maxions | baseline (same run) | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        if f.get("series") and not f.get("target"):
            continue  # curves are plotted; their points are in latest.json
        baseline = ""
        if f.get("baseline") is not None:
            baseline = f"{number(f['baseline'], f['unit'])}: {f.get('baseline_what', '')}"
        ratio = f"{f['ratio']:.2f}x" if f.get("ratio") is not None else ""
        met = {True: "met", False: "**not met**", None: ""}[f.get("met")]
        what = f["what"] + (f" ({f['note']})" if f.get("note") else "")
        rows.append(
            f"| {what} | {number(f['value'], f['unit'])} | {baseline} | {ratio} | "
            f"{target_text(f)} | {met} |"
        )
    return "\n".join(rows)


def svg(series, points):
    """A log-log plot of value (and baseline) against x, with a dashed line of slope 1 through
    the first point: a linear curve follows it."""
    width, height, pad = 560, 340, 60
    xs = [p["x"] for p in points]
    values = [p["value"] for p in points] + [p["baseline"] for p in points if p.get("baseline")]
    lo_x, hi_x = math.log10(min(xs)), math.log10(max(xs))
    lo_y, hi_y = math.log10(min(values)), math.log10(max(values))
    if hi_x == lo_x:
        hi_x += 1
    if hi_y == lo_y:
        hi_y += 1
    lo_y, hi_y = lo_y - 0.1, hi_y + 0.1

    def px(x):
        return pad + (math.log10(x) - lo_x) / (hi_x - lo_x) * (width - 2 * pad)

    def py(y):
        return height - pad - (math.log10(y) - lo_y) / (hi_y - lo_y) * (height - 2 * pad)

    unit = points[0]["unit"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{series} '
        f"(log-log; {unit})</text>",
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
    ]
    for x in xs:
        out.append(
            f'<text x="{px(x):.1f}" y="{height - pad + 16}" text-anchor="middle">{x:g}</text>'
        )
    for exp in range(math.floor(lo_y), math.ceil(hi_y) + 1):
        y = 10**exp
        if lo_y <= exp <= hi_y:
            out.append(f'<text x="{pad - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
            out.append(
                f'<line x1="{pad}" y1="{py(y):.1f}" x2="{width - pad}" y2="{py(y):.1f}" '
                f'stroke="#ddd"/>'
            )

    # The extremes too: a curve within one decade would have no label on its axis.
    for y in (min(values), max(values)):
        out.append(f'<text x="{pad - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')

    def line(key, colour, label, row):
        pts = [(p["x"], p[key]) for p in points if p.get(key)]
        if not pts:
            return
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        out.append(
            f'<text x="{pad + 10}" y="{pad + 14 * row}" fill="{colour}">{label}</text>'
        )

    line("value", "#c0392b", "maxions", 1)
    line("baseline", "#2471a3", points[0].get("baseline_what", "baseline"), 2)
    if unit in ("ms", "s") and len(points) > 1:
        x0, y0 = points[0]["x"], points[0]["value"]
        x1 = points[-1]["x"]
        y1 = y0 * x1 / x0
        if lo_y <= math.log10(y1) <= hi_y:
            out.append(
                f'<line x1="{px(x0):.1f}" y1="{py(y0):.1f}" x2="{px(x1):.1f}" y2="{py(y1):.1f}" '
                f'stroke="#999" stroke-dasharray="4 4"/>'
            )
            out.append(f'<text x="{pad + 10}" y="{pad + 42}" fill="#999">linear from the first point</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    figures_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "bench"
    figures = load(figures_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "machine": machine(),
        "figures": figures,
    }
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = []
    curves = {}
    for f in figures:
        if f.get("series"):
            curves.setdefault(f["series"], []).append(f)
    for series, points in sorted(curves.items()):
        points.sort(key=lambda p: p["x"])
        name = series.split(":")[0].strip().replace(" ", "-") + ".svg"
        (RESULTS / name).write_text(svg(series, points))
        plots.append((series, name, points))

    m = report["machine"]
    lines = [
        BEGIN,
        f"Generated by `benches/report.py` on {report['date']} at commit {report['commit']}: "
        f"{m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}, kernel {m['kernel']}, "
        f"Docker {m['docker']}, {m['rustc']}.",
        "",
        table(figures),
        "",
    ]
    for series, name, points in plots:
        growth = ""
        if len(points) > 1 and points[0]["unit"] in ("ms", "s"):
            # The last two points: at scale, where a fixed start-up cost no longer hides the
            # slope.
            before, last = points[-2], points[-1]
            per_before = before["value"] / before["x"]
            per_last = last["value"] / last["x"]
            growth = (
                f" Cost per unit at {last['x']:g}: {per_last / per_before:.2f}x that at "
                f"{before['x']:g} (1.00 = linear)."
            )
        cells = ", ".join(
            f"{p['x']:g}: {number(p['value'], p['unit'])}"
            + (f" ({p['ratio']:.2f}x)" if p.get("ratio") is not None else "")
            for p in points
        )
        lines += [f"**{series}**: {cells}.{growth}", "", f"![{series}](benches/results/{name})", ""]
    lines.append(END)
    generated = "\n".join(lines)
    doc = ROOT / "BENCHMARKS.md"
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        sys.exit(f"report: {doc} has no {BEGIN} … {END} markers")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(head + generated + tail)
    print(f"report: {len(figures)} figures, {len(plots)} plots; wrote {RESULTS / 'latest.json'} and {doc}")
    unmet = [f for f in figures if f.get("met") is False]
    for f in unmet:
        print(f"report: target not met: {f['id']}: {f['what']}")


if __name__ == "__main__":
    main()
