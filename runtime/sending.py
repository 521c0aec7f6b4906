"""Queue a message for a lead: how rules, the scheduler and the HTTP API send.

Nothing is sent here: the message becomes a pending outbound row, and the
dispatcher takes it from there (rate limits, retries, statuses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import Attachment, TemplateRef
from leadline.config.brokers import BrokerConfig
from leadline.storage.leads import LeadChannelRef, lead_channels
from leadline.storage.outbox import QueuedMessage, enqueue


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for a lead. Without `provider`, it goes on the broker's
    `default_provider` if the lead is there, else on the channel the lead last wrote on."""

    broker_id: str
    lead_id: int
    text: str | None = None
    attachments: Sequence[Attachment] = ()
    provider: str | None = None
    send_after: datetime | None = None
    reply_to: str | None = None
    ai_response_used: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # An approved template instead of free-form text (WhatsApp); `text` may then say
    # what it reads like, for the history.
    template: TemplateRef | None = None
    # Written by a human agent (Messenger and Instagram then allow 7 days, not 24 hours).
    human_agent: bool = False


class CannotQueue(ValueError):
    """The message cannot be queued; the text says why (safe to show to an API client).

    `about` names what is wrong: "lead" (no such lead with a channel), "provider", or
    "message" (its content)."""

    def __init__(
        self, reason: str, about: Literal["lead", "provider", "message"] = "message"
    ) -> None:
        super().__init__(reason)
        self.about = about


async def queue_message(
    session: AsyncSession,
    brokers: Mapping[str, BrokerConfig],
    message: Outgoing,
    now: datetime | None = None,
) -> int:
    """Queue `message` as a pending outbound row in the caller's transaction; returns its id."""
    broker = brokers.get(message.broker_id)
    if broker is None:
        raise CannotQueue(f"unknown broker {message.broker_id!r}", about="lead")
    has_text = bool(message.text and message.text.strip())
    if not has_text and not message.attachments and message.template is None:
        raise CannotQueue("a message needs a text, an attachment or a template")
    channel = _choose(broker, message, await lead_channels(session, broker.id, message.lead_id))
    metadata = dict(message.metadata)
    if message.reply_to:
        metadata["reply_to"] = message.reply_to
    if message.template is not None:
        metadata["template"] = message.template.to_json()
    if message.human_agent:
        metadata["human_agent"] = True
    return await enqueue(
        session,
        QueuedMessage(
            lead_id=message.lead_id,
            broker_id=broker.id,
            provider=channel.provider,
            channel_user_id=channel.channel_user_id,
            channel_username=channel.channel_username,
            message_text=message.text,
            attachments=[a.to_json() for a in message.attachments],
            send_after=message.send_after,
            ai_response_used=message.ai_response_used,
            provider_metadata=metadata,
            created_at=now,
        ),
    )


def _choose(
    broker: BrokerConfig, message: Outgoing, channels: list[LeadChannelRef]
) -> LeadChannelRef:
    if not channels:
        reason = f"broker {broker.id} has no lead {message.lead_id} with a channel"
        raise CannotQueue(reason, about="lead")
    if message.provider is not None:
        wanted = [c for c in channels if c.provider == message.provider]
        if not wanted:
            reason = f"lead {message.lead_id} has no {message.provider} channel"
            raise CannotQueue(reason, about="provider")
        chosen = wanted[0]
    else:
        default = [c for c in channels if c.provider == broker.default_provider]
        chosen = default[0] if default else channels[0]  # the one it last wrote on
    if chosen.provider not in broker.providers:
        reason = broker.disabled.get(chosen.provider, "not configured")
        reason = f"provider {chosen.provider} of broker {broker.id} is off: {reason}"
        raise CannotQueue(reason, about="provider")
    return chosen
