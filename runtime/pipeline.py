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

from leadline.adapters.base import (
    Direction,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    OutboundEcho,
    ProviderNotice,
    StatusUpdate,
    StatusWatermark,
)
from leadline.runtime.batching import GroupCommit
from leadline.runtime.sanitize import clean_events
from leadline.storage import crm_events
from leadline.storage.inbound import IncomingRow, insert_messages
from leadline.storage.leads import ChannelIdentity
from leadline.storage.messages import (
    EditOutcome,
    EditRow,
    StatusChange,
    StatusOutcome,
    Watermark,
    apply_edit,
    apply_status,
    apply_watermark,
)
from leadline.storage.notices import Notice, insert_notices

log = logging.getLogger(__name__)


@dataclass(slots=True)
class IngestOutcome:
    stored: list[int] = field(default_factory=list)
    duplicates: int = 0
    statuses_applied: int = 0
    statuses_kept: int = 0
    edits: int = 0
    notices: int = 0
    moved: list[int] = field(default_factory=list)  # outbound rows whose status moved


def _identity(
    broker_id: str, provider: str, event: InboundMessage | InboundEdit
) -> ChannelIdentity:
    return ChannelIdentity(
        broker_id=broker_id,
        provider=provider,
        channel_user_id=event.channel_user_id,
        channel_username=event.channel_username,
        display_name=event.user_display_name,
    )


def to_row(broker_id: str, provider: str, message: InboundMessage) -> IncomingRow:
    identity = _identity(broker_id, provider, message)
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
        answer=message.answer,
    )


def echo_row(broker_id: str, provider: str, echo: OutboundEcho) -> IncomingRow:
    """What the broker's account sent from elsewhere: an outbound row, already sent."""
    return IncomingRow(
        identity=ChannelIdentity(broker_id, provider, echo.channel_user_id),
        channel_message_id=echo.channel_message_id,
        message_text=echo.text,
        attachments=[a.to_json() for a in echo.attachments],
        provider_metadata={**echo.metadata, "echo": True},
        created_at=echo.sent_at,
        direction=Direction.OUT,
    )


def to_edit(broker_id: str, provider: str, edit: InboundEdit) -> EditRow:
    return EditRow(
        identity=_identity(broker_id, provider, edit),
        channel_message_id=edit.channel_message_id,
        message_text=edit.text,
        attachments=[a.to_json() for a in edit.attachments],
        edited_at=edit.edited_at,
        deleted=edit.deleted,
    )


class PipelineStopped(RuntimeError):
    """The service is shutting down: nothing more is taken (the sender retries)."""


@dataclass(frozen=True, slots=True)
class _Delivery:
    broker_id: str
    provider: str
    events: list[InboundEvent]


class InboundPipeline:
    """Deliveries stored by group commit (`GroupCommit`): those that arrive while a
    transaction runs are stored together in the next one, so the database sees one
    commit for many webhooks. Each caller still waits for its own delivery's commit
    before acknowledging.

    Until `start` (or after `stop`) deliveries are stored one transaction each.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        on_stored: Callable[[], None],
        max_batch: int = 500,
        events_for: frozenset[str] = frozenset(),
    ) -> None:
        self._on_stored = on_stored
        # Brokers whose CRM takes events: theirs are written with what they report.
        self._events_for = events_for
        self._writer: GroupCommit[_Delivery, IngestOutcome] = GroupCommit(
            sessions,
            self._store,
            "inbound-writer",
            max_batch=max_batch,
            weight=lambda delivery: len(delivery.events),
            committed=self._committed,
        )
        self._stopping = False

    def start(self) -> None:
        self._writer.start()

    async def stop(self) -> None:
        """Store what is queued, then refuse new deliveries."""
        self._stopping = True
        await self._writer.stop()

    async def ingest(
        self, broker_id: str, provider: str, events: Sequence[InboundEvent]
    ) -> IngestOutcome:
        """Store a delivery's events; raises EventRejected (nothing stored) when one is unfit."""
        delivery = _Delivery(broker_id, provider, clean_events(events))
        if not delivery.events:
            return IngestOutcome()
        if self._stopping:
            raise PipelineStopped("shutting down")
        return await self._writer.submit(delivery)

    def _committed(self, outcomes: Sequence[IngestOutcome]) -> None:
        if any(outcome.stored for outcome in outcomes):
            self._on_stored()

    async def _store(
        self, session: AsyncSession, batch: Sequence[_Delivery]
    ) -> list[IngestOutcome]:
        outcomes = [IngestOutcome() for _ in batch]
        rows: list[IncomingRow] = []
        owners: list[int] = []
        for index, delivery in enumerate(batch):
            for event in delivery.events:
                if isinstance(event, InboundMessage):
                    rows.append(to_row(delivery.broker_id, delivery.provider, event))
                    owners.append(index)
                elif isinstance(event, OutboundEcho) and not event.ours:
                    rows.append(echo_row(delivery.broker_id, delivery.provider, event))
                    owners.append(index)
        new = await insert_messages(session, rows)
        for row, owner in zip(rows, owners, strict=True):
            key = (row.identity.broker_id, row.identity.provider, row.channel_message_id)
            message_id = new.pop(key, None)  # a second copy in the batch: duplicate
            if message_id is None:
                outcomes[owner].duplicates += 1
            else:
                outcomes[owner].stored.append(message_id)
        for delivery, outcome in zip(batch, outcomes, strict=True):
            await self._apply_others(session, delivery, outcome)
            outcome.notices = await _store_notices(session, delivery)
        if self._events_for:
            await self._emit(session, batch, outcomes)
        return outcomes

    async def _emit(
        self, session: AsyncSession, batch: Sequence[_Delivery], outcomes: Sequence[IngestOutcome]
    ) -> None:
        """The CRM events of what this transaction stored and moved, in the same transaction."""
        wanted = [
            o for d, o in zip(batch, outcomes, strict=True) if d.broker_id in self._events_for
        ]
        stored = [i for o in wanted for i in o.stored]
        moved = [i for o in wanted for i in o.moved]
        await crm_events.emit(session, stored, crm_events.MESSAGE, self._events_for)
        await crm_events.emit(session, moved, crm_events.STATUS, self._events_for)

    async def _apply_others(
        self, session: AsyncSession, delivery: _Delivery, outcome: IngestOutcome
    ) -> None:
        """Edits and status reports, after the batch's new messages are in."""
        for event in delivery.events:
            if isinstance(event, InboundEdit):
                edit = to_edit(delivery.broker_id, delivery.provider, event)
                result, message_id = await apply_edit(session, edit)
                if result == EditOutcome.APPLIED:
                    outcome.edits += 1
                if message_id is not None:
                    outcome.stored.append(message_id)
            elif isinstance(event, StatusUpdate):
                change = StatusChange(
                    delivery.broker_id,
                    delivery.provider,
                    event.channel_message_id,
                    event.status,
                    event.error,
                )
                result = await apply_status(session, change, outcome.moved)
                if result == StatusOutcome.APPLIED:
                    outcome.statuses_applied += 1
                elif result == StatusOutcome.KEPT:
                    outcome.statuses_kept += 1
            elif isinstance(event, StatusWatermark):
                mark = Watermark(
                    delivery.broker_id,
                    delivery.provider,
                    event.channel_user_id,
                    event.status,
                    event.up_to,
                )
                outcome.statuses_applied += await apply_watermark(session, mark, outcome.moved)


async def _store_notices(session: AsyncSession, delivery: _Delivery) -> int:
    """Keep what the provider said about the channel; log each notice once."""
    notices = [
        Notice(delivery.broker_id, delivery.provider, e.key, e.code, e.title, e.detail)
        for e in delivery.events
        if isinstance(e, ProviderNotice)
    ]
    new = await insert_notices(session, notices)
    for notice in new:
        log.warning(
            "broker %s: %s reports %s: %s",
            notice.broker_id, notice.provider, notice.code or "an error", notice.title or "",
        )  # fmt: skip
    return len(new)
