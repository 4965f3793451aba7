#!/usr/bin/env python3
"""Drives a running casd with python-cas (PyPI `python-cas`), an unmodified third-party CAS client.

Usage: python_cas_flow.py BASE_URL      (e.g. http://127.0.0.1:8080/cas)

A requests.Session plays the browser; a local http.server plays the application (its URL is the service and it
receives single-logout POSTs). For CAS 1.0, 2.0, 3.0 and SAML 1.1 it logs in (password first, SSO after), validates
with python-cas, checks the user and attributes, checks the ticket cannot be validated twice, then logs out and checks
python-cas accepts the single-logout request for the service's most recent ticket. Prints one line per check and a closing
'N passed, N failed' line; exits non-zero on any failure.
"""
import http.server
import re
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
check(f'one logout request for the http service ({len(slo_bodies)})', len(slo_bodies) == 1)
logout_request = urllib.parse.parse_qs(slo_bodies[0]).get('logoutRequest', [''])[0] if slo_bodies else ''
check('python-cas accepts the logout request for the most recent ticket',
      CASClientV3.verify_logout_request(logout_request, issued[-1]), logout_request)
check('python-cas refuses it for an older ticket', not CASClientV3.verify_logout_request(logout_request, issued[0]))

response = browser.get(v3.get_login_url(), allow_redirects=False)
check('after logout the login form is shown again', response.status_code == 200 and 'name="password"' in response.text)

passed, failed = results.count(True), results.count(False)
print(f'{passed} passed, {failed} failed')
sys.exit(1 if failed else 0)
