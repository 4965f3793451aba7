#!/usr/bin/env python3
"""Drives a running casd with python-cas (PyPI `python-cas`), an unmodified third-party CAS client.

Usage: python_cas_flow.py BASE_URL      (e.g. http://127.0.0.1:8080/cas)
       with CASD_INTEROP_TLS_CERT and CASD_INTEROP_TLS_KEY: PEM files of a certificate for 127.0.0.1 under a private CA
       the server trusts (tls.client.extra_ca_file), for the https single-logout receiver. The server must allow
       remember-me (tickets.remember_me).

A requests.Session plays the browser; a local http.server plays the application (its URL is the service and it
receives single-logout POSTs). For CAS 1.0, 2.0, 3.0 and SAML 1.1 it logs in (password first, SSO after), validates
with python-cas, checks the user and attributes, checks the ticket cannot be validated twice, then logs out and checks
python-cas accepts the single-logout request for the service's most recent ticket. Prints one line per check and a closing
'N passed, N failed' line; exits non-zero on any failure.
"""
import http.server
import os
import re
import ssl
import sys
import threading
import time
import urllib.parse

import requests
from cas import CASClient, CASClientV3

BASE = sys.argv[1].rstrip('/') + '/'
USER, PASSWORD = 'casuser', 'Mellon'

slo_bodies = []


class App(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get('Content-Length', 0))
        slo_bodies.append(self.rfile.read(length).decode())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), App)
threading.Thread(target=server.serve_forever, daemon=True).start()
SERVICE = f'http://127.0.0.1:{server.server_port}/app'
# SAML 1.1 releases attributes only to an https TARGET (CAS 3.0 §4.2); its validation never calls the service.
SAML_SERVICE = f'https://127.0.0.1:{server.server_port}/app'

browser = requests.Session()
results = []


def check(name, ok, detail=''):
    results.append(bool(ok))
    print(('ok   ' if ok else 'FAIL ') + name + ('' if ok else f' -- {detail}'), flush=True)


def ticket_from(response):
    location = response.headers.get('Location', '')
    query = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)
    return query.get('ticket', [None])[0]


def obtain_ticket(client, first_login):
    response = browser.get(client.get_login_url(), allow_redirects=False)
    if first_login:
        lt = re.search(r'name="lt" value="(LT-[A-Za-z0-9-]+)"', response.text)
        check('login form carries a login ticket', lt, response.text[:200])
        form = {'username': USER, 'password': PASSWORD, 'lt': lt.group(1), 'service': SERVICE}
        response = browser.post(BASE + 'login', data=form, allow_redirects=False)
    check(f'redirect back to the service (status {response.status_code})', response.status_code == 302)
    return ticket_from(response)


issued = []
for n, version in enumerate([1, 2, 3, 'CAS_2_SAML_1_0']):
    service = SAML_SERVICE if version == 'CAS_2_SAML_1_0' else SERVICE
    client = CASClient(version=version, service_url=service, server_url=BASE)
    ticket = obtain_ticket(client, first_login=(n == 0))
    check(f'v{version}: got a service ticket', ticket and ticket.startswith('ST-'), ticket)
    issued.append(ticket)
    user, attributes, pgtiou = client.verify_ticket(ticket)
    check(f'v{version}: python-cas validates the ticket as {USER}', user == USER, (user, attributes))
    if version in (3, 'CAS_2_SAML_1_0'):
        attributes = attributes or {}
        check(f'v{version}: single-valued attribute', attributes.get('mail') == 'casuser@example.org', attributes)
        check(f'v{version}: multi-valued attribute as a list', attributes.get('memberOf') == ['staff', 'demo'], attributes)
    if version == 3:
        check('v3: isFromNewLogin is false for an SSO ticket', attributes.get('isFromNewLogin') == 'false', attributes)
    again, _, _ = client.verify_ticket(ticket)
    check(f'v{version}: the same ticket does not validate twice', again is None, again)

saml_http = CASClient(version='CAS_2_SAML_1_0', service_url=SERVICE, server_url=BASE)
ticket = obtain_ticket(saml_http, first_login=False)
issued.append(ticket)
user, attributes, _ = saml_http.verify_ticket(ticket)
check('SAML to an http service: the user, and no attributes', user == USER and not attributes, (user, attributes))

v3 = CASClientV3(service_url=SERVICE, server_url=BASE)
response = browser.get(v3.get_logout_url(redirect_url=SERVICE), allow_redirects=False)
check('logout redirects to the registered service', response.status_code == 302
      and response.headers.get('Location') == SERVICE, response.headers)

deadline = time.monotonic() + 10
while not slo_bodies and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)  # room for any (wrong) extra request to arrive
# The http service got four tickets; like Apereo, casd tracks the most recent ticket per service for single logout.
# (The https SAML service is this same plain-http server: its logout request fails at the TLS handshake.)
check(f'one logout request for the http service ({len(slo_bodies)})', len(slo_bodies) == 1, slo_bodies)
logout_request = urllib.parse.parse_qs(slo_bodies[0]).get('logoutRequest', [''])[0] if slo_bodies else ''
check('python-cas accepts the logout request for the most recent ticket',
      CASClientV3.verify_logout_request(logout_request, issued[-1]), logout_request)
check('python-cas refuses it for an older ticket', not CASClientV3.verify_logout_request(logout_request, issued[0]))

response = browser.get(v3.get_login_url(), allow_redirects=False)
check('after logout the login form is shown again', response.status_code == 200 and 'name="password"' in response.text)



def wait_for(bodies, count):
    deadline = time.monotonic() + 10
    while len(bodies) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(bodies) >= count


def logout_request_of(body):
    return urllib.parse.parse_qs(body).get('logoutRequest', [''])[0]


# The REST protocol. python-cas has no REST client, so plain HTTP with Apereo's expectations, and python-cas for
# what follows: the ticket's validation and the single logout that the REST logout sends.
rest = requests.Session()
r = rest.post(BASE + 'v1/tickets', data={'username': USER, 'password': 'wrong'}, allow_redirects=False)
check(f'REST: a wrong password is 401 ({r.status_code})', r.status_code == 401)
r = rest.post(BASE + 'v1/tickets', data={'username': USER, 'password': PASSWORD}, allow_redirects=False)
tgt_url = r.headers.get('Location', '')
check(f'REST: 201 Created with the TGT URL ({r.status_code})', r.status_code == 201 and '/v1/tickets/TGT-' in tgt_url,
      r.headers)
r = rest.post(tgt_url, data={'service': SERVICE})
rest_st = r.text.strip()
check(f'REST: the TGT URL gives a service ticket ({r.status_code})', r.status_code == 200 and rest_st.startswith('ST-'),
      r.text[:200])
user, attributes, _ = CASClientV3(service_url=SERVICE, server_url=BASE).verify_ticket(rest_st)
check('REST: python-cas validates the REST ticket', user == USER and (attributes or {}).get('mail'), (user, attributes))
before = len(slo_bodies)
r = rest.delete(tgt_url)
check(f'REST: DELETE ends the session ({r.status_code})', r.status_code == 200)
check('REST: the DELETE sends single logout', wait_for(slo_bodies, before + 1))
check('REST: python-cas accepts that logout request',
      len(slo_bodies) > before and CASClientV3.verify_logout_request(logout_request_of(slo_bodies[before]), rest_st))
check('REST: the TGT is gone', rest.get(tgt_url).status_code == 404)


def password_login(session, service, extra=None):
    form_page = session.get(BASE + 'login', params={'service': service}, allow_redirects=False)
    lt = re.search(r'name="lt" value="(LT-[A-Za-z0-9-]+)"', form_page.text).group(1)
    form = {'username': USER, 'password': PASSWORD, 'lt': lt, 'service': service, **(extra or {})}
    return session.post(BASE + 'login', data=form, allow_redirects=False)


def restarted(session):
    """A browser restarted: only the cookies with an expiry survive."""
    after = requests.Session()
    for c in session.cookies:
        if c.expires is not None:
            after.cookies.set_cookie(c)
    return after


# Remember-me: the cookie outlives the browser; a plain login's does not.
remembered = requests.Session()
r = password_login(remembered, SERVICE, {'rememberMe': 'true'})
check('remember-me: the login redirects with a ticket', r.status_code == 302 and ticket_from(r))
after = restarted(remembered)
check('remember-me: the cookie is persistent', len(after.cookies) >= 1, list(remembered.cookies))
r = after.get(BASE + 'login', params={'service': SERVICE}, allow_redirects=False)
ticket = ticket_from(r)
check(f'remember-me: SSO after a browser restart ({r.status_code})', r.status_code == 302 and ticket)
user, attributes, _ = CASClientV3(service_url=SERVICE, server_url=BASE).verify_ticket(ticket)
check('remember-me: python-cas sees longTermAuthenticationRequestTokenUsed',
      user == USER and (attributes or {}).get('longTermAuthenticationRequestTokenUsed') == 'true', attributes)
plain = requests.Session()
password_login(plain, SERVICE)
r = restarted(plain).get(BASE + 'login', params={'service': SERVICE}, allow_redirects=False)
check('without remember-me a restarted browser is asked again', r.status_code == 200 and 'name="password"' in r.text)

# Single logout over https to an application behind a private CA (tls.client.extra_ca_file on the server).
cert, key = os.environ.get('CASD_INTEROP_TLS_CERT'), os.environ.get('CASD_INTEROP_TLS_KEY')
check('https receiver: certificate given', cert and key)
if cert and key:
    https_bodies = []

    class HttpsApp(App):
        def do_POST(self):
            length = int(self.headers.get('Content-Length', 0))
            https_bodies.append(self.rfile.read(length).decode())
            self.send_response(200)
            self.end_headers()

    https_server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), HttpsApp)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    https_server.socket = context.wrap_socket(https_server.socket, server_side=True)
    threading.Thread(target=https_server.serve_forever, daemon=True).start()
    secure = f'https://127.0.0.1:{https_server.server_port}/secure-app'
    b = requests.Session()
    secure_ticket = ticket_from(password_login(b, secure))
    user, _, _ = CASClientV3(service_url=secure, server_url=BASE).verify_ticket(secure_ticket)
    check('https app: python-cas validates its ticket', user == USER, user)
    b.get(BASE + 'logout', allow_redirects=False)
    check('https app: the logout request arrives over TLS', wait_for(https_bodies, 1))
    check('https app: python-cas accepts it', https_bodies and
          CASClientV3.verify_logout_request(logout_request_of(https_bodies[0]), secure_ticket), https_bodies)

passed, failed = results.count(True), results.count(False)
print(f'{passed} passed, {failed} failed')
sys.exit(1 if failed else 0)
