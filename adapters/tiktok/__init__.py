"""TikTok Business Messaging (PROVIDERS.md §6), as far as it is documented.

The signature is TikTok's generic webhook scheme (verified): `TikTok-Signature:
t=<unix>,s=<hex HMAC-SHA256(client_secret, "<t>.<raw body>")>`, compared in
constant time, and a timestamp more than 5 minutes away from ours is refused as a
replay. Everything else TikTok-specific is unverified and kept in `wire.py`.

Messaging is user-initiated: a reply may go within 48 hours of the user's last
message, at most 10 of them (the dispatcher counts, see `Capabilities.reply_quota`);
beyond that it fails at once. Error 40064 ("too fast") is retried.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import aiohttp
from pydantic import SecretStr, field_validator

from leadline.adapters.base import (
    Adapter,
    AdapterContext,
    AdapterError,
    Capabilities,
    InboundEvent,
    OutboundMessage,
    PauseScope,
    PermanentSendError,
    RateLimit,
    RetryableSendError,
    SendError,
    SendResult,
    SignatureInvalid,
    SignatureMissing,
)
from leadline.adapters.parts import PartSender, sent_in_parts
from leadline.adapters.tiktok import wire
from leadline.config.providers import ProviderConfig, not_empty

log = logging.getLogger(__name__)

API = "https://business-api.tiktok.com"
SIGNATURE_HEADER = "TikTok-Signature"
REPLAY_SECONDS = 300
WINDOW = timedelta(hours=48)
MARGIN = timedelta(minutes=1)  # the window closes a minute early: a reply must arrive in it
CALL_TIMEOUT = 30.0
_SIGNATURE = re.compile(r"t=([0-9]{1,12}),s=([0-9a-fA-F]{64})")


class TikTokConfig(ProviderConfig):
    business_id: str
    access_token: SecretStr
    client_secret: SecretStr

    _secrets_set = field_validator("access_token", "client_secret")(not_empty)


class TikTokAdapter(Adapter):
    name = "tiktok"
    config_model = TikTokConfig
    capabilities = Capabilities(
        media_kinds=frozenset({"image"}),
        reply_to=True,
        webhooks=True,
        rate_limit=RateLimit(10, 1.0),  # ~10 QPS [S]
        messaging_window_seconds=48 * 3600,
        echoes=True,
        reply_quota=10,  # business messages after each message of the user [S]
    )

    def __init__(
        self,
        config: ProviderConfig,
        context: AdapterContext,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config, context)
        assert isinstance(config, TikTokConfig)
        self.settings = config
        self._clock = clock  # Unix seconds, for the replay window
        self._session: aiohttp.ClientSession | None = None
        self._parts = PartSender(60.0)

    @property
    def account_id(self) -> str:
        return self.settings.business_id

    async def start(self) -> None:
        await self.close()
        token = self.settings.access_token.get_secret_value()
        self._session = aiohttp.ClientSession(
            headers={wire.TOKEN_HEADER: token},
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
        )
        # No documented endpoint checks a token: the first send tells.

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- inbound ----------------------------------------------------------------------------

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        sent = headers.get(SIGNATURE_HEADER)
        if not sent:
            raise SignatureMissing(f"{SIGNATURE_HEADER} header missing")
        match = _SIGNATURE.fullmatch(sent.strip())
        if match is None:
            raise SignatureInvalid(f"{SIGNATURE_HEADER} is not t=<seconds>,s=<hex>")
        stamp, given = match.groups()
        secret = self.settings.client_secret.get_secret_value().encode()
        expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), given.lower().encode()):
            raise SignatureInvalid(f"{SIGNATURE_HEADER} does not match the body")
        if abs(self._clock() - int(stamp)) > REPLAY_SECONDS:
            raise SignatureInvalid(f"{SIGNATURE_HEADER} is more than 5 minutes old: a replay")

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[InboundEvent]:
        found = wire.events(wire.envelope(body))
        if not found:
            log.info("broker %s: tiktok delivery held no chat event", self.context.broker_id)
        return found

    # --- outbound ---------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        last = message.last_inbound_at
        if last is None or datetime.now(UTC) >= last + WINDOW - MARGIN:
            since = last.isoformat() if last else "never"
            raise PermanentSendError(
                "TikTok messaging is user-initiated: a reply may go only within 48 hours of "
                f"the user's last message (the user last wrote: {since})",
                code="window_closed",
            )
        bodies = wire.send_bodies(message, self.settings.business_id)
        sent = await self._parts.send(f"{message.ref}:{len(bodies)}", bodies, self._post)
        return sent_in_parts(sent)

    async def _post(self, body: Mapping[str, object]) -> str:
        if self._session is None:
            raise AdapterError("tiktok adapter is not started")
        base = str(self.settings.api_base).rstrip("/") if self.settings.api_base else API
        try:
            async with self._session.post(base + wire.SEND_PATH, json=body) as response:
                status = response.status
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableSendError(
                f"TikTok unreachable: {type(exc).__name__}", code="network"
            ) from None
        except ValueError:
            raise RetryableSendError(
                f"TikTok answered HTTP {status} without JSON", code=str(status)
            ) from None
        return _message_id(status, wire.answer(payload))


def _message_id(status: int, answer: wire.Answer) -> str:
    if answer.code == wire.OK and answer.message_id and status < 400:
        return answer.message_id
    raise _send_error(status, answer)


def _send_error(status: int, answer: wire.Answer) -> SendError:
    code = str(answer.code if answer.code is not None else status)
    if answer.code == wire.TOO_FAST or status == 429:
        return RetryableSendError(
            answer.message, code=code, retry_after=1.0, scope=PauseScope.CHANNEL
        )
    if status >= 500:
        return RetryableSendError(answer.message, code=code)
    return PermanentSendError(answer.message, code=code)
