"""The webhook route end to end: verify, parse, store in one transaction, then acknowledge."""

from __future__ import annotations

import json

from aiohttp import ClientResponse

from tests.conftest import TEST_ENV, AppHarness, wait_for
from tests.fakes.plugins.signed import sign
from tests.helpers import count, rows, signed_delivery

SECRET = TEST_ENV["DEMO_SIGNED_SECRET"]


def delivery(*messages: dict, statuses: tuple = ()) -> dict:
    return {"messages": list(messages), "statuses": list(statuses)}


def message(message_id: str, sender: str = "u1", text: str = "hi", **extra: str) -> dict:
    return {"id": message_id, "from": sender, "text": text, **extra}


async def post(
    app: AppHarness, payload: dict, broker: str = "demo", secret: str = SECRET
) -> ClientResponse:
    body, headers = signed_delivery(secret, payload)
    return await app.client.post(f"/webhooks/{broker}/signed", data=body, headers=headers)


async def out_rows(app: AppHarness) -> list[dict]:
    return await rows(
        app.service.engine, "SELECT * FROM chat_messages WHERE direction = 'out' ORDER BY id"
    )


async def all_handled(app: AppHarness) -> bool:
    sql = "SELECT id FROM chat_messages WHERE direction = 'in' AND handled_at IS NULL"
    left = await rows(app.service.engine, sql)
    return not left


async def test_signed_delivery_is_stored_with_lead_and_channel_then_acknowledged(app: AppHarness):
    response = await post(app, delivery(message("m1", text="hola", name="Ana")))
    assert response.status == 200
    engine = app.service.engine
    stored = await rows(engine, "SELECT * FROM chat_messages WHERE direction = 'in'")
    assert [(r["message_text"], r["provider"], r["channel_user_id"]) for r in stored] == [
        ("hola", "signed", "u1")
    ]
    leads = await rows(engine, "SELECT * FROM leads")
    assert [(lead["name"], lead["broker_id"]) for lead in leads] == [("Ana", "demo")]
    channels = await rows(engine, "SELECT * FROM lead_channels")
    assert [(c["provider"], c["channel_user_id"], c["lead_id"]) for c in channels] == [
        ("signed", "u1", leads[0]["id"])
    ]


async def test_redelivery_of_the_same_message_stores_one_row_and_one_welcome(app: AppHarness):
    for _ in range(3):
        assert (await post(app, delivery(message("m1")))).status == 200
    engine = app.service.engine
    assert await count(engine, "leads") == 1
    await wait_for(lambda: all_handled(app))

    async def one_sent() -> bool:
        return [r["status"] for r in await out_rows(app)] == ["sent"]

    await wait_for(one_sent)
    assert len(app.adapter("demo", "signed").sent) == 1
    assert len(await rows(engine, "SELECT id FROM chat_messages WHERE direction = 'in'")) == 1


async def test_first_message_gets_the_welcome_template_through_the_outbox(app: AppHarness):
    assert (await post(app, delivery(message("m1", sender="u7", name="Ana")))).status == 200

    async def sent() -> bool:
        return [r["status"] for r in await out_rows(app)] == ["sent"]

    await wait_for(sent)
    adapter = app.adapter("demo", "signed")
    assert [m.text for m in adapter.sent] == ["Hi Ana! Thanks for writing to Demo Realty."]
    assert adapter.sent[0].channel_user_id == "u7"
    (out,) = await out_rows(app)
    assert out["ai_response_used"] in (False, 0)
    assert out["channel_message_id"] == f"sig-{out['id']}"
    assert out["attempts"] == 1
    assert out["channel_user_id"] == "u7" and out["provider"] == "signed"


async def test_second_message_of_a_lead_gets_no_second_welcome(app: AppHarness):
    assert (await post(app, delivery(message("m1")))).status == 200
    assert (await post(app, delivery(message("m2")))).status == 200
    await wait_for(lambda: all_handled(app))

    async def settled() -> bool:
        return all(r["status"] != "pending" for r in await out_rows(app))

    await wait_for(settled)
    assert len(await out_rows(app)) == 1
    assert len(app.adapter("demo", "signed").sent) == 1


async def test_auto_reply_off_stores_but_never_answers(app: AppHarness):
    secret = TEST_ENV["ACME_SIGNED_SECRET"]
    assert (await post(app, delivery(message("m1")), broker="acme", secret=secret)).status == 200
    await wait_for(lambda: all_handled(app))
    assert await count(app.service.engine, "chat_messages") == 1
    assert app.adapter("acme", "signed").sent == []


async def test_same_user_id_at_two_brokers_is_two_leads(app: AppHarness):
    acme = TEST_ENV["ACME_SIGNED_SECRET"]
    assert (await post(app, delivery(message("m1")))).status == 200
    assert (await post(app, delivery(message("m1")), broker="acme", secret=acme)).status == 200
    leads = await rows(app.service.engine, "SELECT broker_id FROM leads ORDER BY broker_id")
    assert [lead["broker_id"] for lead in leads] == ["acme", "demo"]


async def test_batched_delivery_stores_every_message_in_one_go(app: AppHarness):
    batch = [message(f"m{i}", sender=f"u{i % 3}", text=str(i)) for i in range(30)]
    assert (await post(app, delivery(*batch))).status == 200
    engine = app.service.engine
    assert len(await rows(engine, "SELECT id FROM chat_messages WHERE direction = 'in'")) == 30
    assert await count(engine, "leads") == 3


async def test_missing_signature_is_401_and_stores_nothing(app: AppHarness):
    body, _ = signed_delivery(SECRET, delivery(message("m1")))
    response = await app.client.post("/webhooks/demo/signed", data=body)
    assert response.status == 401
    assert "X-Signature" in (await response.json())["error"]
    assert await count(app.service.engine, "chat_messages") == 0


async def test_wrong_signature_is_403_and_stores_nothing(app: AppHarness):
    body, _ = signed_delivery(SECRET, delivery(message("m1")))
    _, other = signed_delivery("another-secret", delivery(message("m1")))
    response = await app.client.post("/webhooks/demo/signed", data=body, headers=other)
    assert response.status == 403
    assert await count(app.service.engine, "chat_messages") == 0


async def test_another_brokers_signature_is_refused(app: AppHarness):
    response = await post(app, delivery(message("m1")), secret=TEST_ENV["ACME_SIGNED_SECRET"])
    assert response.status == 403


async def test_malformed_signed_body_is_400_and_stores_nothing(app: AppHarness):
    body = b'{"messages": [{"id": "m1"}]}'  # no sender
    headers = {"X-Signature": sign(SECRET, body)}
    response = await app.client.post("/webhooks/demo/signed", data=body, headers=headers)
    assert response.status == 400
    assert await count(app.service.engine, "chat_messages") == 0


async def test_unknown_broker_or_provider_is_404(app: AppHarness):
    for path in ("/webhooks/nobody/signed", "/webhooks/demo/nothing", "/webhooks/acme/webchat"):
        response = await app.client.post(path, data=b"{}")
        assert response.status == 404, path
        assert (await response.json())["error"]


async def test_provider_without_webhooks_is_404(app: AppHarness):
    response = await app.client.post("/webhooks/demo/webchat", data=b"{}")
    assert response.status == 404
    assert "does not take webhooks" in (await response.json())["error"]


async def test_body_over_one_mebibyte_is_413_and_stores_nothing(app: AppHarness):
    body = b"{" + b" " * (1024 * 1024) + b"}"
    response = await app.client.post(
        "/webhooks/demo/signed", data=body, headers={"X-Signature": "sha256=00"}
    )
    assert response.status == 413
    assert await count(app.service.engine, "chat_messages") == 0


async def test_handshake_answers_the_challenge_only_for_the_right_token(app: AppHarness):
    path = "/webhooks/demo/signed"
    ok = await app.client.get(path, params={"token": "let-me-in", "challenge": "c1"})
    assert ok.status == 200 and await ok.text() == "c1"
    wrong = await app.client.get(path, params={"token": "no", "challenge": "c1"})
    assert wrong.status == 403


async def test_status_updates_move_forward_only(app: AppHarness):
    assert (await post(app, delivery(message("m1")))).status == 200

    async def sent() -> bool:
        return [r["status"] for r in await out_rows(app)] == ["sent"]

    await wait_for(sent)
    reply_id = (await out_rows(app))[0]["channel_message_id"]
    for status, expected in (("read", "read"), ("delivered", "read"), ("failed", "read")):
        update = delivery(statuses=({"id": reply_id, "status": status},))
        assert (await post(app, update)).status == 200
        assert [r["status"] for r in await out_rows(app)] == [expected], status


async def test_failed_status_is_terminal(app: AppHarness):
    assert (await post(app, delivery(message("m1")))).status == 200

    async def sent() -> bool:
        return [r["status"] for r in await out_rows(app)] == ["sent"]

    await wait_for(sent)
    reply_id = (await out_rows(app))[0]["channel_message_id"]
    for status in ("failed", "delivered", "read"):
        update = delivery(statuses=({"id": reply_id, "status": status},))
        assert (await post(app, update)).status == 200
    assert [r["status"] for r in await out_rows(app)] == ["failed"]


async def test_edit_updates_the_original_and_keeps_what_it_said_before(app: AppHarness):
    assert (await post(app, delivery(message("m1", text="2 rooms")))).status == 200
    edit = {"edits": [{"id": "m1", "from": "u1", "text": "3 rooms", "at": 1_790_000_000}]}
    for _ in range(2):  # a redelivered edit is applied once
        assert (await post(app, edit)).status == 200
    inbound = await rows(app.service.engine, "SELECT * FROM chat_messages WHERE direction='in'")
    assert len(inbound) == 1
    assert inbound[0]["message_text"] == "3 rooms"
    metadata = inbound[0]["provider_metadata"]
    metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
    assert [e["text"] for e in metadata["edits"]] == ["2 rooms"]
    assert await count(app.service.engine, "leads") == 1


async def test_edit_is_never_answered_as_a_new_message(app: AppHarness):
    assert (await post(app, delivery(message("m1")))).status == 200
    await wait_for(lambda: all_handled(app))
    edit = {"edits": [{"id": "m1", "from": "u1", "text": "edited", "at": 1_790_000_000}]}
    assert (await post(app, edit)).status == 200
    await wait_for(lambda: all_handled(app))

    async def settled() -> bool:
        return all(r["status"] != "pending" for r in await out_rows(app))

    await wait_for(settled)
    assert len(await out_rows(app)) == 1  # the welcome only


async def test_edit_of_a_message_never_seen_is_kept_as_a_message(app: AppHarness):
    edit = {"edits": [{"id": "m9", "from": "u1", "text": "late", "at": 1_790_000_000}]}
    assert (await post(app, edit)).status == 200
    inbound = await rows(app.service.engine, "SELECT * FROM chat_messages WHERE direction='in'")
    assert [(r["channel_message_id"], r["message_text"]) for r in inbound] == [("m9", "late")]
