#!/usr/bin/env python3
"""A stand-in for the "Example CA" REST API the vendor template speaks (see src/lib.rs).

It is a real, small CA (pyca/cryptography): it checks the request signature, signs CSRs with
its own EC P-256 key, answers a retry with the same Idempotency-Key with the certificate it
already issued, holds template "manual" for approval (pending: issued on the second poll), and
knows which serials it issued for revocation. Loopback only.

    python3 mock-ca.py [--port 8700] [--api-key demo-key]   # prints the port it listens on

For tests: --delay-ms N makes each issuance take N ms, --fail-first N answers the first N
issuance requests 503 (a CA briefly down), POST /mock/fail-next/N does the same to the next N,
and GET /mock/stats (unsigned) tells how many
issuance requests it served and the most it ever had in flight at once.
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import http.server
import json
import secrets
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=8700)
parser.add_argument("--api-key", default="demo-key")
parser.add_argument("--delay-ms", type=int, default=0)
parser.add_argument("--fail-first", type=int, default=0)
args = parser.parse_args()

now = datetime.datetime.now(datetime.timezone.utc)
ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example CA Mock Root")])
ca_cert = (
    x509.CertificateBuilder()
    .subject_name(ca_name)
    .issuer_name(ca_name)
    .public_key(ca_key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=30))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(ca_key, hashes.SHA256())
)
ca_der = ca_cert.public_bytes(serialization.Encoding.DER)

lock = threading.RLock()  # re-entered: an answer given under it leaves the in-flight count
by_idempotency_key = {}  # key -> request id
requests = {}  # request id -> {"csr": ..., "days": ..., "polls": n, "certificate": der or None}
issued_serials = set()
stats = {"issue_requests": 0, "in_flight": 0, "max_in_flight": 0, "fail_next": 0}


def issue(csr_der, days):
    csr = x509.load_der_x509_csr(csr_der)
    if not csr.is_signature_valid:
        raise ValueError("the CSR's signature does not verify")
    t = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_name)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - datetime.timedelta(minutes=5))
        .not_valid_after(t + datetime.timedelta(days=min(days or 30, 30)))
        .sign(ca_key, hashes.SHA256())
    )
    issued_serials.add(format(cert.serial_number, "x"))
    return cert.public_bytes(serialization.Encoding.DER)


def answer(rid):
    r = requests[rid]
    if r["certificate"] is None:
        return 202, {"status": "pending", "id": rid, "retry_after": 1}
    b64 = lambda d: base64.b64encode(d).decode()
    return 201, {"status": "issued", "certificate": b64(r["certificate"]), "chain": [b64(ca_der)]}


class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def leave(self):
        # An issuance stops counting as in flight when the CA starts to answer it. Counted until
        # after the answer is written, the client's next request — sent the moment this answer
        # arrives — could be counted beside it, and max_in_flight would see two at once that
        # never were.
        if getattr(self, "counted", False):
            self.counted = False
            with lock:
                stats["in_flight"] -= 1

    def reply(self, status, value):
        self.leave()
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a test killed it): the CA's work stands

    def authentic(self, body):
        expected = hmac.new(
            args.api_key.encode(), f"{self.command}\n{self.path}\n".encode() + body, hashlib.sha256
        ).digest()
        given = base64.b64decode(self.headers.get("X-Signature", "") or b"")
        return hmac.compare_digest(expected, given)

    def handle_api(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/mock/stats":
            with lock:
                return self.reply(200, dict(stats))
        if self.command == "POST" and self.path.startswith("/mock/fail-next/"):
            # The next N issuance requests answer 503, as a CA that breaks under a new client.
            with lock:
                stats["fail_next"] = int(self.path.rsplit("/", 1)[1])
                return self.reply(200, dict(stats))
        if self.command == "POST" and self.path == "/v1/certificates":
            with lock:
                stats["issue_requests"] += 1
                failing = stats["issue_requests"] <= args.fail_first or stats["fail_next"] > 0
                if stats["fail_next"] > 0:
                    stats["fail_next"] -= 1
                stats["in_flight"] += 1
                stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
                self.counted = True
            try:
                time.sleep(args.delay_ms / 1000)
                if failing:
                    return self.reply(503, {"error": "the CA is briefly down (--fail-first)"})
                return self.handle_signed(body)
            finally:
                self.leave()
        self.handle_signed(body)

    def handle_signed(self, body):
        if not self.authentic(body):
            return self.reply(401, {"error": "bad request signature"})
        try:
            value = json.loads(body) if body else {}
        except ValueError:
            return self.reply(400, {"error": "the body is not JSON"})
        with lock:
            if self.command == "GET" and self.path == "/v1/health":
                return self.reply(200, {"status": "ok"})
            if self.command == "POST" and self.path == "/v1/certificates":
                key = self.headers.get("Idempotency-Key", "")
                if key in by_idempotency_key:
                    return self.reply(*answer(by_idempotency_key[key]))
                try:
                    csr_der = base64.b64decode(value.get("csr", ""), validate=True)
                    manual = value.get("template") == "manual"
                    certificate = None if manual else issue(csr_der, value.get("validity_days"))
                    if manual:
                        x509.load_der_x509_csr(csr_der)
                except Exception as e:  # a malformed or unsigned CSR: the CA's final no
                    return self.reply(400, {"error": f"bad CSR: {e}"})
                rid = secrets.token_hex(8)
                requests[rid] = {"csr": csr_der, "days": value.get("validity_days"), "polls": 0, "certificate": certificate}
                by_idempotency_key[key] = rid
                return self.reply(*answer(rid))
            if self.command == "GET" and self.path.startswith("/v1/requests/"):
                rid = self.path.rsplit("/", 1)[1]
                r = requests.get(rid)
                if r is None:
                    return self.reply(404, {"error": "no such request"})
                r["polls"] += 1
                if r["certificate"] is None and r["polls"] >= 2:
                    r["certificate"] = issue(r["csr"], r["days"])  # "approved"
                return self.reply(*answer(rid))
            if self.command == "POST" and self.path == "/v1/revocations":
                serial = str(value.get("serial", "")).lower().lstrip("0") or "0"
                if serial not in issued_serials:
                    return self.reply(404, {"error": "serial not issued here"})
                return self.reply(200, {"status": "revoked"})
        self.reply(404, {"error": "no such endpoint"})

    do_GET = handle_api
    do_POST = handle_api


server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Api)
print(server.server_address[1], flush=True)
server.serve_forever()
