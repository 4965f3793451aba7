#!/usr/bin/env python3
"""A minimal CAS browser for the netns lab (stdlib only, bounded timeouts). Run inside a host's namespace.

  lab-client.py login  BASE SERVICE        -> prints the TGC value after a password login
  lab-client.py sso    BASE SERVICE TGC    -> prints 'ticket ST-...' (SSO) or 'form' (no session)
  lab-client.py logout BASE TGC            -> prints the HTTP status
  lab-client.py validate BASE SERVICE ST   -> prints 'yes USER' or 'no'
"""
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT = 5


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


opener = urllib.request.build_opener(NoRedirect)


def fetch(url, data=None, cookie=None):
    req = urllib.request.Request(url, data=data)
    if cookie:
        req.add_header('Cookie', f'TGC={cookie}')
    try:
        with opener.open(req, timeout=TIMEOUT) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def main(cmd, *args):
    if cmd == 'login':
        base, service = args
        _, _, html = fetch(f'{base}/login?service={urllib.parse.quote(service, safe="")}')
        lt = re.search(r'name="lt" value="(LT-[A-Za-z0-9-]+)"', html).group(1)
        form = urllib.parse.urlencode({'username': 'casuser', 'password': 'Mellon', 'lt': lt, 'service': service})
        status, headers, _ = fetch(f'{base}/login', data=form.encode())
        cookie = re.search(r'TGC=(TGT-[A-Za-z0-9-]+)', headers.get('Set-Cookie') or '')
        print(cookie.group(1) if status == 302 and cookie else f'failed {status}')
    elif cmd == 'sso':
        base, service, tgc = args
        status, headers, _ = fetch(f'{base}/login?service={urllib.parse.quote(service, safe="")}', cookie=tgc)
        ticket = re.search(r'ticket=(ST-[A-Za-z0-9-]+)', headers.get('Location') or '')
        print(f'ticket {ticket.group(1)}' if status == 302 and ticket else 'form')
    elif cmd == 'logout':
        base, tgc = args
        print(fetch(f'{base}/logout', cookie=tgc)[0])
    elif cmd == 'validate':
        base, service, st = args
        query = urllib.parse.urlencode({'service': service, 'ticket': st})
        body = fetch(f'{base}/validate?{query}')[2].split('\n')
        print(f'yes {body[1]}' if body[0] == 'yes' else 'no')
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(*sys.argv[1:])
