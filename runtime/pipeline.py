"""The inbound pipeline: store a delivery's events in one transaction, then wake the workers.

The caller acknowledges to the provider only after `ingest` returns, so a
delivery is either stored whole or not acknowledged (and redelivered).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import InboundEdit, InboundEvent, InboundMessage, StatusUpdate
from leadline.runtime.sanitize import clean_events
from leadline.storage.leads import ChannelIdentity
from leadline.storage.messages import (
    EditOutcome,
    EditRow,
    IncomingRow,
    LeadCache,
    StatusChange,
    StatusOutcome,
    apply_edit,
    apply_status,
    insert_incoming,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IngestOutcome:
    stored: list[int] = field(default_factory=list)
    duplicates: int = 0
    statuses_applied: int = 0
    statuses_kept: int = 0
    edits: int = 0


def to_row(broker_id: str, provider: str, message: InboundMessage) -> IncomingRow:
    identity = ChannelIdentity(
        broker_id=broker_id,
        provider=provider,
        channel_user_id=message.channel_user_id,
        channel_username=message.channel_username,
        display_name=message.user_display_name,
    )
    metadata = dict(message.metadata)
    if message.reply_to:
        metadata["reply_to"] = message.reply_to
    return IncomingRow(
        identity=identity,
        channel_message_id=message.channel_message_id,
        message_text=message.text,
        attachments=[a.to_json() for a in message.attachments],
        provider_metadata=metadata,
        created_at=message.sent_at,
    )


def to_edit(broker_id: str, provider: str, edit: InboundEdit) -> EditRow:
    identity = ChannelIdentity(
        broker_id=broker_id,
        provider=provider,
        channel_user_id=edit.channel_user_id,
        channel_username=edit.channel_username,
        display_name=edit.user_display_name,
    )
    return EditRow(
        identity=identity,
        channel_message_id=edit.channel_message_id,
        message_text=edit.text,
        attachments=[a.to_json() for a in edit.attachments],
        edited_at=edit.edited_at,
    )


class InboundPipeline:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        on_stored: Callable[[], None],
    ) -> None:
        self._sessions = sessions
        self._on_stored = on_stored

    async def ingest(
        self, broker_id: str, provider: str, events: Sequence[InboundEvent]
    ) -> IngestOutcome:
        """Store a delivery's events; raises EventRejected (nothing stored) when one is unfit."""
        events = clean_events(events)
        outcome = IngestOutcome()
        leads: LeadCache = {}
        async with self._sessions() as session, session.begin():
            for event in events:
                if isinstance(event, InboundMessage):
                    row = to_row(broker_id, provider, event)
                    stored = await insert_incoming(session, row, leads)
                    if stored is None:
                        outcome.duplicates += 1
                    else:
                        outcome.stored.append(stored.id)
                elif isinstance(event, InboundEdit):
                    edit = to_edit(broker_id, provider, event)
                    result, stored = await apply_edit(session, edit, leads)
                    if result == EditOutcome.APPLIED:
                        outcome.edits += 1
                    if stored is not None:
                        outcome.stored.append(stored.id)
                else:
                    await self._apply(session, broker_id, provider, event, outcome)
        if outcome.stored:
            self._on_stored()
        return outcome

    async def _apply(
        self,
        session: AsyncSession,
        broker_id: str,
        provider: str,
        event: StatusUpdate,
        outcome: IngestOutcome,
    ) -> None:
        change = StatusChange(
            broker_id, provider, event.channel_message_id, event.status, event.error
        )
        result = await apply_status(session, change)
        if result == StatusOutcome.APPLIED:
            outcome.statuses_applied += 1
        elif result == StatusOutcome.KEPT:
            outcome.statuses_kept += 1
