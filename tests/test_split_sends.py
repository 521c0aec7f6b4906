"""A message that goes as several sends (issue 15, item 6): every part's provider id is
kept (`chat_message_parts`), so echoes and status reports of any part find our row, and
no echo of ours is stored as a human's reply or counts as a human's answer.

End to end through the real webhook route, dispatcher and Graph adapters to the fake
Graph API (Instagram: 1,000 bytes per message; Messenger: 2,000 characters), then the
same rules at the storage level for every provider that splits (WhatsApp's long texts,
TikTok's text and image), on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus
from leadline.runtime.sending import Outgoing
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.conversation import answered_by_human
from leadline.storage.inbound import IncomingRow, insert_messages
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.messages import (
    StatusChange,
    StatusOutcome,
    apply_status,
    settle_early_statuses,
)
from leadline.storage.models import ChatMessage
from leadline.storage.outbox import QueuedMessage, Sent, enqueue, record
from leadline.storage.types import utcnow
from tests.conftest import AppFactory, AppHarness, wait_for
from tests.fakes.graph_api import FakeGraph
from tests.fakes.graph_pages import FakePage, SentPageMessage
from tests.fakes.serving import running_fake
from tests.helpers import rows
from tests.test_messenger_instagram_webhooks import (
    ACME_PAGE,
    DEMO_PAGE,
    ENV,
    IG,
    IGSID,
    PSID,
    Meta,
    fresh,
    messages,
    post,
    start,
)

WORDS = "a flat with a view of the river, two bedrooms and a balcony; "
LONG = (WORDS * 60).strip()  # 3,719 bytes: 4 parts on Instagram, 2 on Messenger
QUIET = "auto_reply = false"  # no welcome: the long message is the only send
EPOCH = utcnow() - timedelta(days=1)  # "since" for the reply rules: before anything here


@pytest.fixture
async def graph() -> AsyncIterator[Meta]:
    facebook, instagram = FakeGraph(), FakeGraph()
    demo = facebook.add_page(DEMO_PAGE, ENV["DEMO_PAGE_TOKEN"])
    acme = facebook.add_page(ACME_PAGE, ENV["ACME_PAGE_TOKEN"])
    account = instagram.add_instagram_account(IG, ENV["DEMO_IG_TOKEN"])
    async with running_fake(facebook) as fb_url, running_fake(instagram) as ig_url:
        yield Meta(facebook, instagram, demo, acme, account, (fb_url, ig_url))


class Channel:
    """One Graph channel under test: its provider, chat user and the fake's account."""

    def __init__(self, graph: Meta, provider: str) -> None:
        self.provider = provider
        self.user = IGSID if provider == "instagram" else PSID
        self.account: FakePage = graph.account if provider == "instagram" else graph.demo
        self.inbound = f"{provider}_text.json"

    def echo(self, sent: SentPageMessage) -> dict[str, Any]:
        """Meta's echo of one part as it sends it: Messenger echoes the part's metadata
        back, Instagram echoes none."""
        payload = fresh(f"{self.provider}_echo.json")
        message = payload["entry"][0]["messaging"][0]["message"]
        message.update(mid=sent.mid, text=sent.text)
        message.pop("metadata", None)
        if "metadata" in sent.body["message"]:
            message["metadata"] = sent.body["message"]["metadata"]
        return payload

    def seen(self, mid: str) -> dict[str, Any]:
        """Instagram's read (`messaging_seen`) or Messenger's delivery (by `mids`) of one
        message (the status it reports: `seen_status`)."""
        payload = fresh(f"{self.provider}_text.json")
        item = payload["entry"][0]["messaging"][0]
        item.pop("message")
        if self.provider == "instagram":
            item["read"] = {"mid": mid}
        else:
            item["delivery"] = {"mids": [mid], "watermark": 0}
        return payload

    @property
    def seen_status(self) -> str:
        return "read" if self.provider == "instagram" else "delivered"


PROVIDERS = ["instagram", "messenger"]


async def lead_writes(app: AppHarness, channel: Channel) -> int:
    """The lead writes (so the messaging window is open); returns the lead's id."""
    assert (await post(app, fresh(channel.inbound), channel.provider)).status == 200
    [row] = await messages(app, "in", channel.provider)
    return row["lead_id"]


async def send_long(app: AppHarness, lead_id: int, channel: Channel) -> int:
    """A rule's long reply (a rule's: it is no human answer of itself)."""
    return await app.service.queue(
        Outgoing("demo", lead_id, LONG, provider=channel.provider, metadata={"rule": "keyword"})
    )


async def recorded(app: AppHarness, row_id: int) -> dict[str, Any]:
    async def sent() -> bool:
        found = await rows(
            app.service.engine, "SELECT status FROM chat_messages WHERE id = :i", i=row_id
        )
        return found[0]["status"] != "pending"

    await wait_for(sent, timeout=30)
    [row] = await rows(app.service.engine, "SELECT * FROM chat_messages WHERE id = :i", i=row_id)
    return row


async def parts_of(app: AppHarness, row_id: int) -> list[str]:
    sql = "SELECT channel_message_id FROM chat_message_parts WHERE message_id = :i ORDER BY part"
    return [r["channel_message_id"] for r in await rows(app.service.engine, sql, i=row_id)]


async def human_answered(app: AppHarness, lead_id: int) -> bool:
    async with app.service.sessions() as session:
        return await answered_by_human(session, lead_id, EPOCH)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_echoes_of_every_part_after_the_send_are_ours_and_no_human_answer(
    make_app: AppFactory, graph: Meta, provider: str
) -> None:
    app = await start(make_app, graph, QUIET)
    channel = Channel(graph, provider)
    lead_id = await lead_writes(app, channel)
    row_id = await send_long(app, lead_id, channel)
    row = await recorded(app, row_id)
    sent = channel.account.sent
    assert len(sent) > 1 and "".join(s.text or "" for s in sent).replace(" ", "") == LONG.replace(
        " ", ""
    )
    assert (row["status"], row["channel_message_id"]) == ("sent", sent[-1].mid)
    assert await parts_of(app, row_id) == [s.mid for s in sent]
    for _ in range(2):  # and Meta's redelivery of them
        for part in sent:
            assert (await post(app, channel.echo(part), provider)).status == 200
    assert [r["id"] for r in await messages(app, "out")] == [row_id]
    assert not await human_answered(app, lead_id)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_echoes_that_beat_the_send_give_way_and_never_count_as_a_human_answer(
    make_app: AppFactory, graph: Meta, provider: str
) -> None:
    app = await start(make_app, graph, QUIET)
    channel = Channel(graph, provider)
    lead_id = await lead_writes(app, channel)
    answered_meanwhile: list[bool] = []

    async def echo_first(sent: SentPageMessage) -> None:
        # Each part's echo arrives before its send call returns: part 1's is stored
        # while the rest are still being sent.
        assert (await post(app, channel.echo(sent), provider)).status == 200
        answered_meanwhile.append(await human_answered(app, lead_id))

    channel.account.before_answer = echo_first
    row_id = await send_long(app, lead_id, channel)
    row = await recorded(app, row_id)
    channel.account.before_answer = None
    sent = channel.account.sent
    assert len(sent) > 1 and row["status"] == "sent"
    assert answered_meanwhile == [False] * len(sent)
    out = await messages(app, "out")
    assert [(r["id"], r["attempts"]) for r in out] == [(row_id, 1)]  # the echoes gave way
    for part in sent:  # echoes again, after the send: not stored either
        assert (await post(app, channel.echo(part), provider)).status == 200
    assert [r["id"] for r in await messages(app, "out")] == [row_id]
    assert not await human_answered(app, lead_id)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_status_for_the_first_part_finds_the_message(
    make_app: AppFactory, graph: Meta, provider: str
) -> None:
    app = await start(make_app, graph, QUIET)
    channel = Channel(graph, provider)
    lead_id = await lead_writes(app, channel)
    row_id = await send_long(app, lead_id, channel)
    await recorded(app, row_id)
    first = channel.account.sent[0].mid
    assert (await post(app, channel.seen(first), provider)).status == 200
    [row] = await rows(app.service.engine, "SELECT * FROM chat_messages WHERE id = :i", i=row_id)
    assert row["status"] == channel.seen_status
    assert await rows(app.service.engine, "SELECT * FROM early_statuses") == []


async def test_a_status_for_the_first_part_before_the_send_returned_is_applied(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph, QUIET)
    channel = Channel(graph, "instagram")
    lead_id = await lead_writes(app, channel)

    async def read_early(sent: SentPageMessage) -> None:
        if len(channel.account.sent) == 2:  # part 1 is read while part 2 goes
            first = channel.account.sent[0].mid
            assert (await post(app, channel.seen(first), "instagram")).status == 200

    channel.account.before_answer = read_early
    row_id = await send_long(app, lead_id, channel)
    await recorded(app, row_id)

    async def read() -> bool:
        sql = "SELECT status FROM chat_messages WHERE id = :i"
        return (await rows(app.service.engine, sql, i=row_id))[0]["status"] == "read"

    await wait_for(read)


# --- the same rules in storage, for every provider that splits ----------------------------


async def queued(
    sessions: async_sessionmaker[AsyncSession], provider: str, user: str = "u1"
) -> tuple[int, int]:
    """A lead and a rule's reply to it, taken by a sender (one attempt): (lead, row)."""
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("demo", "Demo", "UTC")])
        lead = await ensure_lead(session, ChannelIdentity("demo", provider, user))
        message = QueuedMessage(
            lead, "demo", provider, user, "long text", provider_metadata={"rule": "keyword"}
        )
        row_id = await enqueue(session, message)
        taken = await session.get(ChatMessage, row_id)
        assert taken is not None
        taken.attempts = 1
    return lead, row_id


def echo(provider: str, mid: str, user: str = "u1") -> IncomingRow:
    return IncomingRow(
        ChannelIdentity("demo", provider, user),
        mid,
        "a part",
        provider_metadata={"echo": True},
        direction=Direction.OUT,
    )


def sent(row_id: int, provider: str, parts: list[str]) -> Sent:
    return Sent(row_id, parts[-1], echoed_on=("demo", provider), parts=parts)


async def out_rows(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[int | None, int]]:
    async with sessions() as session:
        found = await session.exec(
            ChatMessage.__table__.select().where(ChatMessage.__table__.c.direction == "out")  # type: ignore[attr-defined]
        )
        return [(r.id, r.attempts) for r in found]


@pytest.mark.parametrize("provider", ["tiktok", "whatsapp"])
async def test_an_echo_of_a_part_stored_first_gives_way_and_later_ones_are_not_stored(
    sessions: async_sessionmaker[AsyncSession], provider: str
) -> None:
    lead, row_id = await queued(sessions, provider)
    async with sessions() as session, session.begin():
        assert len(await insert_messages(session, [echo(provider, "p1")])) == 1
    async with sessions() as session:
        # Still being sent: the echo may be a part of it, no human's answer yet.
        assert not await answered_by_human(session, lead, EPOCH)
    async with sessions() as session, session.begin():
        await record(session, [sent(row_id, provider, ["p1", "p2", "p3"])])
    assert await out_rows(sessions) == [(row_id, 1)]
    async with sessions() as session, session.begin():
        rows_ = [echo(provider, p) for p in ("p1", "p2", "p3")]
        assert await insert_messages(session, rows_) == {}
    async with sessions() as session:
        assert not await answered_by_human(session, lead, EPOCH)
    assert await out_rows(sessions) == [(row_id, 1)]


@pytest.mark.parametrize("provider", ["tiktok", "whatsapp"])
async def test_statuses_of_any_part_move_the_message_forward_only(
    sessions: async_sessionmaker[AsyncSession], provider: str
) -> None:
    _, row_id = await queued(sessions, provider)

    def change(mid: str, status: MessageStatus) -> StatusChange:
        return StatusChange("demo", provider, mid, status)

    async with sessions() as session, session.begin():
        # Part 2 delivered before the send returned: kept, then applied by the record.
        assert await apply_status(session, change("p2", MessageStatus.DELIVERED)) == (
            StatusOutcome.KEPT
        )
    async with sessions() as session, session.begin():
        await record(session, [sent(row_id, provider, ["p1", "p2", "p3"])])
    async with sessions() as session, session.begin():
        assert (await session.get(ChatMessage, row_id)).status == MessageStatus.DELIVERED  # type: ignore[union-attr]
        assert await apply_status(session, change("p1", MessageStatus.READ)) == (
            StatusOutcome.APPLIED
        )
        assert await apply_status(session, change("p3", MessageStatus.DELIVERED)) == (
            StatusOutcome.STALE
        )
        assert (await session.get(ChatMessage, row_id)).status == MessageStatus.READ  # type: ignore[union-attr]


async def test_an_echo_that_crossed_the_record_is_dropped_by_the_sweep(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """PostgreSQL: an echo stored while the send's record commits sees no part and is
    not seen by the record; the dispatcher's sweep (settle) drops it."""
    lead, row_id = await queued(sessions, "instagram")
    async with sessions() as session, session.begin():
        await record(session, [sent(row_id, "instagram", ["p1", "p2"])])
    async with sessions() as session, session.begin():
        now = utcnow()
        crossed = ChatMessage(
            lead_id=lead,
            broker_id="demo",
            provider="instagram",
            channel_user_id="u1",
            channel_message_id="p1",
            direction=Direction.OUT,
            status=MessageStatus.SENT,
            provider_metadata={"echo": True},
            created_at=now,
            updated_at=now,
        )
        session.add(crossed)  # as the crossing transaction stored it
    async with sessions() as session, session.begin():
        await settle_early_statuses(session, utcnow() - timedelta(days=7))
    assert await out_rows(sessions) == [(row_id, 1)]
    async with sessions() as session:
        assert not await answered_by_human(session, lead, EPOCH)


async def test_a_human_reply_from_the_inbox_still_counts_once_our_send_is_recorded(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Not every echo is ours: one that is no part of the send is a human's answer."""
    lead, row_id = await queued(sessions, "instagram")
    async with sessions() as session, session.begin():
        await insert_messages(session, [echo("instagram", "human-1")])
        await record(session, [sent(row_id, "instagram", ["p1", "p2"])])
    async with sessions() as session:
        assert await answered_by_human(session, lead, EPOCH)
    assert len(await out_rows(sessions)) == 2
