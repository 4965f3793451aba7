#!/usr/bin/env python3
"""A minimal CAS browser for the netns lab (stdlib only, bounded timeouts), as a command and as a module that
scripts/chaos_clients.py builds on. Run inside a host's namespace.

  lab_client.py login  BASE SERVICE        -> prints the TGC value after a password login
  lab_client.py sso    BASE SERVICE TGC    -> prints 'ticket ST-...' (SSO) or 'form' (no session)
  lab_client.py logout BASE TGC            -> prints the HTTP status
  lab_client.py validate BASE SERVICE ST   -> prints 'yes USER' or 'no'
"""
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT = 4


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def fetch(url, data=None, cookie=None):
    """(status, headers, body); status 0 when the node could not be reached (refused, reset, timeout)."""
    req = urllib.request.Request(url, data=data)
    if cookie:
        req.add_header('Cookie', f'TGC={cookie}')
    try:
        with OPENER.open(req, timeout=TIMEOUT) as r:
            return r.status, r.headers, r.read().decode(errors='replace')
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode(errors='replace')
    except Exception as e:
        return 0, {}, type(e).__name__


def login_url(base, service):
    return f'{base}/login?service={urllib.parse.quote(service, safe="")}'


def login(base_form, base_post, service):
    """Password login: the form from one node, the POST to another (as a round-robin balancer would)."""
    status, _, page = fetch(login_url(base_form, service))
    lt = re.search(r'name="lt" value="(LT-[A-Za-z0-9-]+)"', page) if status == 200 else None
    if not lt:
        return {'ok': False, 'status': status}
    form = urllib.parse.urlencode({'username': 'casuser', 'password': 'Mellon', 'lt': lt.group(1), 'service': service})
    status, headers, _ = fetch(f'{base_post}/login', data=form.encode())
    cookie = re.search(r'TGC=(TGT-[A-Za-z0-9-]+)', (headers.get('Set-Cookie') or '') if status else '')
    ticket = re.search(r'ticket=(ST-[A-Za-z0-9-]+)', (headers.get('Location') or '') if status else '')
    if status == 302 and cookie and ticket:
        return {'ok': True, 'tgt': cookie.group(1), 'st': ticket.group(1)}
    return {'ok': False, 'status': status}


def sso(base, service, tgt):
    status, headers, _ = fetch(login_url(base, service), cookie=tgt)
    ticket = re.search(r'ticket=(ST-[A-Za-z0-9-]+)', (headers.get('Location') or '') if status else '')
    if status == 302 and ticket:
        return {'ok': True, 'st': ticket.group(1)}
    return {'ok': False, 'status': status, 'form': status == 200}


def validate(base, service, ticket, endpoint='serviceValidate', pgt_url=None):
    params = {'service': service, 'ticket': ticket}
    if pgt_url:
        params['pgtUrl'] = pgt_url
    status, _, body = fetch(f'{base}/{endpoint}?{urllib.parse.urlencode(params)}')
    user = re.search(r'<cas:user>([^<]*)</cas:user>', body)
    code = re.search(r'code="([A-Z_]+)"', body)
    iou = re.search(r'<cas:proxyGrantingTicket>(PGTIOU-[A-Za-z0-9-]+)<', body)
    return {'ok': bool(user), 'status': status, 'code': code.group(1) if code else None,
            'user': user.group(1) if user else None, 'iou': iou.group(1) if iou else None}


def logout(base, tgt):
    status = fetch(f'{base}/logout', cookie=tgt)[0]
    return {'ok': status == 200, 'status': status}


def main(cmd, *args):
    if cmd == 'login':
        base, service = args
        r = login(base, base, service)
        print(r['tgt'] if r['ok'] else f"failed {r['status']}")
    elif cmd == 'sso':
        r = sso(*args)
        print(f"ticket {r['st']}" if r['ok'] else 'form')
    elif cmd == 'logout':
        print(logout(*args)['status'])
    elif cmd == 'validate':
        r = validate(*args)
        print(f"yes {r['user']}" if r['ok'] else 'no')
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(*sys.argv[1:])
