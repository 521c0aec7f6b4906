"""A test provider loaded through the plugins folder, the way a hobbyist's adapter is.

Its wire format is small on purpose: a JSON body signed with HMAC-SHA256 in
`X-Signature`, holding `messages`, `edits` and `statuses`. Its `send` records what it
was asked to send and fails on demand, so the pipeline and the dispatcher can
be tested end to end without a real provider.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from leadline.adapters.base import (
    Adapter,
    AdapterContext,
    Capabilities,
    HttpReply,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    MessageStatus,
    OutboundMessage,
    PauseScope,
    PermanentSendError,
    RetryableSendError,
    SendResult,
    SignatureInvalid,
    SignatureMissing,
    StatusUpdate,
)
from leadline.config.providers import ProviderConfig


class SignedConfig(ProviderConfig):
    secret: SecretStr
    verify_token: str = "let-me-in"
    # Makes `start` fail the way a revoked credential would (with the secret in the text).
    refuse_start: bool = False


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class SignedAdapter(Adapter):
    name = "signed"
    config_model = SignedConfig
    capabilities = Capabilities(webhooks=True)

    def __init__(self, config: ProviderConfig, context: AdapterContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, SignedConfig)
        self.settings = config
        self.sent: list[OutboundMessage] = []
        # Scripted answers for the next sends: "ok", "retry", "retry-after:N" (this chat
        # waits N s), "pause:N" (the whole channel waits N s), "permanent".
        self.script: list[str] = []
        # Every send call, failed or not: (chat, text, action, time.monotonic() of the call).
        self.calls: list[tuple[str, str | None, str, float]] = []

    async def start(self) -> None:
        if self.settings.refuse_start:
            secret = self.settings.secret.get_secret_value()
            raise PermissionError(f"credential {secret} was revoked")

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        given = headers.get("X-Signature")
        if not given:
            raise SignatureMissing("X-Signature header missing")
        expected = sign(self.settings.secret.get_secret_value(), body)
        # Header bytes that are not UTF-8 arrive as surrogate escapes: compare them as bytes.
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode()):
            raise SignatureInvalid("X-Signature does not match")

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[InboundEvent]:
        try:
            data = json.loads(body)
            events: list[InboundEvent] = [_message(m) for m in data.get("messages", [])]
            events += [_edit(e) for e in data.get("edits", [])]
            events += [
                StatusUpdate(s["id"], MessageStatus(s["status"])) for s in data.get("statuses", [])
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = f"not a signed-provider delivery: {exc.__class__.__name__}"
            raise MalformedPayload(reason) from None
        return events

    def handshake(self, query: Mapping[str, str]) -> HttpReply:
        if query.get("token") != self.settings.verify_token:
            raise SignatureInvalid("wrong verify token")
        return HttpReply(200, query.get("challenge", ""))

    async def send(self, message: OutboundMessage) -> SendResult:
        action = self.script.pop(0) if self.script else "ok"
        self.calls.append((message.channel_user_id, message.text, action, time.monotonic()))
        if action == "retry":
            raise RetryableSendError("provider busy", code="503")
        if action.startswith("retry-after:"):
            raise RetryableSendError("slow down", code="429", retry_after=float(action[12:]))
        if action.startswith("pause:"):
            raise RetryableSendError(
                "account throttled",
                code="429",
                retry_after=float(action[6:]),
                scope=PauseScope.CHANNEL,
            )
        if action == "permanent":
            raise PermanentSendError("user blocked the bot", code="403")
        self.sent.append(message)
        return SendResult(channel_message_id=f"sig-{message.ref}")


def _edit(item: Any) -> InboundEdit:
    return InboundEdit(
        channel_message_id=str(item["id"]),
        channel_user_id=str(item["from"]),
        text=item.get("text"),
        edited_at=datetime.fromtimestamp(int(item["at"]), UTC),
    )


def _message(item: Any) -> InboundMessage:
    return InboundMessage(
        channel_message_id=str(item["id"]),
        channel_user_id=str(item["from"]),
        text=item.get("text"),
        user_display_name=item.get("name"),
    )
