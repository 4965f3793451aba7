#!/usr/bin/env python3
"""Checks a chaos run's history against casd's invariants, prints a summary table, draws the timeline.

  chaos_check.py HISTORY FAULTS [--svg FILE] [--ttl SECONDS]

Invariants (architecture.md), checked over the whole history:
  I1  no service ticket is validated successfully twice;
  I2  no acknowledged session is lost: created while the cluster was whole (every node up and in every view for a
      few seconds) and never logged out, it still gives SSO on every node after the final heal (the faults take at
      most one node down at a time, so it always keeps a copy);
  I3  no node gives SSO for a session whose logout was acknowledged, once healed (unless the logout was made during
      a cut on a node killed before the heal: the only copy of its tombstone may have died with it);
  I4  no ticket is accepted after its lifetime;
  C   after the final heal, all nodes agree on every session.
Exits 1 on any violation, 0 otherwise.
"""
import argparse
import collections
import html
import json
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cut_at(faults, t):
    """Whether some partition or isolation was in force at time t."""
    active = False
    for f in sorted(faults, key=lambda f: f['t']):
        if f['t'] > t:
            break
        if f['fault'] in ('isolate', 'partition', 'block', 'slow'):
            active = True
        elif f['fault'] == 'heal':
            active = False
    return active


SETTLE_S = 3.0  # failure detection (about 1.5 s) plus a few gossip rounds: how long views take to agree again


def whole_at(faults, t):
    """Whether every node was up and in every view at time t: no cut in force, no node down, and no fault or heal
    in the last SETTLE_S seconds (right after a heal or restart, views still lag, and a write may reach fewer
    nodes)."""
    cut, down, last = False, set(), float('-inf')
    for f in sorted(faults, key=lambda f: f['t']):
        if f['t'] > t:
            break
        last = f['t']
        if f['fault'] in ('isolate', 'partition', 'block', 'slow'):
            cut = True
        elif f['fault'] == 'heal':
            cut = False
        elif f['fault'] == 'kill':
            down.update(f['nodes'])
        elif f['fault'] == 'restart':
            down.difference_update(f['nodes'])
    return not cut and not down and t - last > SETTLE_S


def lost_with_a_crash(faults, node, t):
    """Whether a removal acknowledged by `node` at time t, while the cluster was cut, may have died with it: the
    node was killed before the next heal, so the tombstone may have existed nowhere else (the same durability
    bound as for a session: a write lives while a node that got it does)."""
    if not cut_at(faults, t):
        return False
    for f in sorted(faults, key=lambda f: f['t']):
        if f['t'] <= t:
            continue
        if f['fault'] == 'heal':
            return False
        if f['fault'] == 'kill' and node in f['nodes']:
            return True
    return False


def check(history, faults, ttl):
    violations = []
    issued = {}
    for e in history:
        if e['op'] in ('login', 'sso', 'proxy') and e.get('ok') and e.get('st'):
            issued[e['st']] = e['end']
    wins = collections.defaultdict(list)
    for e in history:
        if e['op'] == 'validate' and e.get('ok'):
            wins[e['st']].append(e)
            born = issued.get(e['st'])
            if born is not None and e['start'] > born + ttl + 2:
                violations.append(('I4', f"{e['st'][:12]}… accepted {e['start'] - born:.1f} s after issue on node {e['node']}"))
    for st, ws in wins.items():
        if len(ws) > 1:
            violations.append(('I1', f"{st[:12]}… validated {len(ws)} times (nodes {[w['node'] for w in ws]})"))
    logouts = [e for e in history if e['op'] == 'logout' and e.get('ok')]
    logged_out = {e['tgt'] for e in logouts if not lost_with_a_crash(faults, e['node'], e['end'])}
    excused = {e['tgt'] for e in logouts} - logged_out
    logout_tried = {e['tgt'] for e in history if e['op'] == 'logout'}
    final = collections.defaultdict(dict)
    for e in history:
        if e['op'] == 'final-sso':
            final[e['tgt']][e['node']] = e.get('ok', False)
    created = {e['tgt']: e['end'] for e in history if e['op'] == 'login' and e.get('ok')}
    for tgt, answers in final.items():
        if len(set(answers.values())) > 1:
            violations.append(('C', f"{tgt[:12]}… nodes disagree after the heal: {answers}"))
        if tgt in logged_out and any(answers.values()):
            violations.append(('I3', f"{tgt[:12]}… logged out, yet SSO on nodes {[n for n, ok in answers.items() if ok]}"))
        if (tgt in created and tgt not in logout_tried and whole_at(faults, created[tgt])
                and not any(answers.values())):
            violations.append(('I2', f"{tgt[:12]}… created while the cluster was whole, never logged out, lost"))
    if excused:
        print(f'note: {len(excused)} logout(s) made during a cut on a node killed before the heal are not checked '
              'for I3 (their tombstone may have died with that node)')
    return violations


def summary(history, faults, violations):
    ops = collections.Counter((e['op'], 'ok' if e.get('ok') else 'failed') for e in history)
    kinds = sorted({op for op, _ in ops})
    lines = ['| operation | ok | failed |', '|---|---:|---:|']
    lines += [f"| {k} | {ops[(k, 'ok')]} | {ops[(k, 'failed')]} |" for k in kinds]
    lines += ['', '| fault | count |', '|---|---:|']
    lines += [f'| {k} | {n} |' for k, n in sorted(collections.Counter(f['fault'] for f in faults).items())]
    lines += ['', '| invariant | violations |', '|---|---:|']
    counts = collections.Counter(v for v, _ in violations)
    lines += [f'| {k} | {counts[k]} |' for k in ('I1', 'I2', 'I3', 'I4', 'C')]
    return '\n'.join(lines)


def timeline(history, faults, path):
    events = [e for e in history if e['op'] != 'final-sso']
    if not events:
        return
    t0 = min(e['start'] for e in events)
    t1 = max(max(e['end'] for e in events), max((f['t'] for f in faults), default=t0))
    nodes = sorted({e['node'] for e in events})
    width, left, row = 1000, 70, 34
    height = 60 + row * len(nodes) + 30
    x = lambda t: left + (t - t0) / max(t1 - t0, 1e-9) * (width - left - 20)
    y = {n: 40 + i * row for i, n in enumerate(nodes)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="20" font-size="14" font-weight="bold">chaos run: requests per node (green ok, red failed), faults shaded</text>']
    state = {}
    for f in sorted(faults, key=lambda f: f['t']) + [{'t': t1, 'fault': 'end', 'nodes': []}]:
        for (kind, n), since in list(state.items()):
            if f['fault'] in ('heal', 'end') or (f['fault'] == 'restart' and n in f['nodes'] and kind == 'kill'):
                rows = nodes if n == 'all' else [n]
                colour = '#f3c6c6' if kind == 'kill' else '#fde7b0'
                for r in rows:
                    if r in y:
                        out.append(f'<rect x="{x(since):.1f}" y="{y[r] - 12}" width="{max(x(f["t"]) - x(since), 1):.1f}" height="{row - 8}" fill="{colour}"/>')
                del state[(kind, n)]
        if f['fault'] in ('isolate', 'kill', 'partition', 'block', 'slow'):
            for n in f['nodes'] or ['all']:
                state.setdefault((f['fault'], n), f['t'])
    for n in nodes:
        out.append(f'<text x="10" y="{y[n] + 4}">node {n}</text>')
    for e in events:
        colour = '#2e9e4f' if e.get('ok') else '#d63a3a'
        out.append(f'<line x1="{x(e["start"]):.1f}" x2="{x(e["start"]):.1f}" y1="{y[e["node"]] - 8}" y2="{y[e["node"]] + 8}" stroke="{colour}" stroke-width="0.6"/>')
    out.append(f'<text x="{left}" y="{height - 10}">0 s</text><text x="{width - 60}" y="{height - 10}">{t1 - t0:.0f} s</text>')
    out.append('<text x="300" y="{0}" >{1}</text>'.format(height - 10, html.escape('yellow: cut off / partitioned, pink: killed')))
    out.append('</svg>')
    with open(path, 'w') as f:
        f.write('\n'.join(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument('history')
    p.add_argument('faults')
    p.add_argument('--svg')
    p.add_argument('--ttl', type=float, default=10.0)
    args = p.parse_args()
    history, faults = load(args.history), load(args.faults)
    violations = check(history, faults, args.ttl)
    print(summary(history, faults, violations))
    for inv, text in violations[:50]:
        print(f'VIOLATION {inv}: {text}')
    if args.svg:
        timeline(history, faults, args.svg)
    print(f'chaos-check: {len(history)} operations, {len(faults)} faults, {len(violations)} violations')
    sys.exit(1 if violations else 0)


if __name__ == '__main__':
    main()
