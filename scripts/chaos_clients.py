#!/usr/bin/env python3
"""The chaos run's clients (run inside the lab's client namespace by scripts/chaos). Stdlib only.

Each worker plays a browser and its applications against random nodes, as a round-robin load balancer would send
them: log in (form on one node, POST on another), get service tickets by SSO, validate each ticket, sometimes twice
at once on two nodes, and sometimes log out. With --front, 40 % of the requests after the login go through it
instead (nginx with owner routing, recorded as node 0); logins stay direct, so that I2 knows each session's
issuer. After a logout it sometimes tries the old cookie again on some node
(I3 during the run), and now and then it holds a service ticket past its lifetime before validating it (I4).
Every request is recorded, with its timing, as one JSON line.

  chaos_clients.py --nodes N --seed S --duration SECONDS --history FILE [--workers W] [--ttl SECONDS] [--front URL]
  chaos_clients.py --nodes N --final --round R --history FILE   (after the heal: ask every node about every session)
"""
import argparse
import json
import os
import random
import re
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab_client  # noqa: E402  (the shared CAS browser)

SERVICE = 'http://198.51.100.250:9/app'
BACKEND = 'http://198.51.100.250:9/backend'
PGTS = {}  # pgtIou -> pgtId, filled by the proxy callback server
LOCK = threading.Lock()
FRONT = None  # the nginx front's CAS URL (node 0), when there is one


def base(node):
    return FRONT if node == 0 else f'http://198.51.100.{node}:8080/cas'


class History:
    def __init__(self, path):
        self.file = open(path, 'a', buffering=1)

    def record(self, **event):
        with LOCK:
            self.file.write(json.dumps(event) + '\n')


def op(history, worker, node, kind, call, **args):
    start = time.time()
    result = call()
    history.record(worker=worker, node=node, op=kind, start=start, end=time.time(), **args, **result)
    return result


def login(node_form, node_post):
    return lab_client.login(base(node_form), base(node_post), SERVICE)


def sso(node, tgt):
    return lab_client.sso(base(node), SERVICE, tgt)


def validate(node, st):
    return lab_client.validate(base(node), SERVICE, st)


def validate_with_callback(node, st, pgt_url):
    r = lab_client.validate(base(node), SERVICE, st, pgt_url=pgt_url)
    with LOCK:
        r['pgt'] = PGTS.get(r['iou']) if r['iou'] else None
    return r


def proxy(node, pgt):
    query = urllib.parse.urlencode({'pgt': pgt, 'targetService': BACKEND})
    status, _, body = lab_client.fetch(f'{base(node)}/proxy?{query}')
    pt = re.search(r'<cas:proxyTicket>(PT-[A-Za-z0-9-]+)<', body)
    return {'ok': bool(pt), 'status': status, 'st': pt.group(1) if pt else None}


def proxy_validate(node, pt):
    return lab_client.validate(base(node), BACKEND, pt, endpoint='proxyValidate')


def serve_callbacks(addr, cert, key):
    """The proxy's pgtUrl: an HTTPS server that remembers pgtIou -> pgtId and answers 200."""
    import http.server
    import ssl

    class Callback(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            if 'pgtIou' in q and 'pgtId' in q:
                with LOCK:
                    PGTS[q['pgtIou'][0]] = q['pgtId'][0]
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((addr, 8443), Callback)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f'https://{addr}:8443/pgtCallback'


def logout(node, tgt):
    """A logout is ok when confirmed (200); 202 means the node ended it but the logout quorum did not confirm it."""
    r = lab_client.logout(base(node), tgt)
    r['unconfirmed'] = r['status'] == 202
    return r


def worker(args, w, history, deadline):
    rng = random.Random(args.seed * 1000 + w)
    direct = list(range(1, args.nodes + 1))

    def pick():
        """A node for the next request: through the front (node 0) 40 % of the time when there is one."""
        return 0 if FRONT and rng.random() < 0.4 else rng.choice(direct)

    tgt = None
    held = []  # (due, st): service tickets kept past their lifetime on purpose
    while time.time() < deadline:
        if held and held[0][0] <= time.time():
            _, old = held.pop(0)
            n = pick()
            op(history, w, n, 'validate', lambda: validate(n, old), st=old, held=True)
            continue
        if tgt is None:
            a, b = rng.choice(direct), rng.choice(direct)
            r = op(history, w, b, 'login', lambda: login(a, b), form_node=a)
            if r['ok']:
                tgt = r['tgt']
                n = pick()
                op(history, w, n, 'validate', lambda n=n, st=r['st']: validate(n, st), st=r['st'], tgt=tgt)
            else:
                time.sleep(0.2)
            continue
        roll = rng.random()
        if roll < 0.08:
            n = pick()
            r = op(history, w, n, 'logout', lambda: logout(n, tgt), tgt=tgt)
            if rng.random() < 0.5:
                # The old cookie again, on any node: once a confirmed logout has answered, no node that was reachable
                # throughout may give SSO for it.
                time.sleep(rng.uniform(0, 0.5))
                m = pick()
                op(history, w, m, 'sso-after-logout', lambda: sso(m, tgt), tgt=tgt, confirmed=r['ok'])
            tgt = None
            continue
        n = pick()
        r = op(history, w, n, 'sso', lambda: sso(n, tgt), tgt=tgt)
        if not r['ok']:
            if r.get('form'):
                tgt = None  # the session is gone (expired or logged out elsewhere): log in again
            continue
        st = r['st']
        if roll > 0.97 and len(held) < 3:
            held.append((time.time() + args.ttl + 3, st))
            continue
        if args.pgt_url and roll > 0.85:
            # A proxy: validate with a callback, get a PGT, ask another node for a PT, validate that on a third.
            m = pick()
            v = op(history, w, m, 'validate', lambda: validate_with_callback(m, st, args.pgt_url), st=st, tgt=tgt)
            if v['ok'] and v.get('pgt'):
                m = pick()
                r = op(history, w, m, 'proxy', lambda: proxy(m, v['pgt']), tgt=tgt)
                if r['ok']:
                    pt = r['st']
                    pair = rng.sample(direct, 2) if len(direct) > 1 else (m, m)
                    threads = [threading.Thread(target=lambda k=k: op(history, w, k, 'validate', lambda: proxy_validate(k, pt), st=pt, tgt=tgt))
                               for k in pair]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
            continue
        if roll < 0.35:
            # Two applications validate the same ticket at once on two nodes: at most one may win.
            n1, n2 = rng.sample(direct, 2) if len(direct) > 1 else (n, n)
            n1 = pick() if rng.random() < 0.5 else n1
            threads = [threading.Thread(target=lambda m=m: op(history, w, m, 'validate', lambda: validate(m, st), st=st, tgt=tgt))
                       for m in (n1, n2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            m = pick()
            op(history, w, m, 'validate', lambda: validate(m, st), st=st, tgt=tgt)
        time.sleep(rng.uniform(0, 0.05))


def final(args, history):
    """After the final heal: every node is asked about every session seen in the run (run twice, some seconds
    apart, by scripts/chaos: a session that comes back after the first round is caught by the second)."""
    sessions = set()
    with open(args.history) as f:
        for line in f:
            e = json.loads(line)
            if e.get('tgt') and e.get('op') in ('login', 'sso', 'logout'):
                sessions.add(e['tgt'])
    for tgt in sorted(sessions):
        for n in range(1, args.nodes + 1):
            op(history, 'final', n, 'final-sso', lambda n=n, t=tgt: sso(n, t), tgt=tgt, round=args.round)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--nodes', type=int, required=True)
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--duration', type=float, default=60)
    p.add_argument('--workers', type=int, default=6)
    p.add_argument('--history', required=True)
    p.add_argument('--final', action='store_true')
    p.add_argument('--round', type=int, default=1)
    p.add_argument('--ttl', type=float, default=10.0, help="the nodes' service ticket lifetime")
    p.add_argument('--front', default=None, help='the nginx front\'s CAS URL')
    p.add_argument('--callback', nargs=3, metavar=('ADDR', 'CERT', 'KEY'), help='serve a pgtUrl here')
    args = p.parse_args()
    global FRONT
    FRONT = args.front
    args.pgt_url = serve_callbacks(*args.callback) if args.callback else None
    history = History(args.history)
    if args.final:
        final(args, history)
        return
    deadline = time.time() + args.duration
    threads = [threading.Thread(target=worker, args=(args, w, history, deadline)) for w in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == '__main__':
    main()
