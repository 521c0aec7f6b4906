"""The Telegram adapter in the running app, against the fake Bot API through `api_base`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.conftest import AppFactory, AppHarness, wait_for
from tests.fakes.serving import running_fake
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.helpers import count, rows

DEMO_TOKEN = "111222333:AAE-demo-token-not-real"
ACME_TOKEN = "444555666:AAE-acme-token-not-real"
SECRET = "hook-secret_42"
CHAT = 123456789
PUBLIC_URL = "https://leadline.example"


@dataclass
class World:
    fake: FakeTelegram
    base: str
    demo: FakeBot
    acme: FakeBot


@pytest.fixture
async def world() -> AsyncIterator[World]:
    fake = FakeTelegram()
    demo = fake.add_bot(DEMO_TOKEN, "demo_realty_bot")
    acme = fake.add_bot(ACME_TOKEN, "acme_homes_bot")
    async with running_fake(fake) as base:
        yield World(fake, base, demo, acme)


def polling_toml(base: str, *, typing: bool = False) -> str:
    return f"""
[brokers.demo]
name = "Demo Realty"
[brokers.demo.providers.telegram]
bot_token = "${{DEMO_TOKEN}}"
api_base = "{base}"
poll_timeout = 1
[brokers.demo.templates]
welcome = "Hi {{name}} <b>welcome</b> to {{broker}}"
[brokers.demo.features]
typing_indicator = {str(typing).lower()}

[brokers.acme]
name = "Acme Homes"
[brokers.acme.providers.telegram]
bot_token = "${{ACME_TOKEN}}"
api_base = "{base}"
poll_timeout = 1
"""


def webhook_toml(base: str) -> str:
    return f"""
[brokers.demo]
name = "Demo Realty"
[brokers.demo.providers.telegram]
bot_token = "${{DEMO_TOKEN}}"
api_base = "{base}"
mode = "webhook"
webhook_secret = "${{DEMO_SECRET}}"
"""


ENV = {"DEMO_TOKEN": DEMO_TOKEN, "ACME_TOKEN": ACME_TOKEN, "DEMO_SECRET": SECRET}


async def inbound(app: AppHarness, broker: str = "demo") -> list[dict]:
    return await rows(
        app.service.engine,
        "SELECT * FROM chat_messages WHERE direction = 'in' AND broker_id = :b ORDER BY id",
        b=broker,
    )


async def sent_of(bot: FakeBot, method: str) -> list[dict]:
    return [call.params for call in bot.sent if call.method == method]


async def test_polled_message_is_stored_and_welcomed_with_escaped_html(
    world: World, make_app: AppFactory
):
    app = await make_app(polling_toml(world.base), ENV)
    world.demo.push_update(world.demo.text_update(CHAT, "Hola", first_name="Ana <x>"))
    await wait_for(lambda: _has(inbound(app)))
    (row,) = await inbound(app)
    assert (row["provider"], row["channel_user_id"], row["message_text"]) == (
        "telegram",
        str(CHAT),
        "Hola",
    )

    async def welcomed() -> bool:
        return bool(await sent_of(world.demo, "sendMessage"))

    await wait_for(welcomed)
    (params,) = await sent_of(world.demo, "sendMessage")
    assert params["chat_id"] == CHAT
    assert params["parse_mode"] == "HTML"
    assert params["text"] == "Hi Ana &lt;x&gt; &lt;b&gt;welcome&lt;/b&gt; to Demo Realty"


async def test_offset_confirms_only_what_was_stored(world: World, make_app: AppFactory):
    app = await make_app(polling_toml(world.base), ENV)
    for i in range(5):
        world.demo.push_update(world.demo.text_update(CHAT + i, f"m{i}"))

    async def all_confirmed() -> bool:
        return len(await inbound(app)) == 5 and not world.demo.pending_updates

    await wait_for(all_confirmed)
    assert await count(app.service.engine, "leads") == 5


async def test_two_brokers_poll_while_one_token_is_revoked(world: World, make_app: AppFactory):
    world.acme.revoke()
    app = await make_app(polling_toml(world.base), ENV)
    world.demo.push_update(world.demo.text_update(CHAT, "still here"))
    await wait_for(lambda: _has(inbound(app)))
    health = await (await app.client.get("/healthz")).json()
    assert health["brokers"]["demo"]["providers"]["telegram"]["state"] == "up"
    acme = health["brokers"]["acme"]["providers"]["telegram"]
    assert acme["state"] == "down"
    text = json.dumps(health)
    assert ACME_TOKEN not in text and DEMO_TOKEN not in text
    # Not hammered: one getMe at start, and the first retry waits 5 s (a busy machine
    # may take that long to get here, so one retry may have come).
    assert len([r for r in world.fake.calls("getMe") if r.bot == "acme_homes_bot"]) <= 2


async def test_429_on_get_updates_is_waited_out_exactly(world: World, make_app: AppFactory):
    world.demo.fail_next("getUpdates", "429", retry_after=2)
    world.demo.push_update(world.demo.text_update(CHAT, "after the pause"))
    started = time.monotonic()
    app = await make_app(polling_toml(world.base), ENV)
    await wait_for(lambda: _has(inbound(app)), timeout=15)
    waited = time.monotonic() - started
    assert 2.0 <= waited < 4.0  # the retry_after exactly, not a backoff of its own
    assert len(world.fake.calls("getUpdates")) >= 2


async def test_webhook_conflict_deletes_the_webhook_when_config_says_polling(
    world: World, make_app: AppFactory
):
    world.demo.fail_next("getUpdates", "409", description=(
        "Conflict: can't use getUpdates method while webhook is active; "
        "use deleteWebhook to delete the webhook first"
    ))  # fmt: skip
    app = await make_app(polling_toml(world.base), ENV)

    async def deleted() -> bool:
        return bool(world.fake.calls("deleteWebhook"))

    await wait_for(deleted, timeout=15)
    world.demo.push_update(world.demo.text_update(CHAT, "polling again"))
    await wait_for(lambda: _has(inbound(app)), timeout=15)


async def test_callback_query_is_stored_as_text_and_answered(world: World, make_app: AppFactory):
    app = await make_app(polling_toml(world.base), ENV)
    world.demo.push_update(world.demo.callback_update(CHAT, "visit:42"))

    async def answered() -> bool:
        return bool(await sent_of(world.demo, "answerCallbackQuery"))

    await wait_for(answered)
    (row,) = await inbound(app)
    assert row["message_text"] == "visit:42"


async def test_edited_message_updates_the_original(world: World, make_app: AppFactory):
    app = await make_app(polling_toml(world.base), ENV)
    world.demo.push_update(world.demo.text_update(CHAT, "2 rooms"))
    await wait_for(lambda: _has(inbound(app)))
    message_id = int((await inbound(app))[0]["channel_message_id"].split(":")[1])
    world.demo.push_update(world.demo.edited_update(CHAT, message_id, "3 rooms"))

    async def edited() -> bool:
        found = await inbound(app)
        return len(found) == 1 and found[0]["message_text"] == "3 rooms"

    await wait_for(edited)


async def test_typing_indicator_precedes_the_reply_when_the_feature_is_on(
    world: World, make_app: AppFactory
):
    await make_app(polling_toml(world.base, typing=True), ENV)
    world.demo.push_update(world.demo.text_update(CHAT, "hi"))

    async def replied() -> bool:
        return bool(await sent_of(world.demo, "sendMessage"))

    await wait_for(replied)
    methods = [c.method for c in world.demo.sent if c.method in ("sendChatAction", "sendMessage")]
    assert methods == ["sendChatAction", "sendMessage"]


async def test_blocked_user_fails_the_reply_at_once(world: World, make_app: AppFactory):
    world.demo.blocked_chats.add(CHAT)
    app = await make_app(polling_toml(world.base), ENV)
    world.demo.push_update(world.demo.text_update(CHAT, "hi"))

    async def failed() -> bool:
        out = await rows(app.service.engine, "SELECT * FROM chat_messages WHERE direction='out'")
        return bool(out) and out[0]["status"] == "failed"

    await wait_for(failed)
    (out,) = await rows(app.service.engine, "SELECT * FROM chat_messages WHERE direction='out'")
    assert out["error"].startswith("403:") and out["attempts"] == 1


async def test_group_migrated_to_supergroup_is_rekeyed_and_the_reply_delivered(
    world: World, make_app: AppFactory
):
    group, supergroup = -100, -1001234567890
    world.demo.migrated_chats[group] = supergroup
    app = await make_app(polling_toml(world.base), ENV)
    world.demo.push_update(world.demo.text_update(group, "hi from the group"))

    async def delivered() -> bool:
        return any(p["chat_id"] == supergroup for p in await sent_of(world.demo, "sendMessage"))

    await wait_for(delivered)
    channels = await rows(app.service.engine, "SELECT channel_user_id FROM lead_channels")
    assert [c["channel_user_id"] for c in channels] == [str(supergroup)]


async def test_webhook_mode_sets_the_webhook_and_checks_the_secret(
    world: World, make_app: AppFactory
):
    app = await make_app(webhook_toml(world.base), ENV, public_url=PUBLIC_URL)
    (hook,) = [c.params for c in world.fake.calls("setWebhook")]
    assert hook["secret_token"] == SECRET
    assert hook["url"] == f"{PUBLIC_URL}/webhooks/demo/telegram"
    assert DEMO_TOKEN not in hook["url"]
    update = json.dumps({"update_id": 7, **world.demo.text_update(CHAT, "via webhook")}).encode()
    path = "/webhooks/demo/telegram"
    missing = await app.client.post(path, data=update)
    wrong = await app.client.post(
        path, data=update, headers={"X-Telegram-Bot-Api-Secret-Token": "nope"}
    )
    assert (missing.status, wrong.status) == (401, 401)
    assert await inbound(app) == []
    good = await app.client.post(
        path, data=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
    )
    assert good.status == 200
    assert [r["message_text"] for r in await inbound(app)] == ["via webhook"]


async def test_webhook_callback_is_answered_in_the_response(world: World, make_app: AppFactory):
    app = await make_app(webhook_toml(world.base), ENV, public_url=PUBLIC_URL)
    update = json.dumps({"update_id": 8, **world.demo.callback_update(CHAT, "yes")}).encode()
    response = await app.client.post(
        "/webhooks/demo/telegram",
        data=update,
        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
    )
    body = await response.json()
    assert body["method"] == "answerCallbackQuery"
    assert body["callback_query_id"]


async def test_media_download_goes_through_get_file(world: World, make_app: AppFactory):
    app = await make_app(polling_toml(world.base), ENV)
    world.demo.push_update(world.demo.photo_update(CHAT, "the house", content=b"\x89PNG-bytes"))
    await wait_for(lambda: _has(inbound(app)))
    (row,) = await inbound(app)
    attachments = row["attachments"]
    attachments = json.loads(attachments) if isinstance(attachments, str) else attachments
    from leadline.adapters.base import Attachment

    data = await app.adapter("demo", "telegram").download_media(
        Attachment.from_json(attachments[0])
    )
    assert data == b"\x89PNG-bytes"


async def _has(query) -> bool:
    return bool(await query)


async def _true(value: bool) -> bool:
    await asyncio.sleep(0)
    return value


async def _queue(app: AppHarness, chat: int, text: str | None, **extra: object) -> int:
    from leadline.storage.leads import ChannelIdentity, ensure_lead
    from leadline.storage.outbox import QueuedMessage, enqueue

    async with app.service.sessions() as session, session.begin():
        lead_id = await ensure_lead(session, ChannelIdentity("demo", "telegram", str(chat)))
        row_id = await enqueue(
            session, QueuedMessage(lead_id, "demo", "telegram", str(chat), text, **extra)
        )
    app.service.dispatcher.wake()
    return row_id


async def _row(app: AppHarness, row_id: int) -> dict:
    (found,) = await rows(app.service.engine, "SELECT * FROM chat_messages WHERE id = :i", i=row_id)
    return found


async def test_media_by_url_goes_with_the_text_as_its_caption(world: World, make_app: AppFactory):
    app = await make_app(polling_toml(world.base), ENV)
    photo = {"kind": "image", "url": "https://example.com/house.jpg"}
    document = {"kind": "document", "url": "https://example.com/plan.pdf"}
    row_id = await _queue(app, CHAT, "Casa en Palermo", attachments=[photo, document])

    async def sent() -> bool:
        return (await _row(app, row_id))["status"] == "sent"

    await wait_for(sent)
    (photo_call,) = await sent_of(world.demo, "sendPhoto")
    (document_call,) = await sent_of(world.demo, "sendDocument")
    assert photo_call["photo"] == "https://example.com/house.jpg"
    assert photo_call["caption"] == "Casa en Palermo"
    assert document_call["document"] == "https://example.com/plan.pdf"
    assert "caption" not in document_call
    assert await sent_of(world.demo, "sendMessage") == []


async def test_reply_to_quotes_the_message_in_its_chat(world: World, make_app: AppFactory):
    app = await make_app(polling_toml(world.base), ENV)
    row_id = await _queue(
        app, CHAT, "Sí, sigue disponible", provider_metadata={"reply_to": f"{CHAT}:42"}
    )

    async def sent() -> bool:
        return (await _row(app, row_id))["status"] == "sent"

    await wait_for(sent)
    (params,) = await sent_of(world.demo, "sendMessage")
    assert params["reply_parameters"]["message_id"] == 42


async def test_429_on_send_waits_the_retry_after_then_sends(world: World, make_app: AppFactory):
    app = await make_app(polling_toml(world.base), ENV)
    world.demo.fail_next("sendMessage", "429", retry_after=1)
    row_id = await _queue(app, CHAT, "hola")

    async def postponed() -> bool:
        return (await _row(app, row_id))["error"] is not None

    await wait_for(postponed)
    row = await _row(app, row_id)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["error"].startswith("429:")

    async def sent() -> bool:
        return (await _row(app, row_id))["status"] == "sent"

    await wait_for(sent)
    assert (await _row(app, row_id))["attempts"] == 2


async def test_another_poller_conflict_is_reported_and_keeps_the_webhook_alone(
    world: World, make_app: AppFactory, caplog: pytest.LogCaptureFixture
):
    world.demo.fail_next("getUpdates", "409", description=(
        "Conflict: terminated by other getUpdates request; "
        "make sure that only one bot instance is running"
    ))  # fmt: skip
    app = await make_app(polling_toml(world.base), ENV)
    world.demo.push_update(world.demo.text_update(CHAT, "after the conflict"))
    await wait_for(lambda: _has(inbound(app)), timeout=15)
    assert world.fake.calls("deleteWebhook") == []
    assert any("another process is polling this bot" in r.getMessage() for r in caplog.records)


async def test_unreachable_api_marks_the_bot_down_then_it_recovers(
    world: World, make_app: AppFactory
):
    world.demo.fail_next("getUpdates", "drop", count=2)
    app = await make_app(polling_toml(world.base), ENV)
    seen_down: list[str] = []

    async def went_down() -> bool:
        state = app.service.channels.get("demo", "telegram")
        assert state is not None
        if state.state == "down":
            seen_down.append(state.reason or "")
        return bool(seen_down)

    await wait_for(went_down)
    assert seen_down[0].startswith("Telegram unreachable")
    world.demo.push_update(world.demo.text_update(CHAT, "back again"))
    await wait_for(lambda: _has(inbound(app)), timeout=15)
    channel = app.service.channels.get("demo", "telegram")
    assert channel is not None and channel.state == "up"


async def test_the_webhook_check_names_a_foreign_url_withheld_updates_and_failing_deliveries(
    world: World, make_app: AppFactory
):
    app = await make_app(webhook_toml(world.base), ENV, public_url=PUBLIC_URL)
    adapter = app.adapter("demo", "telegram")
    assert await adapter.subscription_problem() is None
    assert world.demo.webhook is not None
    world.demo.webhook.allowed_updates = ["message"]
    problem = await adapter.subscription_problem()
    assert problem == "Telegram withholds edited_message, callback_query updates from this webhook"
    await adapter.subscribe()  # sets it again, with every kind of update
    assert await adapter.subscription_problem() is None

    world.demo.fail_delivery("Wrong response from the webhook: 502 Bad Gateway")
    assert await adapter.subscription_problem() is None  # nothing waits: it recovered
    world.demo.push_update(world.demo.text_update(CHAT, "waiting"))
    problem = await adapter.subscription_problem()
    assert problem is not None and "502 Bad Gateway" in problem and "1 updates wait" in problem
    world.demo.fail_delivery("Connection timed out", at=time.time() - 2 * 3600)
    assert await adapter.subscription_problem() is None  # an old error is history

    world.demo.webhook.url = "https://elsewhere.example/hook"
    problem = await adapter.subscription_problem()
    assert problem == "Telegram delivers updates to https://elsewhere.example/hook, not here"
