#!/usr/bin/env python3
"""Turns the benches' Markdown output into docs/bench-report.md and an SVG latency chart (stdlib only).

Usage: bench-report.py RAW_OUTPUT OUT_DIR
"""
import datetime
import html
import math
import os
import platform
import re
import subprocess
import sys

UNITS = {'ns': 1e-3, 'µs': 1.0, 'us': 1.0, 'ms': 1e3, 's': 1e6}


def micros(text):
    m = re.fullmatch(r'\s*([0-9.]+)\s*(ns|µs|us|ms|s)\s*', text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def machine():
    cpu = 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), cpu)
    except OSError:
        pass
    try:
        with open('/proc/meminfo') as f:
            mem_kb = int(next(l for l in f if l.startswith('MemTotal')).split()[1])
        mem = f'{mem_kb / 1024 / 1024:.0f} GiB'
    except (OSError, StopIteration):
        mem = 'unknown memory'
    rustc = subprocess.run(['rustc', '--version'], capture_output=True, text=True).stdout.strip()
    return f'{os.cpu_count()} cores ({cpu}), {mem}, {platform.system()} {platform.release()}, {rustc}'


def latency_rows(raw):
    """(section, operation, p50 µs, p99 µs) for every table row with latencies."""
    rows, section = [], ''
    for line in raw.splitlines():
        if line.startswith('## '):
            section = line[3:].strip()
        cells = [c.strip() for c in line.strip().strip('|').split('|')] if line.startswith('|') else []
        if len(cells) == 5 and micros(cells[3]) is not None and micros(cells[4]) is not None:
            rows.append((section, cells[0], micros(cells[3]), micros(cells[4])))
    return rows


def svg(rows):
    width, left, bar, gap = 980, 430, 11, 10
    height = 50 + len(rows) * (2 * bar + gap)
    top = max(p99 for *_, p99 in rows) if rows else 10.0
    # Log scale: the figures span microseconds (a ping-pong) to a tenth of a second (a login with argon2id).
    scale = (width - left - 150) / math.log10(top * 1.5)

    def length(us):
        return max(math.log10(max(us, 1.0)) * scale, 1.0)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="20" font-size="14" font-weight="bold">casd latency per operation (p50 dark, p99 light; log scale, microseconds)</text>']
    y = 40
    for section, op, p50, p99 in rows:
        label = html.escape(f'{op} [{section.split("(")[0].replace("casd", "").strip()}]')
        out.append(f'<text x="{left - 6}" y="{y + bar + 3}" text-anchor="end">{label[:75]}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{length(p50):.1f}" height="{bar}" fill="#1f5fbf"/>')
        out.append(f'<rect x="{left}" y="{y + bar}" width="{length(p99):.1f}" height="{bar}" fill="#9ec0f5"/>')
        out.append(f'<text x="{left + length(p99) + 4:.1f}" y="{y + bar + 3}">{p50:,.0f} / {p99:,.0f} µs</text>')
        y += 2 * bar + gap
    out.append('</svg>')
    return '\n'.join(out)


def nodes_svg(points):
    """Throughput against cluster size: validations through the owner-routing front, and ST issue+validate cycles."""
    width, height, left, top, bottom = 640, 340, 70, 40, 50
    ymax = max(max(v, c) for _, v, c in points) * 1.1
    xs = [n for n, _, _ in points]
    x = lambda n: left + (n - min(xs)) / max(max(xs) - min(xs), 1) * (width - left - 40)
    y = lambda v: height - bottom - v / ymax * (height - top - bottom)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="20" font-size="14" font-weight="bold">throughput against nodes (all on this machine\'s cores)</text>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - 20}" y2="{height - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>']
    for i in range(5):
        v = ymax * i / 4
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v / 1000:.0f}k/s</text>')
    for n in xs:
        out.append(f'<text x="{x(n):.1f}" y="{height - bottom + 16}" text-anchor="middle">{n} node{"s" if n > 1 else ""}</text>')
    for idx, (label, colour) in enumerate((('/serviceValidate (owner-routing front)', '#1f5fbf'),
                                           ('ST issue + validate cycle', '#d9822b'))):
        pts = ' '.join(f'{x(p[0]):.1f},{y(p[1 + idx]):.1f}' for p in points)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in points:
            out.append(f'<circle cx="{x(p[0]):.1f}" cy="{y(p[1 + idx]):.1f}" r="3" fill="{colour}"/>')
            out.append(f'<text x="{x(p[0]) + 5:.1f}" y="{y(p[1 + idx]) - 5:.1f}">{p[1 + idx] / 1000:.1f}k</text>')
        out.append(f'<text x="{left + 10}" y="{height - 12 - 14 * (1 - idx)}" fill="{colour}">{label}</text>')
    out.append('</svg>')
    return '\n'.join(out)


def main(raw_path, out_dir):
    with open(raw_path) as f:
        raw = f.read()
    today = datetime.date.today().isoformat()
    report = [
        '# casd benchmark report', '',
        f'Run on {today} by `scripts/bench` on {machine()}.', '',
        'Every figure is measured in the same run as its baseline, on the same machine, by the same client code: the',
        'bare axum handler (`casd-load bare`) for HTTP, one node for clusters, the TCP ping-pong and Redis (primary +',
        'one replica, `SET` + `WAIT 1 0`) for replicated writes. The load client is `casd-load` (Rust, keep-alive,',
        'its own process). All nodes of a cluster, nginx and the load client share the machine\'s cores, so cluster',
        'figures are lower bounds for nodes on their own machines. Server CPU per op is the casd processes\' and',
        'nginx\'s user+system time over the timed part, divided by the operations.', '',
        '![latency chart](bench-latency.svg)', '',
        '![nodes chart](bench-nodes.svg)', '',
        raw.strip(), '',
    ]
    with open(os.path.join(out_dir, 'bench-report.md'), 'w') as f:
        f.write('\n'.join(report))
    with open(os.path.join(out_dir, 'bench-latency.svg'), 'w') as f:
        f.write(svg(latency_rows(raw)))
    nodes = raw_path + '.nodes.json'
    if os.path.exists(nodes):
        import json
        with open(nodes) as f:
            points = json.load(f)
        with open(os.path.join(out_dir, 'bench-nodes.svg'), 'w') as f:
            f.write(nodes_svg(points))


if __name__ == '__main__':
    main(*sys.argv[1:])
