"""What WhatsApp, Messenger and Instagram share: Meta's webhook handshake and signature.

One module for the three providers (PROVIDERS.md §2). The signature is an
HMAC-SHA256 of the raw request bytes with the app secret, sent as
`X-Hub-Signature-256: sha256=<hex>`. Meta signs the body as it sends it (with
non-ASCII escaped as \\uXXXX), so the bytes are hashed as received, never a
re-serialisation of parsed JSON; the comparison takes constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from leadline.adapters.base import HttpReply, RequestRejected, SignatureInvalid, SignatureMissing

SIGNATURE_HEADER = "X-Hub-Signature-256"
PREFIX = "sha256="


def sign(app_secret: str, body: bytes) -> str:
    """The header value Meta would send for this body."""
    return PREFIX + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(app_secret: str, headers: Mapping[str, str], body: bytes) -> None:
    """Fail closed: no header is 401, anything but the right HMAC is 403."""
    sent = headers.get(SIGNATURE_HEADER)
    if not sent:
        raise SignatureMissing(f"{SIGNATURE_HEADER} header missing")
    if not sent.startswith(PREFIX):
        raise SignatureInvalid(f"{SIGNATURE_HEADER} is not a sha256 signature")
    # Both sides as bytes of the same length whatever was sent: compare_digest
    # then takes the same time for every wrong value.
    expected = sign(app_secret, body).encode()
    if not hmac.compare_digest(expected, sent.strip().lower().encode("utf-8", "replace")):
        raise SignatureInvalid(f"{SIGNATURE_HEADER} does not match the body")


def handshake(query: Mapping[str, str], verify_token: str) -> HttpReply:
    """The GET verification: echo the challenge for the right token, else 403."""
    if query.get("hub.mode") != "subscribe":
        raise RequestRejected("hub.mode must be subscribe", status=400)
    challenge = query.get("hub.challenge", "")
    if not challenge:
        raise RequestRejected("hub.challenge missing", status=400)
    sent = query.get("hub.verify_token", "").encode("utf-8", "replace")
    if not hmac.compare_digest(sent, verify_token.encode()):
        raise RequestRejected("hub.verify_token does not match", status=403)
    return HttpReply(200, challenge, "text/plain")
