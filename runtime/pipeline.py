"""The inbound pipeline: store a delivery's events in one transaction, then wake the workers.

The caller acknowledges to the provider only after `ingest` returns, so a
delivery is either stored whole or not acknowledged (and redelivered).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import InboundEdit, InboundEvent, InboundMessage, StatusUpdate
from leadline.runtime.sanitize import clean_events
from leadline.storage.inbound import IncomingRow, insert_messages
from leadline.storage.leads import ChannelIdentity
from leadline.storage.messages import (
    EditOutcome,
    EditRow,
    StatusChange,
    StatusOutcome,
    apply_edit,
    apply_status,
)

log = logging.getLogger(__name__)
GATHER_SECONDS = 0.002
BUSY_WITHIN_SECONDS = 0.005


@dataclass(slots=True)
class IngestOutcome:
    stored: list[int] = field(default_factory=list)
    duplicates: int = 0
    statuses_applied: int = 0
    statuses_kept: int = 0
    edits: int = 0


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
    )


def to_edit(broker_id: str, provider: str, edit: InboundEdit) -> EditRow:
    return EditRow(
        identity=_identity(broker_id, provider, edit),
        channel_message_id=edit.channel_message_id,
        message_text=edit.text,
        attachments=[a.to_json() for a in edit.attachments],
        edited_at=edit.edited_at,
    )


class PipelineStopped(RuntimeError):
    """The service is shutting down: nothing more is taken (the sender retries)."""


@dataclass(slots=True)
class _Delivery:
    broker_id: str
    provider: str
    events: list[InboundEvent]
    done: asyncio.Future[IngestOutcome]


class InboundPipeline:
    """Group commit: deliveries that arrive while a transaction runs are stored
    together in the next one, so the database sees one commit for many webhooks.
    Each caller still waits for its own delivery's commit before acknowledging.

    Until `start` (or after `stop`) deliveries are stored one transaction each.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        on_stored: Callable[[], None],
        max_batch: int = 500,
    ) -> None:
        self._sessions = sessions
        self._on_stored = on_stored
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Delivery | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_commit = float("-inf")

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name="inbound-writer")

    async def stop(self) -> None:
        """Store what is queued, then refuse new deliveries."""
        self._stopping = True
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
            self._writer = None

    async def ingest(
        self, broker_id: str, provider: str, events: Sequence[InboundEvent]
    ) -> IngestOutcome:
        """Store a delivery's events; raises EventRejected (nothing stored) when one is unfit."""
        delivery = _Delivery(
            broker_id, provider, clean_events(events), asyncio.get_running_loop().create_future()
        )
        if not delivery.events:
            return IngestOutcome()
        if self._stopping:
            raise PipelineStopped("shutting down")
        if self._writer is None:
            await self._commit([delivery])
        else:
            self._queue.put_nowait(delivery)
        return await delivery.done

    async def _write(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            if self._queue.empty():
                await asyncio.sleep(self._gathering())
            batch, size, last = [first], len(first.events), False
            while size < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    last = True
                    break
                batch.append(item)
                size += len(item.events)
            await self._commit(batch)
            self._last_commit = asyncio.get_running_loop().time()
            if last:
                return

    def _gathering(self) -> float:
        """How long a delivery alone in the queue waits for others to join its commit.

        One loop turn lets deliveries being read and parsed right now join. When
        commits follow each other closely (a steady stream, say 1,000 webhooks/s),
        a commit costs far more than the few deliveries it would hold, so the
        writer waits a little longer for the next ones; a delivery after a quiet
        spell still waits only the one turn.
        """
        since = asyncio.get_running_loop().time() - self._last_commit
        return GATHER_SECONDS if since < BUSY_WITHIN_SECONDS else 0

    async def _commit(self, batch: list[_Delivery]) -> None:
        try:
            outcomes = await self._store(batch)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            # Something in the batch failed: store each delivery alone, so only
            # the faulty one is refused.
            for delivery in batch:
                await self._commit([delivery])
            return
        for delivery, outcome in zip(batch, outcomes, strict=True):
            _settle(delivery, outcome)
        if any(outcome.stored for outcome in outcomes):
            self._on_stored()

    async def _store(self, batch: list[_Delivery]) -> list[IngestOutcome]:
        outcomes = [IngestOutcome() for _ in batch]
        rows: list[IncomingRow] = []
        owners: list[int] = []
        for index, delivery in enumerate(batch):
            for event in delivery.events:
                if isinstance(event, InboundMessage):
                    rows.append(to_row(delivery.broker_id, delivery.provider, event))
                    owners.append(index)
        async with self._sessions() as session, session.begin():
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
        return outcomes

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
                result = await apply_status(session, change)
                if result == StatusOutcome.APPLIED:
                    outcome.statuses_applied += 1
                elif result == StatusOutcome.KEPT:
                    outcome.statuses_kept += 1


def _settle(delivery: _Delivery, result: IngestOutcome | BaseException) -> None:
    if delivery.done.done():  # the caller went away (client disconnected)
        return
    if isinstance(result, BaseException):
        delivery.done.set_exception(result)
    else:
        delivery.done.set_result(result)
