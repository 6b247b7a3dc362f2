"""Schemathesis hooks for certconn's API: the binary media types of SCEP and OCSP.

Schemathesis serializes JSON, forms and a few others itself; a body in one of PKI's own
media types (a DER OCSP request, a SCEP pkiMessage) is sent as the bytes it generated.
"""
import schemathesis


@schemathesis.serializer("application/ocsp-request", "application/x-pki-message")
def pki_bytes(ctx, value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return str(value).encode()
