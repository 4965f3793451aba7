#!/usr/bin/env python3
"""Checks a chaos run's history against casd's invariants, prints a summary table, draws the timeline.

  chaos_check.py HISTORY FAULTS [--journal FILE ...] [--svg FILE] [--ttl SECONDS]

Invariants (architecture.md), checked over the whole history:
  I1  no service or proxy ticket is validated successfully twice. Counted from the nodes' own journals of
      successful consumes (--journal, `lab.consume_journal`), so a success whose client timed out still counts;
      every success a client saw must also be in a journal.
  I2  no acknowledged session is lost: every session whose login succeeded and that was never logged out gives SSO
      on every node after the final heal. The one exception is the durability bound of a memory-only registry: the
      session was made while its issuer could reach no other node (cut off from all of them, or before the heal
      took effect: HEAL_EFFECT_S after it), and the issuer died before the heal took effect. With --durable (the
      nodes kept journals under durability sync) there is no exception, whole-cluster restarts and power losses
      included.
  I3  no node gives SSO for a session whose logout was confirmed (200): after the final heal, on every node, in
      both final rounds; and during the run, when the old cookie is tried again while the cluster was whole from
      the logout to the retry. Unconfirmed logouts (202) are counted apart.
  I4  no ticket is accepted after its lifetime (clients hold some tickets past it on purpose).
  C   after the final heal, all nodes agree on every session, in both rounds.
Exits 1 on any violation, 0 otherwise.
"""
import argparse
import collections
import hashlib
import html
import json
import sys

SETTLE_S = 3.0  # failure detection (about 1.5 s) plus a few gossip rounds: how long views take to agree again
HEAL_EFFECT_S = 2.0  # from a heal command until the nodes see each other again and one repair round has run
CUTS = ('isolate', 'partition', 'block')


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cut_pairs(f, nodes):
    """The (from, to) directions a cut fault drops, from its recorded groups or targets."""
    if f['fault'] == 'partition':
        groups = f.get('groups') or []
        return {(a, b) for g in groups for h in groups if g is not h for a in g for b in h}
    if f['fault'] == 'isolate':
        (x,) = f['nodes']
        return {(x, o) for o in nodes if o != x} | {(o, x) for o in nodes if o != x}
    if f['fault'] == 'block':
        return {(f['from'], f['to'])}
    return set()


def isolated_intervals(faults, nodes):
    """For each node, the intervals during which it could send to no other node: from the cut that isolated it
    until HEAL_EFFECT_S after the heal that ended it."""
    out = collections.defaultdict(list)
    pairs, since = set(), {}
    for f in sorted(faults, key=lambda f: f['t']):
        if f['fault'] in CUTS:
            pairs |= cut_pairs(f, nodes)
        elif f['fault'] == 'heal':
            pairs = set()
        alone = {n for n in nodes if all((n, o) in pairs for o in nodes if o != n)} if len(nodes) > 1 else set()
        for n in alone - since.keys():
            since[n] = f['t']
        for n in list(since):
            if n not in alone:
                out[n].append((since.pop(n), f['t'] + HEAL_EFFECT_S))
    for n, t in since.items():
        out[n].append((t, float('inf')))
    return out


def killed_between(faults, node, t0, t1):
    return any(f['fault'] == 'kill' and node in f['nodes'] and t0 <= f['t'] <= t1 for f in faults)


def quiet_between(faults, t0, t1):
    """Whether no fault was in force or happened from SETTLE_S before t0 until t1: the cluster was whole."""
    cut, down = False, set()
    for f in sorted(faults, key=lambda f: f['t']):
        if f['t'] > t1:
            break
        if f['t'] >= t0 - SETTLE_S:
            return False
        if f['fault'] in CUTS + ('slow',):
            cut = True
        elif f['fault'] == 'heal':
            cut = False
        elif f['fault'] == 'kill':
            down.update(f['nodes'])
        elif f['fault'] == 'restart':
            down.difference_update(f['nodes'])
    return not cut and not down


def ticket_hash(st):
    return hashlib.sha256(st.encode()).hexdigest()


def check(history, faults, journals, ttl, durable=False):
    violations, notes = [], []
    # The casd nodes; node 0 is the nginx front, which no fault touches.
    nodes = sorted({e['node'] for e in history if isinstance(e.get('node'), int) and e['node'] > 0})
    issued = {}
    for e in history:
        if e['op'] in ('login', 'sso', 'proxy') and e.get('ok') and e.get('st'):
            issued[e['st']] = e['end']
    seen_ok = collections.defaultdict(list)
    for e in history:
        if e['op'] == 'validate' and e.get('ok'):
            seen_ok[e['st']].append(e)
            born = issued.get(e['st'])
            if born is not None and e['start'] > born + ttl + 2:
                violations.append(('I4', e['node'], e['start'],
                                   f"{e['st'][:12]}… accepted {e['start'] - born:.1f} s after issue on node {e['node']}"))
    via_front = [e for e in history if e.get('node') == 0]
    notes.append(f'{len(via_front)} request(s) through the nginx front, '
                 f'{sum(1 for e in via_front if e["op"] == "validate" and e.get("ok"))} of them successful validations')
    held = [e for e in history if e['op'] == 'validate' and e.get('held')]
    notes.append(f'{len(held)} ticket(s) held past their lifetime and validated (I4)')
    # I1 from the servers' journals.
    consumed = collections.defaultdict(list)
    for lines in journals:
        for line in lines:
            parts = line.split()
            if len(parts) == 3:
                consumed[parts[0]].append((parts[1], int(parts[2]) / 1000))
    for h, wins in consumed.items():
        if len(wins) > 1:
            violations.append(('I1', None, wins[1][1], f"ticket {h[:12]}… consumed {len(wins)} times (nodes {[n for n, _ in wins]})"))
    for st, ws in seen_ok.items():
        if journals and ticket_hash(st) not in consumed:
            violations.append(('I1', ws[0]['node'], ws[0]['start'], f"{st[:12]}… validated but in no node's journal"))
        if len(ws) > 1 and not journals:
            violations.append(('I1', ws[1]['node'], ws[1]['start'], f"{st[:12]}… validated {len(ws)} times"))
    if journals:
        unseen = sum(1 for h in consumed if h not in {ticket_hash(st) for st in seen_ok})
        notes.append(f'{sum(len(w) for w in consumed.values())} successful consume(s) in the journals, '
                     f'{unseen} of them never seen by a client (timed out or held)')
    # I3 and I2.
    logouts = [e for e in history if e['op'] == 'logout']
    confirmed = {e['tgt']: e for e in logouts if e.get('ok')}
    unconfirmed = {e['tgt'] for e in logouts if e.get('unconfirmed')} - confirmed.keys()
    logout_tried = {e['tgt'] for e in logouts}
    notes.append(f'{len(confirmed)} confirmed logout(s) checked for I3, {len(unconfirmed)} unconfirmed (202) '
                 'counted apart')
    for e in history:
        if e['op'] == 'sso-after-logout' and e.get('ok') and e['tgt'] in confirmed:
            out = confirmed[e['tgt']]
            if quiet_between(faults, out['start'], e['end']):
                violations.append(('I3', e['node'], e['start'],
                                   f"{e['tgt'][:12]}… SSO on node {e['node']} {e['start'] - out['end']:.2f} s after "
                                   f"its confirmed logout on node {out['node']}, the cluster whole throughout"))
    final = collections.defaultdict(lambda: collections.defaultdict(dict))
    for e in history:
        if e['op'] == 'final-sso':
            final[e.get('round', 1)][e['tgt']][e['node']] = e.get('ok', False)
    created = {e['tgt']: e for e in history if e['op'] == 'login' and e.get('ok')}
    alone = isolated_intervals(faults, nodes)
    excused = 0
    t_end = max((e['end'] for e in history), default=0)
    for rnd, sessions in sorted(final.items()):
        for tgt, answers in sessions.items():
            if len(set(answers.values())) > 1:
                violations.append(('C', None, t_end, f"round {rnd}: {tgt[:12]}… nodes disagree after the heal: {answers}"))
            if tgt in confirmed and any(answers.values()):
                violations.append(('I3', None, t_end, f"round {rnd}: {tgt[:12]}… logged out (confirmed), yet SSO on "
                                   f"nodes {[n for n, ok in answers.items() if ok]}"))
            if tgt in created and tgt not in logout_tried and not all(answers.values()):
                login = created[tgt]
                issuer, t = login['node'], login['end']
                # Under durability sync the issuer's own disk held the session before the login answered: nothing
                # excuses a loss, not even every node dying at once (issue 14).
                if not durable and any(a <= t <= b and killed_between(faults, issuer, t, b)
                                       for a, b in alone.get(issuer, [])):
                    excused += rnd == 1
                    continue
                violations.append(('I2', issuer, t, f"round {rnd}: {tgt[:12]}… acknowledged by node {issuer}, never "
                                   f"logged out, no SSO on nodes {[n for n, ok in answers.items() if not ok]}"))
    # Stops of the whole cluster, by kind (a rolling restart counts one per node it stopped).
    whole = collections.Counter(f['whole_cluster'] for f in faults if f.get('whole_cluster') and f['fault'] == 'kill')
    if durable:
        notes.append(f'{len(created)} acknowledged session(s) under durability sync, none excused; node stops of '
                     f'whole-cluster faults: {dict(whole) or "none"}')
    else:
        notes.append(f'{len(created)} acknowledged session(s); {excused} lost within the durability bound (made while '
                     'the issuer was cut off from every node, the issuer killed before the heal took effect)')
    return violations, notes


def summary(history, faults, violations):
    ops = collections.Counter((e['op'], 'ok' if e.get('ok') else 'failed') for e in history)
    kinds = sorted({op for op, _ in ops})
    lines = ['| operation | ok | failed |', '|---|---:|---:|']
    lines += [f"| {k} | {ops[(k, 'ok')]} | {ops[(k, 'failed')]} |" for k in kinds]
    lines += ['', '| fault | count |', '|---|---:|']
    lines += [f'| {k} | {n} |' for k, n in sorted(collections.Counter(f['fault'] for f in faults).items())]
    lines += ['', '| invariant | violations |', '|---|---:|']
    counts = collections.Counter(v[0] for v in violations)
    lines += [f'| {k} | {counts[k]} |' for k in ('I1', 'I2', 'I3', 'I4', 'C')]
    return '\n'.join(lines)


COLOURS = {'kill': '#f2a7a7', 'slow': '#a9c8f0', 'block': '#e9d27a'}
SIDES = ['#fde7b0', '#c9e8c4', '#e3cdf2', '#f7c9de']


def timeline(history, faults, violations, path):
    """One row per node: requests as ticks (green ok, red failed); kills shaded from kill to restart; each side of a
    partition in its own colour with its letter; one-way blocks on the sender's row with their target; slow nodes
    in blue; violations as black crosses on their row (on every row when no node is to blame)."""
    events = [e for e in history if e['op'] not in ('final-sso',) and isinstance(e.get('node'), int)]
    if not events:
        return
    t0 = min(e['start'] for e in events)
    t1 = max(max(e['end'] for e in events), max((f['t'] for f in faults), default=t0))
    nodes = sorted({e['node'] for e in events})
    width, left, row = 1100, 70, 34
    height = 70 + row * len(nodes) + 50
    x = lambda t: left + (min(max(t, t0), t1) - t0) / max(t1 - t0, 1e-9) * (width - left - 20)
    y = {n: 40 + i * row for i, n in enumerate(nodes)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="20" font-size="14" font-weight="bold">chaos run: requests per node (green ok, red failed) and faults</text>']

    bands = []  # kills are drawn over cuts, so that both stay visible where they overlap

    def band(n, a, b, colour, label=''):
        if n not in y:
            return
        top = colour == COLOURS['kill']
        if top:  # a bar under the row, over the requests: a killed node's row is full of red ticks
            bands.append((True, f'<rect x="{x(a):.1f}" y="{y[n] + 9}" width="{max(x(b) - x(a), 1.5):.1f}" height="5" fill="#b01c1c"/>'))
        else:
            bands.append((False, f'<rect x="{x(a):.1f}" y="{y[n] - 13}" width="{max(x(b) - x(a), 1.5):.1f}" height="{row - 8}" fill="{colour}"/>'))
        if label:
            bands.append((True, f'<text x="{x(a) + 2:.1f}" y="{y[n] + (-15 if top else 14)}" font-size="9" fill="{"#b01c1c" if top else "#555"}">{html.escape(label)}</text>'))

    ordered = sorted(faults, key=lambda f: f['t'])
    open_cuts, open_slow, down = [], {}, {}
    for f in ordered + [{'t': t1, 'fault': 'end', 'nodes': []}]:
        if f['fault'] in ('heal', 'end'):
            for c in open_cuts:
                if c['fault'] == 'partition':
                    for i, g in enumerate(c.get('groups') or []):
                        for n in g:
                            band(n, c['t'], f['t'], SIDES[i % len(SIDES)], 'ABCD'[i % 4])
                elif c['fault'] == 'isolate':
                    band(c['nodes'][0], c['t'], f['t'], SIDES[0], 'alone')
                elif c['fault'] == 'block':
                    band(c['from'], c['t'], f['t'], COLOURS['block'], f"↛{c['to']}")
            open_cuts = []
            for n, since in open_slow.items():
                band(n, since, f['t'], COLOURS['slow'], 'slow')
            open_slow = {}
        if f['fault'] in CUTS:
            open_cuts.append(f)
        elif f['fault'] == 'slow':
            open_slow.setdefault(f['nodes'][0], f['t'])
        elif f['fault'] == 'kill':
            for n in f['nodes']:
                down[n] = f['t']
        elif f['fault'] in ('restart', 'end'):
            for n in (f['nodes'] if f['fault'] == 'restart' else list(down)):
                if n in down:
                    band(n, down.pop(n), f['t'], COLOURS['kill'], 'killed')
    out.extend(svg for top, svg in bands if not top)
    for n in nodes:
        out.append(f'<text x="10" y="{y[n] + 4}">{"nginx front" if n == 0 else f"node {n}"}</text>')
    for e in events:
        colour = '#2e9e4f' if e.get('ok') else '#d63a3a'
        out.append(f'<line x1="{x(e["start"]):.1f}" x2="{x(e["start"]):.1f}" y1="{y[e["node"]] - 8}" y2="{y[e["node"]] + 8}" stroke="{colour}" stroke-width="0.6"/>')
    out.extend(svg for top, svg in bands if top)
    for inv, node, t, _ in violations:
        for n in ([node] if node in y else nodes):
            cx, cy = x(t), y[n]
            out.append(f'<path d="M{cx - 5:.1f},{cy - 5} L{cx + 5:.1f},{cy + 5} M{cx - 5:.1f},{cy + 5} L{cx + 5:.1f},{cy - 5}" stroke="black" stroke-width="2"/>')
            out.append(f'<text x="{cx + 6:.1f}" y="{cy - 6}" font-size="9" font-weight="bold">{inv}</text>')
    axis = 40 + row * len(nodes)
    out.append(f'<line x1="{left}" x2="{width - 20}" y1="{axis}" y2="{axis}" stroke="#333"/>')
    span = t1 - t0
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if span / s <= 15)
    k = 0
    while k * step <= span:
        tx = x(t0 + k * step)
        out.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{axis}" y2="{axis + 5}" stroke="#333"/>')
        out.append(f'<text x="{tx - 6:.1f}" y="{axis + 17}">{k * step} s</text>')
        k += 1
    legend = [(SIDES[0], 'partition side A / isolated'), (SIDES[1], 'side B'), (COLOURS['block'], 'one-way block'),
              (COLOURS['slow'], 'slow'), ('#b01c1c', 'killed (bar under the row)')]
    lx = left
    for colour, text in legend:
        out.append(f'<rect x="{lx}" y="{height - 22}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{lx + 16}" y="{height - 12}">{html.escape(text)}</text>')
        lx += 40 + 7 * len(text)
    out.append(f'<text x="{lx}" y="{height - 12}">✕ violation</text>')
    out.append('</svg>')
    with open(path, 'w') as f:
        f.write('\n'.join(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument('history')
    p.add_argument('faults')
    p.add_argument('--journal', action='append', default=[], help="a node's lab.consume_journal")
    p.add_argument('--svg')
    p.add_argument('--ttl', type=float, default=10.0)
    p.add_argument('--durable', action='store_true',
                   help='the nodes kept journals under durability sync: no acknowledged session may be lost, ever')
    args = p.parse_args()
    history, faults = load(args.history), load(args.faults)
    journals = []
    for path in args.journal:
        try:
            with open(path) as f:
                journals.append(f.read().splitlines())
        except FileNotFoundError:
            journals.append([])
    violations, notes = check(history, faults, journals, args.ttl, args.durable)
    print(summary(history, faults, violations))
    for note in notes:
        print(f'note: {note}')
    for inv, _, _, text in violations[:50]:
        print(f'VIOLATION {inv}: {text}')
    if args.svg:
        timeline(history, faults, violations, args.svg)
    print(f'chaos-check: {len(history)} operations, {len(faults)} faults, {len(violations)} violations')
    sys.exit(1 if violations else 0)


if __name__ == '__main__':
    main()
