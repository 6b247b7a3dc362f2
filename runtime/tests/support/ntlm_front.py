#!/usr/bin/env python3
"""An IIS-like front for the NDES stand-in in ndes_backend.rs.

`/certsrv/mscep_admin/` sits behind Windows authentication, answered by pyspnego's NTLM
acceptor — an NTLM implementation independent of certconn's, which checks the NTLMv2 response
and the MIC against the account in NTLM_USER_FILE (DOMAIN:USER:PASSWORD). Every other path is
passed to the stand-in unchanged. The handshake is per connection, as IIS does it.

usage: ntlm_front.py UPSTREAM_URL PAGE_FILE EVENTS_FILE [CERT_PEM KEY_PEM]
With a certificate and key it serves https. Prints the port it listens on.
"""
import base64
import http.server
import ssl
import sys
import urllib.request

import spnego

UPSTREAM, PAGE, EVENTS = sys.argv[1], open(sys.argv[2], "rb").read(), sys.argv[3]


def event(text):
    with open(EVENTS, "a") as f:
        f.write(text + "\n")


class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    context = None

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/certsrv/mscep_admin"):
            return self.admin()
        self.proxy()

    def do_POST(self):
        self.proxy()

    def admin(self):
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("ntlm", "negotiate") or not token:
            event("challenge-sent")
            return self.reply(401, b"401 - Unauthorized",
                              [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")])
        raw = base64.b64decode(token)
        if raw[8:12] == b"\x01\x00\x00\x00":
            self.context = spnego.server(protocol="ntlm")
        if self.context is None:
            event("refused no-negotiate-on-this-connection")
            return self.reply(401, b"", [("WWW-Authenticate", "NTLM")])
        try:
            out = self.context.step(raw)
        except Exception as e:  # a wrong password or a bad MIC
            self.context = None
            event(f"refused {type(e).__name__}")
            return self.reply(401, b"401 - Unauthorized", [("WWW-Authenticate", "NTLM")])
        if not self.context.complete:
            return self.reply(401, b"", [("WWW-Authenticate", f"{scheme} {base64.b64encode(out).decode()}")])
        event(f"authenticated {self.context.client_principal}")
        self.context = None
        self.reply(200, PAGE, [("Content-Type", "text/html")])

    def proxy(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        request = urllib.request.Request(UPSTREAM + self.path, data=body, method=self.command)
        for k in ("Content-Type",):
            if self.headers.get(k):
                request.add_header(k, self.headers[k])
        try:
            with urllib.request.urlopen(request) as r:
                self.reply(r.status, r.read(), [("Content-Type", r.headers.get("Content-Type", ""))])
        except urllib.error.HTTPError as e:
            self.reply(e.code, e.read())


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
if len(sys.argv) > 5:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[4], sys.argv[5])
    server.socket = tls.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
