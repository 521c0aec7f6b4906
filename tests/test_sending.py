"""Queueing a message for a lead: which channel it takes, what is refused, and that it goes out."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from leadline.adapters.base import Attachment
from leadline.runtime.sending import CannotQueue, Outgoing
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.types import utcnow
from tests.conftest import AppHarness, wait_for
from tests.helpers import count, rows
from tests.test_webhooks import delivery, message, post


async def lead_of(app: AppHarness, user: str, broker: str = "demo") -> int:
    async with app.service.sessions() as session, session.begin():
        return await ensure_lead(session, ChannelIdentity(broker, "signed", user))


async def add_channel(app: AppHarness, lead_id: int, provider: str, user: str) -> None:
    async with app.service.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO lead_channels (lead_id, broker_id, provider, channel_user_id, "
                "created_at) VALUES (:lead, 'demo', :provider, :user, CURRENT_TIMESTAMP)"
            ),
            {"lead": lead_id, "provider": provider, "user": user},
        )


async def row(app: AppHarness, message_id: int) -> dict:
    (found,) = await rows(
        app.service.engine, "SELECT * FROM chat_messages WHERE id = :id", id=message_id
    )
    return found


async def test_a_queued_message_goes_out_on_the_channel_the_lead_last_wrote_on(app: AppHarness):
    assert (await post(app, delivery(message("m1", sender="u1")))).status == 200
    (lead,) = await rows(app.service.engine, "SELECT lead_id FROM lead_channels")
    message_id = await app.service.queue(Outgoing("demo", lead["lead_id"], text="A visit at 5?"))
    queued = await row(app, message_id)
    # demo's default provider is webchat, but this lead only wrote on `signed`.
    assert (queued["provider"], queued["channel_user_id"]) == ("signed", "u1")
    adapter = app.adapter("demo", "signed")

    async def sent() -> bool:
        return any(m.text == "A visit at 5?" for m in adapter.sent)

    await wait_for(sent)
    await wait_for(lambda: _status_is(app, message_id, "sent"))


async def _status_is(app: AppHarness, message_id: int, status: str) -> bool:
    return (await row(app, message_id))["status"] == status


async def test_the_brokers_default_provider_wins_when_the_lead_has_a_channel_there(
    app: AppHarness,
):
    lead_id = await lead_of(app, "u2")
    await add_channel(app, lead_id, "webchat", "visitor-2")
    message_id = await app.service.queue(Outgoing("demo", lead_id, text="hello"))
    assert (await row(app, message_id))["provider"] == "webchat"


async def test_an_explicit_provider_is_used_and_one_the_lead_lacks_is_refused(app: AppHarness):
    lead_id = await lead_of(app, "u3")
    await add_channel(app, lead_id, "webchat", "visitor-3")
    message_id = await app.service.queue(Outgoing("demo", lead_id, text="hi", provider="signed"))
    assert (await row(app, message_id))["provider"] == "signed"
    other = await lead_of(app, "u4")
    with pytest.raises(CannotQueue, match="no webchat channel"):
        await app.service.queue(Outgoing("demo", other, text="hi", provider="webchat"))


async def test_unfit_messages_are_refused_with_a_reason_and_nothing_is_queued(app: AppHarness):
    lead_id = await lead_of(app, "u5")
    acme_lead = await lead_of(app, "u6", broker="acme")
    refused = {
        "needs a text, an attachment or a template": Outgoing("demo", lead_id, text="   "),
        "unknown broker": Outgoing("nobody", lead_id, text="hi"),
        "no lead": Outgoing("demo", 999_999, text="hi"),
        # Another broker's lead is not this broker's: same answer as an unknown lead.
        "has no lead": Outgoing("demo", acme_lead, text="hi"),
    }
    for reason, outgoing in refused.items():
        with pytest.raises(CannotQueue, match=reason):
            await app.service.queue(outgoing)
    assert await count(app.service.engine, "chat_messages") == 0


async def test_media_reply_to_and_send_after_are_kept_on_the_queued_row(app: AppHarness):
    lead_id = await lead_of(app, "u7")
    later = utcnow() + timedelta(hours=2)
    photo = Attachment(kind="image", url="https://example.com/house.jpg", caption="The house")
    message_id = await app.service.queue(
        Outgoing("demo", lead_id, attachments=[photo], reply_to="m42", send_after=later)
    )
    queued = await row(app, message_id)
    assert queued["status"] == "pending" and queued["message_text"] is None
    assert as_json(queued["attachments"]) == [photo.to_json()]
    assert as_json(queued["provider_metadata"])["reply_to"] == "m42"
    assert app.adapter("demo", "signed").sent == []  # not before its time


def as_json(value: Any) -> Any:
    """A JSON column read with raw SQL: text on SQLite, decoded on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value
