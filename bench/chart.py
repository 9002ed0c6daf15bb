#!/usr/bin/env python3
"""Draws a benchmark result (bench/run.sh's JSON) as an SVG: requests per
second and proxy CPU per request for each proxy, HTTP/1.1 and h2c side by
side. Standard library only.

    python3 bench/chart.py results/20261126-150000.json out.svg
"""
import json
import statistics
import sys
from html import escape

W_LABEL, W_BAR, ROW, GAP = 170, 300, 22, 34
COLORS = {"h1": "#3b6fb6", "h2": "#e0882b"}


def medians(target, proto, key):
    runs = [r for r in target["runs"].get(proto, []) if r.get(key) is not None and r.get("rc") == 0]
    return statistics.median(r[key] for r in runs) if runs else None


def panel(x, y, title, rows, unit, lower_is_better):
    """rows: [(label, {proto: value})]"""
    values = [v for _, vs in rows for v in vs.values() if v is not None]
    top = max(values) if values else 1
    out = [f'<text x="{x}" y="{y}" font-weight="bold">{escape(title)}</text>']
    note = "lower is better" if lower_is_better else "higher is better"
    out.append(f'<text x="{x + W_LABEL + W_BAR}" y="{y}" text-anchor="end" fill="#666">{note}</text>')
    y += 12
    for label, vs in rows:
        out.append(f'<text x="{x + W_LABEL - 6}" y="{y + 14}" text-anchor="end">{escape(label)}</text>')
        for i, proto in enumerate(("h1", "h2")):
            v = vs.get(proto)
            if v is None:
                continue
            w = max(1, W_BAR * v / top)
            by = y + i * 10
            out.append(f'<rect x="{x + W_LABEL}" y="{by}" width="{w:.1f}" height="9" fill="{COLORS[proto]}"/>')
            out.append(f'<text x="{x + W_LABEL + w + 4:.1f}" y="{by + 8}" font-size="9">{v:,.{1 if v < 1000 else 0}f} {unit}</text>')
        y += ROW
    return out, y


def main(src, dst):
    data = json.load(open(src))
    targets = [t for t in data["targets"] if not t.get("error")]
    rps = [(t["name"], {p: medians(t, p, "rps") for p in ("h1", "h2")}) for t in targets]
    cpu = [
        (t["name"], {p: medians(t, p, "proxy_us_per_req") for p in ("h1", "h2")})
        for t in targets
        if t["name"] != "ceiling (no proxy)"
    ]
    parts, y = panel(10, 40, "requests per second (median)", rps, "", False)
    more, y = panel(10, y + GAP, "proxy CPU per request, µs (median)", cpu, "µs", True)
    parts += more
    height = y + 30
    width = 10 + W_LABEL + W_BAR + 90
    legend = (
        f'<rect x="{width - 200}" y="8" width="10" height="10" fill="{COLORS["h1"]}"/>'
        f'<text x="{width - 186}" y="17">HTTP/1.1 (wrk)</text>'
        f'<rect x="{width - 100}" y="8" width="10" height="10" fill="{COLORS["h2"]}"/>'
        f'<text x="{width - 86}" y="17">h2c (h2load)</text>'
    )
    cpus = data.get("versions", {}).get("cpus", "")
    caption = f'<text x="10" y="{height - 10}" fill="#666" font-size="10">{escape(data["started"][:16])}, {escape(cpus)}, one proxy core; bench/compare.sh</text>'
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">'
        f'<rect width="100%" height="100%" fill="white"/>{legend}{"".join(parts)}{caption}</svg>\n'
    )
    open(dst, "w").write(svg)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
