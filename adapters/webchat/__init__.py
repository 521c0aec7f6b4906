"""The web chat: a small page on the broker's own site, talking over a websocket.

Frames (JSON text):
- visitor → server: `{"type":"message","id":ID,"text":...}` (acknowledged with
  `{"type":"ack","id":ID}` once stored; resending the same id stores nothing new)
  and `{"type":"received","ids":[...]}` (the replies it has shown: `delivered`).
- server → visitor: `{"type":"history","messages":[...]}` on connect,
  `{"type":"message",...}` for each reply, `{"type":"error","reason":...}`.

A reply sent while the visitor has no socket open counts as sent: it is stored,
and the history frame hands it over at the next connection. A reply another
process sent (several processes on one database, the socket open on this one)
reaches the page too: every open socket catches up with the visitor's stored
replies every `catch_up_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import re
import secrets
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web
from pydantic import Field

from leadline.adapters.base import (
    Adapter,
    AdapterContext,
    Capabilities,
    ConversationEntry,
    EventRejected,
    InboundEvent,
    InboundMessage,
    Inbox,
    MessageStatus,
    OutboundMessage,
    PublicRoute,
    SendResult,
    StatusUpdate,
)
from leadline.config.providers import ProviderConfig

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")
CATCH_UP_ROWS = 20  # the latest messages a catch-up looks at
SHOWN = (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ)
MAX_FRAME_BYTES = 64 * 1024
CLOSE_TIMEOUT = 2.0  # seconds a closing socket waits for the browser's close frame


class WebchatConfig(ProviderConfig):
    title: str | None = Field(default=None, max_length=200)
    max_message_chars: int = Field(default=4000, ge=1, le=20000)
    # How soon a reply sent by another process reaches a page open on this one.
    catch_up_seconds: float = Field(default=3.0, gt=0, le=60)


class FrameError(ValueError):
    """A frame the visitor's page should not have sent."""


class WebchatAdapter(Adapter):
    name = "webchat"
    config_model = WebchatConfig
    capabilities = Capabilities(webhooks=False, typing_indicator=True, mark_read=True)
    public_routes = (
        PublicRoute("GET", "", "serve_page"),
        PublicRoute("GET", "/ws", "serve_socket"),
    )

    def __init__(self, config: ProviderConfig, context: AdapterContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, WebchatConfig)
        self.settings = config
        # Each visitor's open sockets, with the replies each was handed.
        self._sockets: dict[str, dict[web.WebSocketResponse, set[str]]] = {}
        self._template = resources.files(__package__).joinpath("page.html").read_text("utf-8")

    async def close(self) -> None:
        sockets = [ws for group in self._sockets.values() for ws in group]
        self._sockets.clear()
        # All at once: each close waits (up to CLOSE_TIMEOUT) for the browser's reply.
        await asyncio.gather(
            *(ws.close(code=1001, message=b"server shutting down") for ws in sockets),
            return_exceptions=True,
        )

    # --- the page ------------------------------------------------------------

    async def serve_page(self, request: web.Request, inbox: Inbox) -> web.StreamResponse:
        nonce = secrets.token_urlsafe(16)
        title = html.escape(self.settings.title or self.context.broker_name)
        page = (
            self._template.replace("__TITLE__", title)
            .replace("__NONCE__", nonce)
            .replace("__MAX_CHARS__", str(self.settings.max_message_chars))
        )
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors *"
        )
        return web.Response(
            text=page,
            content_type="text/html",
            headers={"Content-Security-Policy": csp, "Cache-Control": "no-store"},
        )

    # --- the socket ----------------------------------------------------------

    async def serve_socket(self, request: web.Request, inbox: Inbox) -> web.StreamResponse:
        visitor = request.query.get("visitor", "")
        if not ID_PATTERN.fullmatch(visitor):
            raise web.HTTPBadRequest(text="query parameter 'visitor' must be 8-64 of A-Za-z0-9_-")
        _check_origin(request)
        ws = web.WebSocketResponse(
            heartbeat=30, max_msg_size=MAX_FRAME_BYTES, timeout=CLOSE_TIMEOUT
        )
        if not ws.can_prepare(request).ok:
            raise web.HTTPBadRequest(text="this route takes a websocket upgrade")
        await ws.prepare(request)
        handed = self._sockets.setdefault(visitor, {}).setdefault(ws, set())
        catching_up: asyncio.Task[None] | None = None
        try:
            history = await inbox.conversation(visitor)
            handed.update(e.ref for e in history if e.direction == "out")
            await ws.send_json({"type": "history", "messages": [_entry(e) for e in history]})
            catching_up = asyncio.create_task(self._catch_up(ws, visitor, inbox, handed))
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                await self._on_frame(ws, visitor, frame.data, inbox)
        finally:
            if catching_up is not None:
                catching_up.cancel()
            sockets = self._sockets.get(visitor, {})
            sockets.pop(ws, None)
            if not sockets:
                self._sockets.pop(visitor, None)
        return ws

    async def _catch_up(
        self, ws: web.WebSocketResponse, visitor: str, inbox: Inbox, handed: set[str]
    ) -> None:
        """Hand the page the replies stored as sent that it was not handed: those another
        process sent. The page shows a message once, whatever comes twice."""
        while not ws.closed:
            await asyncio.sleep(self.settings.catch_up_seconds)
            if inbox.senders() < 2:
                continue  # every reply goes out from this process: `send` hands it over
            try:
                recent = await inbox.conversation(visitor, limit=CATCH_UP_ROWS)
            except Exception:
                log.exception("web chat of broker %s: catching up failed", self.context.broker_id)
                continue
            for entry in recent:
                if entry.direction == "out" and entry.status in SHOWN and entry.ref not in handed:
                    handed.add(entry.ref)
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.send_json({"type": "message", **_entry(entry), "status": "sent"})

    async def _on_frame(
        self, ws: web.WebSocketResponse, visitor: str, data: str, inbox: Inbox
    ) -> None:
        try:
            events, ack = self._parse_frame(visitor, data)
        except FrameError as exc:
            await ws.send_json({"type": "error", "reason": str(exc)})
            return
        try:
            await inbox.receive(events)
        except EventRejected as rejected:
            await ws.send_json({"type": "error", "id": ack, "reason": rejected.reason})
            return
        except Exception:
            # Not stored, so not acknowledged: the page resends it on reconnect.
            log.exception("web chat message of broker %s not stored", self.context.broker_id)
            await ws.send_json({"type": "error", "id": ack, "reason": "not stored, try again"})
            return
        if ack is not None:
            await ws.send_json({"type": "ack", "id": ack})

    def _parse_frame(self, visitor: str, data: str) -> tuple[list[InboundEvent], str | None]:
        try:
            frame = json.loads(data)
        except (ValueError, RecursionError):
            raise FrameError("frames are JSON objects") from None
        if not isinstance(frame, dict):
            raise FrameError("frames are JSON objects")
        kind = frame.get("type")
        if kind == "message":
            message_id, text = frame.get("id"), frame.get("text")
            if not isinstance(message_id, str) or not ID_PATTERN.fullmatch(message_id):
                raise FrameError("'id' must be 8-64 of A-Za-z0-9_-")
            if not isinstance(text, str) or not text.strip():
                raise FrameError("'text' must be a non-empty string")
            if len(text) > self.settings.max_message_chars:
                raise FrameError(f"'text' is longer than {self.settings.max_message_chars}")
            event = InboundMessage(
                channel_message_id=message_id,
                channel_user_id=visitor,
                text=text,
                sent_at=datetime.now(UTC),
            )
            return [event], message_id
        if kind == "received":
            ids = frame.get("ids")
            if not isinstance(ids, list) or not all(
                isinstance(i, str) and len(i) <= 64 for i in ids
            ):
                raise FrameError("'ids' must be a list of message ids")
            statuses: list[InboundEvent] = [
                StatusUpdate(i, MessageStatus.DELIVERED, channel_user_id=visitor) for i in ids[:500]
            ]
            return statuses, None
        raise FrameError("unknown frame type")

    # --- outbound --------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        frame = {
            "type": "message",
            "id": message.ref,
            "direction": "out",
            "text": message.text,
            "status": MessageStatus.SENT.value,
            "created_at": datetime.now(UTC).isoformat(),
        }
        await self._tell(message.channel_user_id, frame)
        return SendResult(channel_message_id=message.ref)

    async def send_typing(self, message: OutboundMessage) -> None:
        await self._tell(message.channel_user_id, {"type": "typing"})

    async def mark_read(self, channel_user_id: str, channel_message_id: str) -> None:
        await self._tell(channel_user_id, {"type": "read", "id": channel_message_id})

    async def _tell(self, visitor: str, frame: dict[str, Any]) -> None:
        """A frame to every open page of the visitor; a page that is gone misses it (the
        next history frame carries what matters)."""
        for ws, handed in list(self._sockets.get(visitor, {}).items()):
            if frame["type"] == "message":
                handed.add(frame["id"])
            try:
                await ws.send_json(frame)
            except (ConnectionError, RuntimeError):
                continue

    def connected(self, visitor: str) -> int:
        return len(self._sockets.get(visitor, ()))


def _entry(entry: ConversationEntry) -> dict[str, Any]:
    return {
        "id": entry.ref,
        "direction": entry.direction,
        "text": entry.text,
        "status": entry.status.value,
        "created_at": entry.created_at.isoformat(),
    }


def _check_origin(request: web.Request) -> None:
    """Browsers always send Origin on websockets: refuse other sites' pages."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    host = origin.split("://", 1)[-1]
    if host != request.host:
        raise web.HTTPForbidden(text="cross-origin websocket refused")
