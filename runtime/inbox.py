"""The `Inbox` that push adapters (pollers, websockets) of one channel are given."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import ConversationEntry, InboundEvent, MessageStatus
from leadline.runtime.channels import Channel, mark
from leadline.runtime.pipeline import InboundPipeline
from leadline.storage.conversation import channel_history
from leadline.storage.models import ChatMessage


class ChannelInbox:
    def __init__(
        self,
        pipeline: InboundPipeline,
        sessions: async_sessionmaker[AsyncSession],
        channel: Channel,
        senders: Callable[[], int] = lambda: 1,
    ) -> None:
        self._pipeline = pipeline
        self._sessions = sessions
        self._channel = channel
        self._senders = senders
        self.broker_id, self.provider = channel.key

    async def receive(self, events: Sequence[InboundEvent]) -> None:
        await self._pipeline.ingest(self.broker_id, self.provider, events)

    def set_health(self, up: bool, reason: str | None = None) -> None:
        mark(self._channel, up, reason)

    def senders(self) -> int:
        return self._senders()

    async def conversation(self, channel_user_id: str, limit: int = 200) -> list[ConversationEntry]:
        async with self._sessions() as session:
            rows = await channel_history(
                session, self.broker_id, self.provider, channel_user_id, limit
            )
        return [to_entry(row) for row in rows]


def message_ref(row: ChatMessage) -> str:
    """The id a channel shows for a stored message: the provider's id for inbound
    rows, and the runtime's own stable id for outbound ones."""
    if row.direction == "in" and row.channel_message_id:
        return row.channel_message_id
    return str(row.id)


def to_entry(row: ChatMessage) -> ConversationEntry:
    return ConversationEntry(
        ref=message_ref(row),
        direction=row.direction.value,
        text=row.message_text,
        attachments=row.attachments,
        status=MessageStatus(row.status),
        created_at=row.created_at,
    )
