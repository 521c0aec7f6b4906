"""Leads met on Messenger and Instagram, whose webhooks carry no names, are named from the
provider's User Profile API: through the real webhook route, the real adapters and the
fake Graph API on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import sqlalchemy as sa

from leadline.adapters.base import AdapterError, Profile
from leadline.runtime import replies
from leadline.runtime.profiles import ProfileFinder
from leadline.storage.engine import make_session_factory
from leadline.storage.profiles import Nameless, name_lead
from tests import test_messenger_instagram_webhooks as webhooks
from tests.conftest import AppFactory, AppHarness, wait_for
from tests.helpers import rows
from tests.test_messenger_instagram_webhooks import IGSID, PSID, Meta, fresh, post, start

meta_fakes = webhooks.graph  # the `graph` fixture: both Meta hosts faked, on loopback
OTHER_PSID = "2345678901234567"  # a second Messenger user of the demo Page


async def lead_of(app: AppHarness, provider: str, user: str) -> dict[str, Any] | None:
    found = await rows(
        app.service.engine,
        "SELECT l.*, c.channel_username FROM leads l JOIN lead_channels c ON c.lead_id = l.id "
        "WHERE c.provider = :p AND c.channel_user_id = :u",
        p=provider,
        u=user,
    )
    return found[0] if found else None


def profile_reads(fake: Any, user: str) -> int:
    return len([r for r in fake.requests if r.http_method == "GET" and r.path.endswith(user)])


async def named(app: AppHarness, provider: str, user: str) -> str | None:
    lead = await lead_of(app, provider, user)
    return lead["name"] if lead else None


async def test_a_messenger_lead_is_named_from_its_profile_after_its_first_message(
    make_app: AppFactory, meta_fakes: Meta
) -> None:
    meta_fakes.demo.add_profile(PSID, first_name="Ana", last_name="García", profile_pic="https://x")
    app = await start(make_app, meta_fakes)
    assert (await post(app, fresh("messenger_text.json"), "messenger")).status == 200

    async def has_name() -> bool:
        return await named(app, "messenger", PSID) == "Ana García"

    await wait_for(has_name, timeout=10)
    assert profile_reads(meta_fakes.facebook, PSID) == 1


async def test_an_instagram_lead_gets_its_name_and_its_username(
    make_app: AppFactory, meta_fakes: Meta
) -> None:
    meta_fakes.account.add_profile(IGSID, name="Bruno Díaz", username="bruno.homes")
    app = await start(make_app, meta_fakes)
    assert (await post(app, fresh("instagram_text.json"), "instagram")).status == 200

    async def has_name() -> bool:
        return await named(app, "instagram", IGSID) == "Bruno Díaz"

    await wait_for(has_name, timeout=10)
    lead = await lead_of(app, "instagram", IGSID)
    assert lead is not None and lead["channel_username"] == "bruno.homes"


async def test_a_user_with_no_profile_is_recorded_and_never_asked_again(
    make_app: AppFactory, meta_fakes: Meta
) -> None:
    meta_fakes.demo.add_profile(PSID)  # a Messenger account made with a phone number: 2018218
    app = await start(make_app, meta_fakes)
    await post(app, fresh("messenger_text.json"), "messenger")

    async def recorded() -> bool:
        lead = await lead_of(app, "messenger", PSID)
        metadata = lead and lead["lead_metadata"]
        return bool(metadata) and "messenger" in _json(metadata).get("no_profile", [])

    await wait_for(recorded, timeout=10)
    later = fresh("messenger_text.json")
    later["entry"][0]["messaging"][0]["message"]["mid"] += "-later"
    await post(app, later, "messenger")
    await wait_for(lambda: _inbound(app, 2), timeout=10)
    await app.service.pipeline.stop()  # nothing more to wake for
    assert profile_reads(meta_fakes.facebook, PSID) == 1
    restarted = ProfileFinder(app.service.sessions, app.service.channels, pace=0)
    await restarted.round()  # a new process looks back a week: the record stops it
    assert profile_reads(meta_fakes.facebook, PSID) == 1
    assert await named(app, "messenger", PSID) is None


async def test_a_profile_that_could_not_be_read_is_read_again_later(
    make_app: AppFactory, meta_fakes: Meta
) -> None:
    meta_fakes.demo.add_profile(PSID, first_name="Ana")
    meta_fakes.demo.fail_next_profile("500")  # Graph's code 2: "please retry later"
    app = await start(make_app, meta_fakes)
    await post(app, fresh("messenger_text.json"), "messenger")
    await wait_for(lambda: _reads(meta_fakes, 1), timeout=10)

    later = fresh("messenger_text.json")
    later["entry"][0]["messaging"][0]["message"]["mid"] += "-later"
    await post(app, later, "messenger")  # a new delivery wakes the finder, if nothing did

    async def has_name() -> bool:
        return await named(app, "messenger", PSID) == "Ana"

    await wait_for(has_name, timeout=10)
    assert profile_reads(meta_fakes.facebook, PSID) == 2  # the failed read, then the good one


async def test_profile_lookup_turned_off_reads_no_profile(
    make_app: AppFactory, meta_fakes: Meta
) -> None:
    meta_fakes.demo.add_profile(PSID, first_name="Ana")
    app = await start(make_app, meta_fakes, features="profile_lookup = false")
    await post(app, fresh("messenger_text.json"), "messenger")
    await wait_for(lambda: _inbound(app, 1), timeout=10)
    await wait_for(lambda: _welcomed(app), timeout=10)  # the service has moved on
    assert profile_reads(meta_fakes.facebook, PSID) == 0
    assert await named(app, "messenger", PSID) is None


async def test_an_expired_token_is_the_channels_trouble_not_a_missing_profile(
    make_app: AppFactory, meta_fakes: Meta
) -> None:
    meta_fakes.demo.add_profile(PSID, first_name="Ana")
    app = await start(make_app, meta_fakes, features="profile_lookup = false")
    adapter = app.adapter("demo", "messenger")
    assert await adapter.profile(PSID) == Profile(name="Ana")
    meta_fakes.demo.add_profile("999", first_name=" ", last_name="")
    assert await adapter.profile("999") is None  # blank names are no name
    meta_fakes.demo.expire_token()
    with pytest.raises(AdapterError) as raised:
        await adapter.profile(PSID)
    assert "EAAG" not in str(raised.value)


async def test_a_name_the_broker_gave_is_never_overwritten_by_a_profile(
    make_app: AppFactory, meta_fakes: Meta
) -> None:
    app = await start(make_app, meta_fakes, features="profile_lookup = false")
    await post(app, fresh("messenger_text.json"), "messenger")
    await wait_for(lambda: _inbound(app, 1), timeout=10)
    lead = await lead_of(app, "messenger", PSID)
    assert lead is not None
    async with app.service.engine.begin() as conn:
        await conn.execute(sa.text("UPDATE leads SET name = 'Ana (CRM)' WHERE id = :id"), lead)
    who = Nameless(lead["id"], "demo", "messenger", PSID)
    async with make_session_factory(app.service.engine)() as session, session.begin():
        assert not await name_lead(session, who, "Ana García", None)
    assert await named(app, "messenger", PSID) == "Ana (CRM)"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def _inbound(app: AppHarness, n: int) -> bool:
    found = await rows(app.service.engine, "SELECT id FROM chat_messages WHERE direction = 'in'")
    return len(found) == n


async def _welcomed(app: AppHarness) -> bool:
    found = await rows(app.service.engine, "SELECT status FROM chat_messages WHERE direction='out'")
    return bool(found) and found[0]["status"] != "pending"


async def _reads(fakes: Meta, n: int) -> bool:
    return profile_reads(fakes.facebook, PSID) >= n


async def test_a_new_leads_welcome_greets_it_by_the_name_its_profile_gives(
    make_app: AppFactory, meta_fakes: Meta, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The welcome waits for the profile, not for the clock: on a busy machine the
    # 2 s could run out before the profile's (instant) answer is recorded.
    monkeypatch.setattr(replies, "INTRODUCE_SECONDS", 60.0)
    meta_fakes.demo.add_profile(PSID, first_name="Ana", last_name="García")
    app = await start(make_app, meta_fakes)
    await post(app, fresh("messenger_text.json"), "messenger")

    async def welcomed() -> bool:
        return bool(meta_fakes.demo.sent)

    await wait_for(welcomed, timeout=10)
    assert meta_fakes.demo.sent[0].text == "Hi Ana García! Thanks for writing to Demo Realty."


async def test_a_profile_that_does_not_answer_delays_the_welcome_two_seconds_at_most(
    make_app: AppFactory, meta_fakes: Meta
) -> None:
    meta_fakes.demo.add_profile(PSID, first_name="Ana")
    held = meta_fakes.demo.hold_profile(PSID)  # the profile read hangs
    app = await start(make_app, meta_fakes)
    started = asyncio.get_running_loop().time()
    try:
        await post(app, fresh("messenger_text.json"), "messenger")

        async def welcomed() -> bool:
            return bool(meta_fakes.demo.sent)

        await wait_for(welcomed, timeout=10)
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        held.set()
    assert meta_fakes.demo.sent[0].text == "Hi there! Thanks for writing to Demo Realty."


def from_user(user: str) -> Any:
    """A fresh Messenger text from another user of the demo Page."""
    payload = fresh("messenger_text.json")
    item = payload["entry"][0]["messaging"][0]
    item["sender"]["id"] = user
    item["message"]["mid"] += f"-{user}"
    return payload


async def _waiting_for_profiles(caplog: pytest.LogCaptureFixture) -> bool:
    """The reply worker has peeked a message and waits for its lead's profile."""
    return any(
        r.name == replies.__name__ and r.getMessage().startswith("waiting for the profiles")
        for r in caplog.records
    )


def welcome_to(fakes: Meta, user: str) -> str | None:
    texts = [m.text for m in fakes.demo.sent if m.recipient == user]
    return texts[0] if texts else None


async def test_a_lead_writing_while_anothers_profile_is_awaited_gets_a_welcome_by_its_own_name(
    make_app: AppFactory,
    meta_fakes: Meta,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(replies, "INTRODUCE_SECONDS", 60.0)  # the wait ends when Ana's does
    caplog.set_level(logging.DEBUG, logger=replies.__name__)
    meta_fakes.demo.add_profile(PSID, first_name="Ana")
    meta_fakes.demo.add_profile(OTHER_PSID, first_name="Bruno")
    held = meta_fakes.demo.hold_profile(PSID)
    app = await start(make_app, meta_fakes)
    try:
        assert (await post(app, fresh("messenger_text.json"), "messenger")).status == 200
        await wait_for(lambda: _waiting_for_profiles(caplog), timeout=30)
        # Bruno writes while the worker waits for Ana's profile; his message is stored.
        assert (await post(app, from_user(OTHER_PSID), "messenger")).status == 200
        held.set()  # Ana's profile answers: her wait ends

        async def both_welcomed() -> bool:
            return len(meta_fakes.demo.sent) == 2

        await wait_for(both_welcomed, timeout=30)
    finally:
        held.set()
    assert welcome_to(meta_fakes, PSID) == "Hi Ana! Thanks for writing to Demo Realty."
    # Not decided with Ana's: his own wait saw his own profile.
    assert welcome_to(meta_fakes, OTHER_PSID) == "Hi Bruno! Thanks for writing to Demo Realty."


async def test_a_profile_that_never_answers_holds_up_no_other_leads_welcome(
    make_app: AppFactory,
    meta_fakes: Meta,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Long enough for Bruno's own read on a busy machine; Ana's wait runs all of it out.
    monkeypatch.setattr(replies, "INTRODUCE_SECONDS", 4.0)
    caplog.set_level(logging.DEBUG, logger=replies.__name__)
    meta_fakes.demo.add_profile(PSID, first_name="Ana")
    meta_fakes.demo.add_profile(OTHER_PSID, first_name="Bruno")
    held = meta_fakes.demo.hold_profile(PSID)  # Ana's profile read hangs
    app = await start(make_app, meta_fakes)
    try:
        await post(app, fresh("messenger_text.json"), "messenger")
        await wait_for(lambda: _waiting_for_profiles(caplog), timeout=30)
        await post(app, from_user(OTHER_PSID), "messenger")

        async def both_welcomed() -> bool:
            return len(meta_fakes.demo.sent) == 2

        await wait_for(both_welcomed, timeout=30)
        assert await named(app, "messenger", PSID) is None  # still unanswered
    finally:
        held.set()
    assert welcome_to(meta_fakes, PSID) == "Hi there! Thanks for writing to Demo Realty."
    # Read at once, beside Ana's hanging read, not after it.
    assert welcome_to(meta_fakes, OTHER_PSID) == "Hi Bruno! Thanks for writing to Demo Realty."
    assert profile_reads(meta_fakes.facebook, OTHER_PSID) == 1
