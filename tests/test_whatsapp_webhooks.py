"""WhatsApp end to end: signed deliveries through the real webhook route into the database,
replies out through the real adapter (pywa_async) to the fake Graph API on loopback.

Every `whatsapp_*` webhook fixture is posted as Meta would: its bytes signed with the
app secret in `X-Hub-Signature-256`. The fixtures carry no `contacts[].user_id`, so
pywa itself cannot turn them into objects (checked below): storage never depends on it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import ClientResponse

from leadline.adapters import meta
from leadline.adapters.base import Attachment, OutboundMessage
from leadline.storage.models import ChatMessage
from tests.conftest import AppFactory, AppHarness, wait_for
from tests.fakes.graph_api import FakeGraph, FakeNumber, SentMessage
from tests.fakes.serving import running_fake
from tests.helpers import count, provider_fixture, rows
from tests.helpers import fixture_json as fixture

DEMO_NUMBER = "106540352242922"  # the fixtures' phone_number_id
ACME_NUMBER = "106540352242999"
APP_SECRET = "test_app_secret_NOT_REAL"  # meta_signature_example.json's
ENV = {
    "DEMO_WA_TOKEN": "EAAGdemoTokenNOTREAL123",
    "ACME_WA_TOKEN": "EAAGacmeTokenNOTREAL456",
    "META_APP_SECRET": APP_SECRET,
    "WA_VERIFY": "verify-me-please",
}
LEAD = "16505551234"  # Sheena Nelson's wa_id in the fixtures
MESSAGE_FIXTURES = {
    "whatsapp_text.json": 1,
    "whatsapp_image.json": 1,
    "whatsapp_interactive_button_reply.json": 1,
    "whatsapp_interactive_list_reply.json": 1,
    "whatsapp_multi_messages.json": 3,
}


def fresh(name: str) -> Any:
    """A fixture written just now: replies to it fall inside the 24-hour window."""
    payload = fixture(name)
    now = str(int(time.time()))
    for entry in payload["entry"]:
        for change in entry["changes"]:
            for message in change["value"].get("messages", []):
                message["timestamp"] = now
    return payload


def toml(base: str, *, demo_features: str = "", window_template: str = "") -> str:
    return f"""
[brokers.demo]
name = "Demo Realty"
[brokers.demo.providers.whatsapp]
phone_number_id = "{DEMO_NUMBER}"
access_token = "${{DEMO_WA_TOKEN}}"
app_secret = "${{META_APP_SECRET}}"
verify_token = "${{WA_VERIFY}}"
api_base = "{base}"
{window_template}
[brokers.demo.features]
{demo_features}
[brokers.demo.templates]
welcome = "Hi {{name}}! Thanks for writing to {{broker}}."

[brokers.acme]
name = "Acme Homes"
[brokers.acme.providers.whatsapp]
phone_number_id = "{ACME_NUMBER}"
access_token = "${{ACME_WA_TOKEN}}"
app_secret = "${{META_APP_SECRET}}"
verify_token = "${{WA_VERIFY}}"
api_base = "{base}"
[brokers.acme.features]
auto_reply = false
"""


@dataclass
class Meta:
    """The fake Graph API with both brokers' numbers, served on loopback."""

    fake: FakeGraph
    demo: FakeNumber
    acme: FakeNumber
    base_url: str


@pytest.fixture
async def graph() -> AsyncIterator[Meta]:
    fake = FakeGraph()
    demo = fake.add_number(DEMO_NUMBER, ENV["DEMO_WA_TOKEN"])
    acme = fake.add_number(ACME_NUMBER, ENV["ACME_WA_TOKEN"])
    async with running_fake(fake) as base_url:
        yield Meta(fake, demo, acme, base_url)


async def start(make_app: AppFactory, graph: Meta, **options: str) -> AppHarness:
    app = await make_app(toml(graph.base_url, **options), env=ENV)
    app.adapter("demo", "whatsapp")  # up: the fake accepted its token
    return app


async def post_body(
    app: AppHarness, body: bytes, broker: str = "demo", secret: str | None = APP_SECRET
) -> ClientResponse:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[meta.SIGNATURE_HEADER] = meta.sign(secret, body)
    return await app.client.post(f"/webhooks/{broker}/whatsapp", data=body, headers=headers)


async def post(app: AppHarness, payload: Any, broker: str = "demo") -> ClientResponse:
    return await post_body(app, json.dumps(payload).encode(), broker)


async def inbound(app: AppHarness, broker: str = "demo") -> list[dict[str, Any]]:
    sql = "SELECT * FROM chat_messages WHERE direction = 'in' AND broker_id = :b ORDER BY id"
    return await rows(app.service.engine, sql, b=broker)


async def outbound(app: AppHarness) -> list[dict[str, Any]]:
    sql = "SELECT * FROM chat_messages WHERE direction = 'out' ORDER BY id"
    return await rows(app.service.engine, sql)


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# --- every fixture through the signed route ----------------------------------------------


@pytest.mark.parametrize(("name", "messages"), MESSAGE_FIXTURES.items())
async def test_every_message_fixture_is_stored_with_its_lead_named_from_the_profile(
    make_app: AppFactory, graph: Meta, name: str, messages: int
) -> None:
    app = await start(make_app, graph)
    payload = fixture(name)
    response = await post(app, payload)
    assert response.status == 200, await response.text()
    stored = await inbound(app)
    assert len(stored) == messages
    wamids = [
        m["id"] for c in payload["entry"][0]["changes"] for m in c["value"].get("messages", [])
    ]
    assert [r["channel_message_id"] for r in stored] == wamids
    senders = {
        m["from"] for c in payload["entry"][0]["changes"] for m in c["value"].get("messages", [])
    }
    assert {r["channel_user_id"] for r in stored} == senders  # the wa_id is the chat user
    leads = await rows(app.service.engine, "SELECT name FROM leads ORDER BY id")
    profiles = {
        c["profile"]["name"]
        for ch in payload["entry"][0]["changes"]
        for c in ch["value"].get("contacts", [])
    }
    assert {lead["name"] for lead in leads} == profiles
    # Stored again by a redelivery? Nothing new.
    assert (await post(app, payload)).status == 200
    assert len(await inbound(app)) == messages


async def test_an_image_keeps_its_media_id_and_caption(make_app: AppFactory, graph: Meta) -> None:
    app = await start(make_app, graph)
    payload = fixture("whatsapp_image.json")
    image = payload["entry"][0]["changes"][0]["value"]["messages"][0]["image"]
    assert (await post(app, payload)).status == 200
    [row] = await inbound(app)
    [attachment] = as_json(row["attachments"])
    assert (attachment["kind"], attachment["ref"]) == ("image", image["id"])
    assert row["message_text"] == image.get("caption")


async def test_pywa_cannot_parse_the_fixtures_yet_every_one_is_stored(
    make_app: AppFactory, graph: Meta
) -> None:
    from pywa_async import WhatsApp
    from pywa_async.types import Message

    client = WhatsApp(phone_id=DEMO_NUMBER, token=None)
    payload = fixture("whatsapp_text.json")
    with pytest.raises(KeyError, match="user_id"):  # pywa 4.5 needs contacts[].user_id
        Message.from_update(client, payload)
    app = await start(make_app, graph)
    assert (await post(app, payload)).status == 200
    assert len(await inbound(app)) == 1


async def test_the_signature_fixture_verifies_on_its_exact_bytes_and_not_reserialised(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    example = fixture("meta_signature_example.json")
    raw = provider_fixture(example["raw_body_file"]).read_bytes()
    headers = example["headers"]
    reserialised = json.dumps(json.loads(raw), ensure_ascii=False).encode()
    bad = await app.client.post("/webhooks/demo/whatsapp", data=reserialised, headers=headers)
    assert bad.status == 403
    assert await inbound(app) == []
    good = await app.client.post("/webhooks/demo/whatsapp", data=raw, headers=headers)
    assert good.status == 200, await good.text()
    [row] = await inbound(app)
    text = json.loads(raw)["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"]
    assert row["message_text"] == text and any(ord(c) > 127 for c in text)


@pytest.mark.parametrize(
    ("secret", "status"), [(None, 401), ("another-app-secret", 403)], ids=["missing", "wrong"]
)
async def test_unsigned_or_wrongly_signed_deliveries_are_refused_and_store_nothing(
    make_app: AppFactory, graph: Meta, secret: str | None, status: int
) -> None:
    app = await start(make_app, graph)
    body = json.dumps(fixture("whatsapp_text.json")).encode()
    response = await post_body(app, body, secret=secret)
    assert response.status == status
    assert "error" in await response.json()
    assert await count(app.service.engine, "chat_messages") == 0


async def test_the_handshake_answers_the_challenge_only_for_the_verify_token(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    query = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "x"}
    wrong = await app.client.get("/webhooks/demo/whatsapp", params=query)
    assert wrong.status == 403
    query["hub.verify_token"] = ENV["WA_VERIFY"]
    right = await app.client.get("/webhooks/demo/whatsapp", params=query)
    assert (right.status, await right.text()) == (200, "1158201444")


# --- statuses ----------------------------------------------------------------------------------


async def queue_sent(app: AppHarness, wamid: str, user: str = LEAD) -> int:
    """An outbound row already sent with this provider id (as after a send)."""
    from leadline.storage.leads import ChannelIdentity, ensure_lead
    from leadline.storage.outbox import QueuedMessage, enqueue, mark_sent

    async with app.service.sessions() as session, session.begin():
        lead = await ensure_lead(session, ChannelIdentity("demo", "whatsapp", user))
        row_id = await enqueue(session, QueuedMessage(lead, "demo", "whatsapp", user, "hello"))
        await mark_sent(session, row_id, wamid)
    return row_id


async def status_of(app: AppHarness, row_id: int) -> tuple[str, str | None]:
    [row] = await rows(app.service.engine, "SELECT * FROM chat_messages WHERE id = :i", i=row_id)
    return row["status"], row["error"]


async def test_status_fixtures_move_the_sent_row_forward_only(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    sent = fixture("whatsapp_status_sent.json")
    wamid = sent["entry"][0]["changes"][0]["value"]["statuses"][0]["id"]
    row_id = await queue_sent(app, wamid)
    for name, expected in [
        ("whatsapp_status_delivered.json", "delivered"),
        ("whatsapp_status_read.json", "read"),
        ("whatsapp_status_sent.json", "read"),  # late and out of order: no step back
    ]:
        payload = fixture(name)
        payload["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = wamid
        assert (await post(app, payload)).status == 200
        assert (await status_of(app, row_id))[0] == expected, name


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("whatsapp_status_failed.json", "131049"),
        ("whatsapp_outside_24h_window_error.json", "131047"),
    ],
)
async def test_a_failed_status_keeps_the_error_code_and_title(
    make_app: AppFactory, graph: Meta, name: str, code: str
) -> None:
    app = await start(make_app, graph)
    payload = fixture(name)
    report = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    row_id = await queue_sent(app, report["id"])
    assert (await post(app, payload)).status == 200
    status, error = await status_of(app, row_id)
    assert status == "failed"
    assert error is not None and error.startswith(f"{code}: {report['errors'][0]['title']}")


# --- batches, duplicates, routing ---------------------------------------------------------------


def batch(messages: int, statuses: int, wamids: list[str]) -> dict[str, Any]:
    """One POST as Meta may batch it: several entries and changes, messages and statuses."""
    entries = []
    for e in range(4):
        changes = []
        for c in range(5):
            part = e * 5 + c
            users = [f"1555{part:03d}{u:04d}" for u in range(messages // 20)]
            value: dict[str, Any] = {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": DEMO_NUMBER},
                "contacts": [{"profile": {"name": f"User {u}"}, "wa_id": u} for u in users],
                "messages": [
                    {"from": u, "id": f"wamid.BATCH{part:02d}{i:04d}", "timestamp": "1750100000",
                     "type": "text", "text": {"body": f"message {part}-{i}"}}
                    for i, u in enumerate(users)
                ],
                "statuses": [
                    {"id": w, "status": "delivered", "timestamp": "1750100001",
                     "recipient_id": LEAD}
                    for w in wamids[part * (statuses // 20) : (part + 1) * (statuses // 20)]
                ],
            }  # fmt: skip
            changes.append({"value": value, "field": "messages"})
        entries.append({"id": "102290129340398", "changes": changes})
    return {"object": "whatsapp_business_account", "entry": entries}


async def test_a_batch_of_a_thousand_updates_loses_nothing(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    wamids = [f"wamid.OUT{i:04d}" for i in range(400)]
    sent_rows = [await queue_sent(app, w) for w in wamids]
    response = await post(app, batch(600, 400, wamids))
    assert response.status == 200
    stored = await inbound(app)
    assert len(stored) == 600 and len({r["channel_message_id"] for r in stored}) == 600
    assert await count(app.service.engine, "leads") == 601  # 600 writers and LEAD
    states = await rows(
        app.service.engine,
        "SELECT status FROM chat_messages WHERE direction = 'out' AND id <= :last",
        last=max(sent_rows),
    )
    assert {s["status"] for s in states} == {"delivered"}


async def test_a_duplicate_delivery_seven_days_later_stores_nothing_and_answers_once(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    payload = fresh("whatsapp_multi_messages.json")
    assert (await post(app, payload)).status == 200

    async def welcomed() -> bool:
        return [r["status"] for r in await outbound(app)] == ["sent", "sent"]

    await wait_for(welcomed)
    week_ago = datetime.now(UTC) - timedelta(days=7)
    async with app.service.engine.begin() as conn:  # a week passes
        await conn.execute(sa.update(ChatMessage).values(created_at=week_ago, updated_at=week_ago))
    await app.client.close()  # and the process was restarted meanwhile
    later = await start(make_app, graph)
    assert (await post(later, payload)).status == 200  # Meta's last retry, 7 days on
    await asyncio.sleep(0.5)  # time enough for a wrongful second welcome to be queued
    assert len(await inbound(later)) == 3
    assert len(await outbound(later)) == 2
    assert len(graph.demo.sent) == 2


async def test_another_brokers_number_on_the_same_app_is_stored_under_that_broker(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    payload = fixture("whatsapp_text.json")
    metadata = payload["entry"][0]["changes"][0]["value"]["metadata"]
    metadata["phone_number_id"] = ACME_NUMBER
    assert (await post(app, payload)).status == 200  # at demo's URL: one Meta app, one URL
    assert await inbound(app, "demo") == []
    [row] = await inbound(app, "acme")
    assert row["provider"] == "whatsapp" and row["channel_user_id"] == LEAD


async def test_another_brokers_number_under_another_app_secret_is_not_stored_anywhere(
    make_app: AppFactory, graph: Meta
) -> None:
    head, acme = toml(graph.base_url).split("[brokers.acme]")
    acme = acme.replace("${META_APP_SECRET}", "${ACME_APP_SECRET}")
    app = await make_app(f"{head}[brokers.acme]{acme}", env={**ENV, "ACME_APP_SECRET": "other"})
    payload = fixture("whatsapp_text.json")
    payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = ACME_NUMBER
    response = await post(app, payload)  # signed with demo's app secret, not acme's
    assert response.status == 403
    assert await count(app.service.engine, "chat_messages") == 0


async def test_a_number_no_broker_owns_is_refused_and_not_stored_under_the_url(
    make_app: AppFactory, graph: Meta, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start(make_app, graph)
    foreign = fixture("whatsapp_text.json")
    foreign["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999000111"
    response = await post(app, foreign)
    assert response.status == 403
    assert "999000111" in (await response.json())["error"]
    assert await count(app.service.engine, "chat_messages") == 0
    # Mixed with the broker's own number: its own events are stored, the rest are not.
    own = fixture("whatsapp_text.json")
    mixed = copy.deepcopy(own)
    mixed["entry"].append(foreign["entry"][0])
    foreign_message = foreign["entry"][0]["changes"][0]["value"]["messages"][0]
    foreign_message["id"] = "wamid.FOREIGN"
    assert (await post(app, mixed)).status == 200
    assert [r["channel_message_id"] for r in await inbound(app)] == [
        own["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    ]
    assert "999000111" in caplog.text


async def test_top_level_errors_are_logged_and_kept_once(
    make_app: AppFactory, graph: Meta, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start(make_app, graph)
    payload = fixture("whatsapp_text.json")
    error = {"code": 131000, "title": "Something went wrong", "message": "Something went wrong",
             "error_data": {"details": "Unknown error"}}  # fmt: skip
    payload["entry"][0]["changes"][0]["value"]["errors"] = [error]
    for _ in range(2):  # a redelivery keeps nothing new
        assert (await post(app, payload)).status == 200
    notices = await rows(app.service.engine, "SELECT * FROM provider_notices")
    assert [(n["broker_id"], n["provider"], n["code"], n["title"]) for n in notices] == [
        ("demo", "whatsapp", "131000", "Something went wrong")
    ]
    assert as_json(notices[0]["detail"]) == error
    assert len(await inbound(app)) == 1  # the message beside the error is stored too
    assert caplog.text.count("reports 131000: Something went wrong") == 1


# --- replies through the real adapter -------------------------------------------------------------


async def test_the_welcome_reply_reaches_the_wa_id_through_pywa(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    assert (await post(app, fresh("whatsapp_text.json"))).status == 200

    async def sent() -> bool:
        return [r["status"] for r in await outbound(app)] == ["sent"]

    await wait_for(sent)
    [message] = graph.demo.sent
    assert message.to == "+" + LEAD
    assert message.text == "Hi Sheena Nelson! Thanks for writing to Demo Realty."
    [row] = await outbound(app)
    assert row["channel_message_id"] == message.wamid


async def test_a_status_that_beats_the_send_response_is_still_applied(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)

    async def deliver_status_first(sent: SentMessage) -> None:
        status = fixture("whatsapp_status_delivered.json")
        status["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = sent.wamid
        assert (await post(app, status)).status == 200  # before the send call returns

    graph.demo.before_answer = deliver_status_first
    assert (await post(app, fresh("whatsapp_text.json"))).status == 200

    async def delivered() -> bool:
        return [r["status"] for r in await outbound(app)] == ["delivered"]

    await wait_for(delivered)


async def test_read_receipts_and_typing_follow_the_brokers_features(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(
        make_app, graph, demo_features="read_receipts = true\ntyping_indicator = true"
    )
    payload = fresh("whatsapp_text.json")
    wamid = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert (await post(app, payload)).status == 200

    async def replied() -> bool:
        return len(graph.demo.sent) == 1 and len(graph.demo.read) == 2

    await wait_for(replied)
    marks = sorted((r.typing_indicator, r.message_id) for r in graph.demo.read)
    assert marks == [(False, wamid), (True, wamid)]  # the receipt, and typing on it
    typing = next(r for r in graph.demo.read if r.typing_indicator)
    assert typing.at < graph.demo.sent[0].at  # typing shows before the reply


async def test_without_the_features_no_receipt_and_no_typing(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    assert (await post(app, fresh("whatsapp_text.json"))).status == 200

    async def replied() -> bool:
        return len(graph.demo.sent) == 1

    await wait_for(replied)
    assert graph.demo.read == []


def old_message() -> dict[str, Any]:
    payload = fixture("whatsapp_text.json")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = "1700000000"
    return payload


async def test_a_reply_outside_the_window_fails_at_once_saying_so(
    make_app: AppFactory, graph: Meta
) -> None:
    app = await start(make_app, graph)
    assert (await post(app, old_message())).status == 200  # written in 2023, delivered late

    async def failed() -> bool:
        return [r["status"] for r in await outbound(app)] == ["failed"]

    await wait_for(failed)
    [row] = await outbound(app)
    assert row["error"].startswith("window_closed: the 24-hour customer service window is closed")
    assert row["attempts"] == 1 and graph.demo.sent == []


async def test_a_reply_outside_the_window_goes_as_the_window_template(
    make_app: AppFactory, graph: Meta
) -> None:
    template = (
        'window_template = { name = "follow_up", language = "en_US", parameters = ["{text}"] }'
    )
    app = await start(make_app, graph, window_template=template)
    assert (await post(app, old_message())).status == 200

    async def sent() -> bool:
        return [r["status"] for r in await outbound(app)] == ["sent"]

    await wait_for(sent)
    [message] = graph.demo.sent
    assert message.type == "template" and message.body["template"]["name"] == "follow_up"
    [row] = await outbound(app)
    assert as_json(row["provider_metadata"])["sent_as_template"] == "follow_up"


async def test_an_unsigned_number_is_allowed_only_when_configured_and_warns(
    make_app: AppFactory, graph: Meta, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    unsigned = toml(graph.base_url).replace(
        'app_secret = "${META_APP_SECRET}"\nverify_token', "allow_unsigned = true\nverify_token", 1
    )
    app = await make_app(unsigned, env=ENV)
    assert "NOT signature-checked" in caplog.text
    response = await post_body(app, json.dumps(fixture("whatsapp_text.json")).encode(), secret=None)
    assert response.status == 200
    assert len(await inbound(app)) == 1


async def test_no_token_or_secret_reaches_a_log_line_even_at_debug(
    make_app: AppFactory, graph: Meta, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = await start(make_app, graph, demo_features="read_receipts = true")
    graph.fake.add_media("2754859441498128", b"jpeg bytes", "image/jpeg")
    assert (await post(app, fresh("whatsapp_text.json"))).status == 200
    await post_body(app, b'{"object": "whatsapp_business_account"}', secret="wrong")

    async def sent() -> bool:
        return len(graph.demo.sent) == 1

    await wait_for(sent)
    adapter = app.adapter("demo", "whatsapp")
    await adapter.download_media(Attachment(kind="image", ref="2754859441498128"))
    graph.demo.expire_token()
    with pytest.raises(Exception, match="Session has expired"):
        await adapter.send(OutboundMessage("9", LEAD, "hi", last_inbound_at=datetime.now(UTC)))
    logged = caplog.text
    assert "Making POST request" in logged  # pywa's own debug lines were captured
    for secret in ENV.values():
        assert secret not in logged
