"""A fake of TikTok's Business Messaging send API, served on loopback, and webhook bodies.

It answers as PROVIDERS.md §6 describes (itself unverified, from Chatwoot's client):
`POST /open_api/v1.3/business/message/send/` with an `Access-Token` header and
`{business_id, recipient_type: "CONVERSATION", recipient, message_type: TEXT|IMAGE,
text{body}|image{media_id}, referenced_message_info?}`, answered HTTP 200 with
`{"code": 0, "message": "OK", "request_id", "data": {"message": {"message_id"}}}`;
errors keep HTTP 200 and carry their own `code` (TikTok's business API style): 40064
"too fast", 40105 for a bad token. Faults: "40064", "40105", "500" (HTTP 500),
"drop" (no answer).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.serving import drop_connection

SEND_PATH = "/open_api/v1.3/business/message/send/"
FAULTS = frozenset({"40064", "40105", "500", "drop"})


@dataclass(frozen=True)
class SentTikTok:
    recipient: str
    message_type: str
    body: dict[str, Any]
    message_id: str
    at: float = field(default_factory=time.monotonic)

    @property
    def text(self) -> str | None:
        text = self.body.get("text")
        return text.get("body") if isinstance(text, dict) else None


class FakeTikTok:
    def __init__(self, business_id: str, access_token: str) -> None:
        self.business_id = business_id
        self.access_token = access_token
        self.sent: list[SentTikTok] = []
        self.faults: list[str] = []
        self._serials = itertools.count(1)

    def fail_next(self, kind: str, count: int = 1) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(FAULTS)}")
        self.faults.extend([kind] * count)

    # The conformance suite's FakeApi protocol.
    def throttle_next(self) -> None:
        self.fail_next("40064")

    def reject_next(self) -> None:
        self.fail_next("40105")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(SEND_PATH, self._send)
        return app

    def close(self) -> None:
        """Nothing to release; `running_fake` calls it."""

    async def _send(self, request: web.Request) -> web.StreamResponse:
        fault = self.faults.pop(0) if self.faults else None
        if fault == "drop":
            drop_connection(request)
        if fault == "500":
            return web.Response(status=500, text="Internal Server Error")
        if request.headers.get("Access-Token") != self.access_token or fault == "40105":
            return _error(40105, "Access token is invalid or has expired.")
        if fault == "40064":
            return _error(40064, "You are sending messages too fast. Please try again later.")
        try:
            body = await request.json()
        except ValueError:
            return _error(40002, "Invalid JSON.")
        problem = _check(body, self.business_id)
        if problem is not None:
            return _error(40002, problem)
        message_id = f"tt-msg-{secrets.token_hex(6)}-{next(self._serials)}"
        self.sent.append(SentTikTok(body["recipient"], body["message_type"], body, message_id))
        return web.json_response(
            {
                "code": 0,
                "message": "OK",
                "request_id": secrets.token_hex(8),
                "data": {"message": {"message_id": message_id}},
            }
        )


def _check(body: Any, business_id: str) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be an object."
    if body.get("business_id") != business_id:
        return "business_id does not match the access token."
    if body.get("recipient_type") != "CONVERSATION" or not body.get("recipient"):
        return "recipient_type must be CONVERSATION with a recipient."
    kind = body.get("message_type")
    if kind == "TEXT":
        text = body.get("text")
        ok = isinstance(text, dict) and isinstance(text.get("body"), str) and text["body"]
        return None if ok else "text.body is required."
    if kind == "IMAGE":
        image = body.get("image")
        ok = isinstance(image, dict) and isinstance(image.get("media_id"), str)
        return None if ok else "image.media_id is required."
    return "message_type must be TEXT or IMAGE."


def _error(code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "request_id": secrets.token_hex(8)})


# --- webhook bodies ---------------------------------------------------------------------------


def webhook(event: str, content: dict[str, Any], business_id: str, at: int = 1767225600) -> bytes:
    """A webhook body as TikTok sends it: `content` is a JSON string."""
    envelope = {
        "client_key": "aw_example_client_key",
        "event": event,
        "create_time": at,
        "user_openid": business_id,
        "content": json.dumps(content),
    }
    return json.dumps(envelope).encode()


def signature(client_secret: str, body: bytes, at: float) -> str:
    stamp = str(int(at))
    digest = hmac.new(client_secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    return f"t={stamp},s={digest.hexdigest()}"
