"""What WhatsApp, Messenger and Instagram share: Meta's webhook handshake and signature,
and the settings they take for them.

One module for the three providers (PROVIDERS.md §2). The signature is an
HMAC-SHA256 of the raw request bytes with the app secret, sent as
`X-Hub-Signature-256: sha256=<hex>`. Meta signs the body as it sends it (with
non-ASCII escaped as \\uXXXX), so the bytes are hashed as received, never a
re-serialisation of parsed JSON; the comparison takes constant time. Without an
app secret a channel does not start, unless `allow_unsigned` says it may (for
local tests), which is warned about at every start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from leadline.adapters.base import HttpReply, RequestRejected, SignatureInvalid, SignatureMissing
from leadline.config.providers import ProviderConfig, not_empty

log = logging.getLogger(__name__)

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


class MetaAppConfig(ProviderConfig):
    """The keys every Meta provider table has: the app's secret and the handshake token."""

    # Read before app_secret: it decides whether app_secret may be left out.
    allow_unsigned: bool = False
    app_secret: SecretStr | None = Field(default=None, validate_default=True)
    verify_token: SecretStr
    api_version: str = "24.0"

    @field_validator("app_secret")
    @classmethod
    def _signed_unless_allowed(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            value = None
        if value is None and not info.data.get("allow_unsigned"):
            raise ValueError(
                "required: webhooks are checked with the app secret "
                "(allow_unsigned = true skips the check, for local tests only)"
            )
        return value

    _verify_token_set = field_validator("verify_token")(not_empty)

    @field_validator("api_version")
    @classmethod
    def _graph_version(cls, value: str) -> str:
        version = value.removeprefix("v")
        if not re.fullmatch(r"[0-9]{1,3}\.0", version):
            raise ValueError('a Graph API version like "24.0"')
        return version


_TOKEN = re.compile(r"[A-Za-z0-9_\-.|]{8,4096}")


def access_token_shape(value: SecretStr) -> SecretStr:
    """A Graph access token: letters, digits and a few marks (never quoted back)."""
    if not _TOKEN.fullmatch(value.get_secret_value()):
        raise ValueError("must be the access token Meta gave (letters and digits)")
    return value


def check_request(config: MetaAppConfig, headers: Mapping[str, str], body: bytes) -> None:
    """The signature check, or nothing for a channel configured `allow_unsigned`."""
    if config.app_secret is not None:
        verify_signature(config.app_secret.get_secret_value(), headers, body)


def warn_if_unsigned(config: MetaAppConfig, broker_id: str, provider: str) -> None:
    if config.app_secret is None:
        log.warning(
            "broker %s: %s webhooks are NOT signature-checked (allow_unsigned = true): "
            "anyone who knows the URL can post messages; for local tests only",
            broker_id,
            provider,
        )


class MetaWebhooks:
    """The webhook half of a Meta adapter: put before `Adapter` among the bases."""

    settings: MetaAppConfig

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        check_request(self.settings, headers, body)

    def handshake(self, query: Mapping[str, str]) -> HttpReply:
        return handshake(query, self.settings.verify_token.get_secret_value())
