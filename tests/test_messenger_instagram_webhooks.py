"""Messenger and Instagram end to end: signed deliveries through the real webhook route into
the database, replies out through the real adapters to the fake Graph API on loopback.

Two fakes stand for Meta's two hosts: graph.facebook.com (the brokers' Pages) and
graph.instagram.com (an Instagram Login account).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import ClientResponse

from leadline.adapters import meta
from leadline.runtime.sending import Outgoing
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.models import ChatMessage
from leadline.storage.outbox import QueuedMessage, Sent, enqueue, record
from tests.conftest import AppFactory, AppHarness, wait_for
from tests.fakes.graph_api import FakeGraph
from tests.fakes.graph_pages import FakePage, SentPageMessage
from tests.fakes.serving import running_fake
from tests.helpers import count, rows
from tests.helpers import fixture_json as fixture

DEMO_PAGE = "102030405060708"  # the fixtures' Page
ACME_PAGE = "102030405069999"
IG = "17841400000000001"  # the fixtures' Instagram account
PSID = "1254459154682919"
IGSID = "1234567890123456"
APP_SECRET = "meta-app-secret-NOT-REAL"
ENV = {
    "DEMO_PAGE_TOKEN": "EAAGdemoPageTokenNOTREAL",
    "ACME_PAGE_TOKEN": "EAAGacmePageTokenNOTREAL",
    "DEMO_IG_TOKEN": "IGQWdemoTokenNOTREAL",
    "META_APP_SECRET": APP_SECRET,
    "META_VERIFY": "verify-me-please",
}
LEADLINE = str(Path(sys.executable).parent / "leadline")


def toml(facebook: str, instagram: str, features: str = "") -> str:
    return f"""
[brokers.demo]
name = "Demo Realty"
[brokers.demo.providers.messenger]
page_id = "{DEMO_PAGE}"
page_access_token = "${{DEMO_PAGE_TOKEN}}"
app_secret = "${{META_APP_SECRET}}"
verify_token = "${{META_VERIFY}}"
api_base = "{facebook}"
[brokers.demo.providers.instagram]
ig_account_id = "{IG}"
access_token = "${{DEMO_IG_TOKEN}}"
app_secret = "${{META_APP_SECRET}}"
verify_token = "${{META_VERIFY}}"
api_base = "{instagram}"
[brokers.demo.features]
{features}
[brokers.demo.templates]
welcome = "Hi {{name}}! Thanks for writing to {{broker}}."

[brokers.acme]
name = "Acme Homes"
[brokers.acme.providers.messenger]
page_id = "{ACME_PAGE}"
page_access_token = "${{ACME_PAGE_TOKEN}}"
app_secret = "${{META_APP_SECRET}}"
verify_token = "${{META_VERIFY}}"
api_base = "{facebook}"
[brokers.acme.features]
auto_reply = false
"""


@dataclass
class Meta:
    facebook: FakeGraph
    instagram: FakeGraph
    demo: FakePage
    acme: FakePage
    account: FakePage
    urls: tuple[str, str]


@pytest.fixture
async def graph() -> AsyncIterator[Meta]:
    facebook, instagram = FakeGraph(), FakeGraph()
    demo = facebook.add_page(DEMO_PAGE, ENV["DEMO_PAGE_TOKEN"])
    acme = facebook.add_page(ACME_PAGE, ENV["ACME_PAGE_TOKEN"])
    account = instagram.add_instagram_account(IG, ENV["DEMO_IG_TOKEN"])
    async with running_fake(facebook) as fb_url, running_fake(instagram) as ig_url:
        yield Meta(facebook, instagram, demo, acme, account, (fb_url, ig_url))


async def start(make_app: AppFactory, graph: Meta, features: str = "") -> AppHarness:
    app = await make_app(toml(*graph.urls, features), env=ENV)
    app.adapter("demo", "messenger")
    app.adapter("demo", "instagram")
    return app


async def post(
    app: AppHarness, payload: Any, provider: str, broker: str = "demo"
) -> ClientResponse:
    body = json.dumps(payload).encode()
    headers = {meta.SIGNATURE_HEADER: meta.sign(APP_SECRET, body)}
    return await app.client.post(f"/webhooks/{broker}/{provider}", data=body, headers=headers)


def fresh(name: str) -> Any:
    """A fixture happening now: replies to it fall inside the 24-hour window."""
    payload = fixture(name)
    for entry in payload["entry"]:
        for item in entry.get("messaging", []):
            item["timestamp"] = int(time.time() * 1000)
    return payload


async def messages(app: AppHarness, direction: str, provider: str | None = None) -> list[dict]:
    sql = "SELECT * FROM chat_messages WHERE direction = :d ORDER BY id"
    found = await rows(app.service.engine, sql, d=direction)
    return [r for r in found if provider is None or r["provider"] == provider]


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def settle(app: AppHarness) -> None:
    """Time for the reply worker and the dispatcher to act, were they to."""

    async def handled() -> bool:
        sql = "SELECT id FROM chat_messages WHERE direction = 'in' AND handled_at IS NULL"
        return not await rows(app.service.engine, sql)

    await wait_for(handled)
    await asyncio.sleep(0.3)


# --- inbound ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("messenger_text.json", "hello, world!"),
        ("messenger_attachment.json", None),
        ("messenger_postback.json", "Talk to a human"),
    ],
)
async def test_messenger_fixtures_are_stored_as_the_psids_messages(
    make_app: AppFactory, graph: Meta, name: str, text: str | None
) -> None:
    app = await start(make_app, graph)
    payload = fixture(name)
    for _ in range(2):  # a redelivery stores nothing new
        assert (await post(app, payload, "messenger")).status == 200
    [row] = await messages(app, "in")
    assert (row["provider"], row["channel_user_id"], row["message_text"]) == (
        "messenger",
        PSID,
        text,
    )


@pytest.mark.parametrize(
    "name", ["instagram_text.json", "instagram_image.json", "instagram_story_reply.json"]
)
async def test_instagram_fixtures_are_stored_with_their_story_links(
    make_app: AppFactory, graph: Meta, name: str
) -> None:
    app = await start(make_app, graph)
    assert (await post(app, fixture(name), "instagram")).status == 200
    [row] = await messages(app, "in")
    assert (row["provider"], row["channel_user_id"]) == ("instagram", IGSID)
    if name == "instagram_story_reply.json":
        [story] = as_json(row["attachments"])
        assert story["kind"] == "story" and "asset_id=17900000000000001" in story["url"]


@pytest.mark.parametrize(
    ("name", "provider", "user"),
    [("messenger_echo.json", "messenger", PSID), ("instagram_echo.json", "instagram", IGSID)],
)
async def test_a_human_reply_from_metas_inbox_is_stored_as_outbound_and_never_answered(
    make_app: AppFactory, graph: Meta, name: str, provider: str, user: str
) -> None:
    app = await start(make_app, graph)
    for _ in range(2):
        assert (await post(app, fresh(name), provider)).status == 200
    [row] = await messages(app, "out")
    assert (row["status"], row["channel_user_id"], row["attempts"]) == ("sent", user, 0)
    assert as_json(row["provider_metadata"])["echo"] is True
    await settle(app)
    assert graph.demo.sent == [] and graph.account.sent == []
    assert await messages(app, "in") == []


async def test_our_own_echo_is_recognised_and_stored_nowhere(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    assert (await post(app, fresh("messenger_text.json"), "messenger")).status == 200

    async def welcomed() -> bool:
        return len(graph.demo.sent) == 1

    await wait_for(welcomed)
    sent = graph.demo.sent[0]
    echo = fresh("messenger_echo.json")
    message = echo["entry"][0]["messaging"][0]["message"]
    message.update(mid=sent.mid, metadata=sent.body["message"]["metadata"], text=sent.text)
    assert (await post(app, echo, "messenger")).status == 200
    await settle(app)
    outbound = await messages(app, "out")
    assert [(r["channel_message_id"], r["attempts"]) for r in outbound] == [(sent.mid, 1)]
    assert len(graph.demo.sent) == 1  # no loop: the echo was not answered


async def test_an_instagram_echo_that_beats_its_send_gives_way_to_the_send(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)

    async def echo_first(sent: SentPageMessage) -> None:
        echo = fresh("instagram_echo.json")
        echo["entry"][0]["messaging"][0]["message"].update(mid=sent.mid, text=sent.text)
        assert (await post(app, echo, "instagram")).status == 200  # stored as from elsewhere

    graph.account.before_answer = echo_first
    assert (await post(app, fresh("instagram_text.json"), "instagram")).status == 200

    async def recorded() -> bool:
        out = await messages(app, "out")
        return [(r["status"], r["attempts"]) for r in out] == [("sent", 1)]

    await wait_for(recorded)  # one row: ours, with the id; the echo's row gave way
    [row] = await messages(app, "out")
    assert row["channel_message_id"] == graph.account.sent[0].mid


async def test_watermarks_mark_every_earlier_message_delivered_then_read(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    ids = []
    async with app.service.sessions() as session, session.begin():
        lead = await ensure_lead(session, ChannelIdentity("demo", "messenger", PSID))
        for n in range(3):
            # Not due: recorded sent below, never taken by the running dispatcher.
            later = datetime.now(UTC) + timedelta(days=1)
            queued = QueuedMessage(lead, "demo", "messenger", PSID, f"out {n}", send_after=later)
            ids.append(await enqueue(session, queued))
    for n, row_id in enumerate(ids):
        async with app.service.sessions() as session, session.begin():
            await record(session, [Sent(row_id, f"m_out_{n}")])
        if n == 1:
            watermark = int(time.time() * 1000)  # after the first two, before the third
            await asyncio.sleep(1.2)  # more than the watermark's slack
    delivery = fixture("messenger_delivery.json")
    receipt = delivery["entry"][0]["messaging"][0]["delivery"]
    receipt.update(watermark=watermark, mids=[])
    assert (await post(app, delivery, "messenger")).status == 200
    states = [r["status"] for r in await messages(app, "out")]
    assert states == ["delivered", "delivered", "sent"]
    read = fixture("messenger_read.json")
    read["entry"][0]["messaging"][0]["read"]["watermark"] = int(time.time() * 1000)
    assert (await post(app, read, "messenger")).status == 200
    assert [r["status"] for r in await messages(app, "out")] == ["read", "read", "read"]


async def test_a_mixed_out_of_order_batch_loses_nothing_and_keeps_time_order(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    now = int(time.time() * 1000)

    def item(at: int, **event: Any) -> dict[str, Any]:
        return {
            "sender": {"id": PSID},
            "recipient": {"id": DEMO_PAGE},
            "timestamp": now + at,
            **event,
        }

    entries = [
        {"id": DEMO_PAGE, "time": now, "messaging": [
            item(5, message={"mid": "m5", "text": "fifth"}),
            item(1, message={"mid": "m1", "text": "first"}),
            item(3, postback={"title": "See houses", "payload": "HOUSES"}),
        ]},
        {"id": DEMO_PAGE, "time": now, "messaging": [
            item(2, message={"mid": "m2", "text": "second", "quick_reply": {"payload": "Q"}}),
            item(4, reaction={"mid": "m_x", "action": "react", "emoji": "👍"}),
        ], "standby": [item(6, message={"mid": "m6", "text": "while handed over"})]},
    ]  # fmt: skip
    response = await post(app, {"object": "page", "entry": entries}, "messenger")
    assert response.status == 200
    stored = await messages(app, "in")
    assert [r["message_text"] for r in stored] == [
        "first", "second", "See houses", "👍", "fifth", "while handed over"
    ]  # fmt: skip
    await settle(app)
    handled = {r["message_text"]: as_json(r["provider_metadata"]) for r in stored}
    assert handled["while handed over"]["standby"] is True
    assert len(graph.demo.sent) == 1  # one welcome, for the first message only


async def test_a_deleted_message_keeps_its_text_in_the_history(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    payload = fixture("instagram_text.json")
    assert (await post(app, payload, "instagram")).status == 200
    deleted = fixture("instagram_text.json")
    message = deleted["entry"][0]["messaging"][0]["message"]
    deleted["entry"][0]["messaging"][0]["timestamp"] += 5000
    message.pop("text")
    message["is_deleted"] = True
    assert (await post(app, deleted, "instagram")).status == 200
    [row] = await messages(app, "in")
    metadata = as_json(row["provider_metadata"])
    assert row["message_text"] is None and metadata["deleted"] is True
    assert metadata["edits"][0]["text"] == "Do you ship to Canada?"


async def test_another_brokers_page_on_the_same_app_is_stored_under_that_broker(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    payload = fixture("messenger_text.json")
    payload["entry"][0]["id"] = ACME_PAGE
    assert (await post(app, payload, "messenger")).status == 200
    [row] = await messages(app, "in")
    assert row["broker_id"] == "acme"
    payload["entry"][0]["id"] = "999999999"
    assert (await post(app, payload, "messenger")).status == 403


async def test_bad_signatures_are_refused_and_the_handshake_checks_the_token(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    body = json.dumps(fixture("messenger_text.json")).encode()
    missing = await app.client.post("/webhooks/demo/messenger", data=body)
    wrong = await app.client.post(
        "/webhooks/demo/instagram", data=body, headers={meta.SIGNATURE_HEADER: "sha256=00"}
    )
    assert (missing.status, wrong.status) == (401, 403)
    assert await count(app.service.engine, "chat_messages") == 0
    query = {"hub.mode": "subscribe", "hub.challenge": "42", "hub.verify_token": "META_VERIFY"}
    assert (await app.client.get("/webhooks/demo/messenger", params=query)).status == 403
    query["hub.verify_token"] = ENV["META_VERIFY"]
    answer = await app.client.get("/webhooks/demo/instagram", params=query)
    assert (answer.status, await answer.text()) == (200, "42")


# --- outbound through the app -------------------------------------------------------------------


async def test_the_welcome_goes_with_typing_and_the_read_receipt_as_separate_actions(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph, "typing_indicator = true\nread_receipts = true")
    assert (await post(app, fresh("messenger_text.json"), "messenger")).status == 200

    async def done() -> bool:
        return len(graph.demo.sent) == 1 and len(graph.demo.actions) == 2

    await wait_for(done)
    assert sorted(a.action for a in graph.demo.actions) == ["mark_seen", "typing_on"]
    typing = next(a for a in graph.demo.actions if a.action == "typing_on")
    assert typing.at < graph.demo.sent[0].at
    assert graph.demo.sent[0].text == "Hi there! Thanks for writing to Demo Realty."


async def test_outside_the_window_a_reply_fails_but_a_human_agents_goes_tagged(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    old = fixture("messenger_text.json")  # written on 2026-01-01, long ago
    assert (await post(app, old, "messenger")).status == 200

    async def failed() -> bool:
        return [r["status"] for r in await messages(app, "out")] == ["failed"]

    await wait_for(failed)
    [welcome] = await messages(app, "out")
    assert welcome["error"].startswith("window_closed: the 24-hour messaging window is closed")
    # Five days later by the calendar, but within 7 days of the lead's message:
    recent = datetime.now(UTC) - timedelta(days=5)
    async with app.service.engine.begin() as conn:
        await conn.execute(sa.update(ChatMessage).values(created_at=recent))
    lead = welcome["lead_id"]
    await app.service.queue(Outgoing("demo", lead, text="Sam here, following up", human_agent=True))

    async def sent() -> bool:
        return len(graph.demo.sent) == 1

    await wait_for(sent)
    assert (graph.demo.sent[0].messaging_type, graph.demo.sent[0].tag) == (
        "MESSAGE_TAG",
        "HUMAN_AGENT",
    )


# --- the subscription, asked of Meta --------------------------------------------------------------


async def cli(tmp_path: Path, app: AppHarness, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLINE_")}
    env.update(ENV, LEADLINE_BROKERS_FILE=str(app.settings.brokers_file))
    process = await asyncio.create_subprocess_exec(
        LEADLINE, *args, env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert all(secret not in err.decode() for secret in ENV.values())  # the log lines
    return process.returncode or 0, out.decode()


async def test_an_unsubscribed_page_is_reported_and_resubscribed_from_the_command_line(
    make_app: AppFactory, graph: Meta, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    graph.demo.unsubscribe()  # Meta's hour-long outage rule
    app = await start(make_app, graph)
    assert "leadline webhooks subscribe demo messenger" in caplog.text
    code, out = await cli(tmp_path, app, "check", "--online")
    assert code == 1, out
    assert f"online: broker demo, messenger: {DEMO_PAGE} is not subscribed" in out
    assert "online: broker demo, instagram: webhooks delivered here" in out
    assert all(secret not in out for secret in ENV.values())
    code, out = await cli(tmp_path, app, "webhooks", "subscribe", "demo", "messenger")
    assert (code, out.strip()) == (0, "online: broker demo, messenger: webhooks delivered here")
    assert "messages" in graph.demo.subscribed_fields
    code, _ = await cli(tmp_path, app, "check", "--online")
    assert code == 0
