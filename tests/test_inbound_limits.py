"""Signed deliveries at the edges of what a provider may send, through the real webhook
route into SQLite and PostgreSQL: JSON nested as deep as the parser accepts (and deeper),
huge strings, wide objects, and ids longer than the 255 characters a column holds.

Whatever the JSON parser accepts ends in 200 (stored) or 400; 503 is only for a
database that failed. An id over 255 characters is stored under `sha256:<hex>`, its
full text kept in `provider_metadata["full_ids"]`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from leadline.runtime.sanitize import CUT, FULL_IDS, MAX_DEPTH, id_digest
from tests.conftest import AppFactory, wait_for
from tests.fakes.graph_api import FakeGraph
from tests.fakes.serving import running_fake
from tests.fakes.tiktok_api import FakeTikTok, signature, webhook
from tests.helpers import count, rows
from tests.test_whatsapp_webhooks import (
    ACME_NUMBER,
    DEMO_NUMBER,
    ENV,
    Meta,
    as_json,
    fresh,
    inbound,
    outbound,
    post,
    post_body,
    queue_sent,
    start,
    status_of,
)

LONG_WAMID = "wamid." + "HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA" * 6  # 342
assert len(LONG_WAMID) > 255


@pytest.fixture
async def meta() -> AsyncIterator[Meta]:
    """The fake Graph API with the WhatsApp brokers' numbers (test_whatsapp_webhooks')."""
    fake = FakeGraph()
    demo = fake.add_number(DEMO_NUMBER, ENV["DEMO_WA_TOKEN"])
    acme = fake.add_number(ACME_NUMBER, ENV["ACME_WA_TOKEN"])
    async with running_fake(fake) as base_url:
        yield Meta(fake, demo, acme, base_url)


def unknown_type_message(payload: dict[str, Any], inner: str) -> bytes:
    """The text fixture turned into a message of a type nobody knows, carrying `inner`
    (raw JSON text) as its content: the parser keeps such a message raw."""
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message["type"] = "hologram"
    message.pop("text")
    body = json.dumps(payload)
    return body.replace('"type": "hologram"', f'"type": "hologram", "hologram": {inner}').encode()


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    return depth


# --- any depth, any width: 200 or 400, never 503 ----------------------------------------------


@pytest.mark.parametrize("levels", [500, 900])
async def test_a_message_nested_as_deep_as_the_parser_accepts_is_stored_cut_at_max_depth(
    make_app: AppFactory, meta: Meta, levels: int
) -> None:
    """500 levels used to be answered 503 'not stored; retry later' (RecursionError in
    the sanitizer), so Meta retried the delivery for days."""
    app = await start(make_app, meta)
    body = unknown_type_message(fresh("whatsapp_text.json"), "[" * levels + "]" * levels)
    response = await post_body(app, body)
    assert response.status == 200, await response.text()
    [row] = await inbound(app)
    metadata = as_json(row["provider_metadata"])
    raw = metadata["raw"]
    assert raw["type"] == "hologram" and raw["from"] == "16505551234"
    # metadata (1) > raw (2) > hologram (3) ... : the cut keeps MAX_DEPTH levels in all
    assert depth_of(raw["hologram"]) == MAX_DEPTH - 2
    bottom = raw["hologram"]
    while isinstance(bottom, list):
        bottom = bottom[0]
    assert bottom == CUT
    assert (await post_body(app, body)).status == 200  # a redelivery stores nothing new
    assert len(await inbound(app)) == 1


@pytest.mark.parametrize("levels", [5_000, 50_000])
async def test_a_message_nested_deeper_than_the_parser_accepts_is_400_and_stores_nothing(
    make_app: AppFactory, meta: Meta, levels: int
) -> None:
    app = await start(make_app, meta)
    body = unknown_type_message(fresh("whatsapp_text.json"), "[" * levels + "]" * levels)
    response = await post_body(app, body)
    assert response.status == 400
    assert await response.json() == {"error": "body is nested too deeply"}
    assert await count(app.service.engine, "chat_messages") == 0


@pytest.mark.parametrize(
    "inner",
    [
        json.dumps("x" * 900_000),  # a huge string, near the 1 MB body limit
        json.dumps({f"k{i}": [i, None, True, 1.5] for i in range(20_000)}),  # wide
        "[NaN, Infinity, -Infinity, 1e400, " + "9" * 4000 + "]",  # numbers JSONB refuses
        json.dumps(["\ud800", "a\u0000b", {"\udfff": 1}]),  # what PostgreSQL cannot hold
    ],
    ids=["huge string", "wide object", "odd numbers", "surrogates and NUL"],
)
async def test_huge_wide_and_odd_contents_are_stored_with_the_raw_value_kept(
    make_app: AppFactory, meta: Meta, inner: str
) -> None:
    app = await start(make_app, meta)
    response = await post_body(app, unknown_type_message(fresh("whatsapp_text.json"), inner))
    assert response.status == 200, await response.text()
    [row] = await inbound(app)
    assert "hologram" in as_json(row["provider_metadata"])["raw"]


# --- ids over 255 characters: stored under their digest, never dropped --------------------------


def batch_with_one_long_id() -> dict[str, Any]:
    """whatsapp_multi_messages.json (three messages), the second with a 342-character id."""
    payload = fresh("whatsapp_multi_messages.json")
    messages = [m for c in payload["entry"][0]["changes"] for m in c["value"].get("messages", [])]
    assert len(messages) == 3
    messages[1]["id"] = LONG_WAMID
    return payload


async def test_a_whatsapp_batch_with_one_long_message_id_is_stored_whole_and_once(
    make_app: AppFactory, meta: Meta
) -> None:
    """The parser used to skip the item (answering 200): the message was lost."""
    app = await start(make_app, meta)
    payload = batch_with_one_long_id()
    response = await post(app, payload)
    assert response.status == 200, await response.text()
    stored = await inbound(app)
    assert len(stored) == 3
    [long_row] = [r for r in stored if r["channel_message_id"] == id_digest(LONG_WAMID)]
    metadata = as_json(long_row["provider_metadata"])
    assert metadata[FULL_IDS] == {"channel_message_id": LONG_WAMID}
    assert all(FULL_IDS not in as_json(r["provider_metadata"]) for r in stored if r != long_row)
    assert (await post(app, payload)).status == 200  # Meta's retry: nothing new
    assert len(await inbound(app)) == 3


async def test_a_status_naming_a_long_id_finds_the_row_stored_under_its_digest(
    make_app: AppFactory, meta: Meta
) -> None:
    app = await start(make_app, meta)
    row_id = await queue_sent(app, id_digest(LONG_WAMID))  # sent: its id kept as the digest
    payload = fresh("whatsapp_status_delivered.json")
    payload["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = LONG_WAMID
    assert (await post(app, payload)).status == 200
    assert (await status_of(app, row_id))[0] == "delivered"


async def test_a_long_sender_id_is_stored_and_a_reply_to_it_fails_at_once_saying_why(
    make_app: AppFactory, meta: Meta
) -> None:
    """The provider knows the user only by the full id, which no column holds: the
    welcome reply fails permanently, never reaching the provider, and says why."""
    app = await start(make_app, meta)
    payload = fresh("whatsapp_text.json")
    sender = "1" * 300
    value = payload["entry"][0]["changes"][0]["value"]
    value["messages"][0]["from"] = sender
    value["contacts"][0]["wa_id"] = sender
    assert (await post(app, payload)).status == 200
    [row] = await inbound(app)
    assert row["channel_user_id"] == id_digest(sender)
    assert as_json(row["provider_metadata"])[FULL_IDS] == {"channel_user_id": sender}
    [lead] = await rows(app.service.engine, "SELECT channel_user_id FROM lead_channels")
    assert lead["channel_user_id"] == id_digest(sender)

    async def failed() -> bool:
        return [r["status"] for r in await outbound(app)] == ["failed"]

    await wait_for(failed)
    [reply] = await outbound(app)
    assert "longer than 255 characters" in reply["error"]
    assert meta.demo.sent == []


async def test_a_tiktok_message_with_a_long_id_is_stored_under_its_digest(
    make_app: AppFactory,
) -> None:
    """TikTok sends one message per delivery: skipping it stored nothing at all."""
    business, token, secret = "tt-biz-EXAMPLE-0001", "tt-token-NOT-REAL", "tt-secret-NOT-REAL"
    fake = FakeTikTok(business, token)
    async with running_fake(fake) as base:
        toml = f"""
[brokers.demo]
name = "Demo Realty"
[brokers.demo.providers.tiktok]
business_id = "{business}"
access_token = "${{TT_TOKEN}}"
client_secret = "${{TT_SECRET}}"
api_base = "{base}"
[brokers.demo.features]
auto_reply = false
"""
        app = await make_app(toml, env={"TT_TOKEN": token, "TT_SECRET": secret})
        message_id = "tt-msg-" + "7" * 400
        content = {
            "conversation_id": "tt-conv-EXAMPLE-0001",
            "message_id": message_id,
            "timestamp": 1767225600000,
            "type": "text",
            "text": {"body": "hola"},
        }
        body = webhook("im_receive_msg", content, business)
        for _ in range(2):  # the redelivery stores nothing new
            headers = {"TikTok-Signature": signature(secret, body, time.time())}
            response = await app.client.post("/webhooks/demo/tiktok", data=body, headers=headers)
            assert response.status == 200, await response.text()
        [row] = await inbound(app)
        assert (row["channel_message_id"], row["message_text"]) == (id_digest(message_id), "hola")
        assert as_json(row["provider_metadata"])[FULL_IDS] == {"channel_message_id": message_id}


async def test_a_send_answered_with_a_long_id_is_kept_under_its_digest_and_found_by_its_status(
    make_app: AppFactory, meta: Meta
) -> None:
    """A provider's id over 255 characters for our own send: the row keeps its digest
    (PostgreSQL refused the full id, so the outcome was never recorded) and a status
    naming the full id moves it."""
    meta.demo._wamid = lambda wa_id: LONG_WAMID  # type: ignore[method-assign]
    app = await start(make_app, meta)
    assert (await post(app, fresh("whatsapp_text.json"))).status == 200

    async def sent() -> bool:
        return [r["status"] for r in await outbound(app)] == ["sent"]

    await wait_for(sent)
    [reply] = await outbound(app)
    assert reply["channel_message_id"] == id_digest(LONG_WAMID)
    full = as_json(reply["provider_metadata"])[FULL_IDS]
    assert full == {"channel_message_id": LONG_WAMID}
    payload = fresh("whatsapp_status_delivered.json")
    payload["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = LONG_WAMID
    assert (await post(app, payload)).status == 200
    assert (await status_of(app, reply["id"]))[0] == "delivered"
