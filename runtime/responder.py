"""The pluggable responder: a broker's own Python callable that may answer a message.

Named in brokers.toml as `responder = "package.module:function"`. It is called with
the normalized message and its lead, and returns the reply text, or None to let the
rules answer. It may be a plain function (run in a thread, never on the event loop)
or a coroutine function. Its replies are stored with `ai_response_used = true`.
An error or a time-out (`responder_timeout`, 10 s by default) is logged and the
rules answer instead: the inbound message is stored before any of this, and never
lost. A responder may be called again for the same message after a crash or by a
second process; only one of its answers is ever sent.

Example (`myreplies.py` on the Python path):

    from leadline.runtime.responder import IncomingMessage, LeadInfo

    async def answer(message: IncomingMessage, lead: LeadInfo) -> str | None:
        if message.text and "visit" in message.text.lower():
            return f"Happy to arrange a visit, {lead.name or 'there'}!"
        return None
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    id: int  # the stored row's id
    broker_id: str
    provider: str
    channel_user_id: str
    text: str | None
    attachments: Sequence[Mapping[str, Any]] = ()
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class LeadInfo:
    id: int
    name: str | None = None
    phone: str | None = None
    tags: Sequence[str] = field(default_factory=tuple)


Responder = Callable[[IncomingMessage, LeadInfo], "str | Awaitable[str | None] | None"]


class ResponderError(Exception):
    """The callable named in brokers.toml cannot be found."""


def load_responder(path: str) -> Responder:
    """The callable at "package.module:function"."""
    module_name, _, name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ResponderError(f"module {module_name!r} cannot be imported: {exc!r}") from None
    found = getattr(module, name, None)
    if not callable(found):
        raise ResponderError(f"{module_name!r} has no callable {name!r}")
    return found  # type: ignore[no-any-return]


async def ask(
    responder: Responder, message: IncomingMessage, lead: LeadInfo, seconds: float
) -> str | None:
    """The responder's reply, or None on no answer, an error or a time-out (logged)."""
    try:
        async with asyncio.timeout(seconds):
            if inspect.iscoroutinefunction(responder):
                answer = await responder(message, lead)
            else:
                answer = await asyncio.to_thread(responder, message, lead)
                if inspect.isawaitable(answer):
                    answer = await answer
    except TimeoutError:
        log.warning(
            "broker %s: responder gave no answer to message %s in %.0f s; the rules answer",
            message.broker_id, message.id, seconds,
        )  # fmt: skip
        return None
    except Exception:
        log.exception(
            "broker %s: responder failed on message %s; the rules answer",
            message.broker_id, message.id,
        )  # fmt: skip
        return None
    if answer is None:
        return None
    if not isinstance(answer, str):
        log.warning(
            "broker %s: responder returned a %s, not text; ignored",
            message.broker_id, type(answer).__name__,
        )  # fmt: skip
        return None
    return answer.strip() or None
