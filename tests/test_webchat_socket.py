"""The web chat's websocket protocol, driven by a real aiohttp websocket client."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import ClientWebSocketResponse

from leadline.storage.outbox import QueuedMessage, enqueue
from tests.conftest import DEMO_TOML, AppFactory, AppHarness, wait_for
from tests.helpers import rows

VISITOR = "visitor-abcdefgh1234"


async def connect(app: AppHarness, visitor: str = VISITOR) -> ClientWebSocketResponse:
    return await app.client.ws_connect(f"/webchat/demo/ws?visitor={visitor}")


async def receive(ws: ClientWebSocketResponse, kind: str) -> dict:
    """The next frame of this type (others are skipped)."""
    while True:
        frame = await asyncio.wait_for(ws.receive_json(), 10)
        if frame["type"] == kind:
            return frame


async def say(ws: ClientWebSocketResponse, message_id: str, text: str) -> dict:
    await ws.send_json({"type": "message", "id": message_id, "text": text})
    return await receive(ws, "ack")


async def test_page_is_self_contained_with_the_broker_name_and_a_strict_csp(app: AppHarness):
    response = await app.client.get("/webchat/demo")
    assert response.status == 200
    page = await response.text()
    assert "<title>Demo Realty</title>" in page
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp
    # No build step and no CDN: the page loads nothing from elsewhere.
    assert "src=" not in page and "<link" not in page


async def test_page_for_a_broker_without_web_chat_is_404(app: AppHarness):
    assert (await app.client.get("/webchat/acme")).status == 404
    assert (await app.client.get("/webchat/nobody")).status == 404


async def test_new_visitor_gets_empty_history_then_message_is_acked_after_storing(
    app: AppHarness,
):
    ws = await connect(app)
    assert (await receive(ws, "history"))["messages"] == []
    ack = await say(ws, "client-msg-0001", "Hola")
    assert ack["id"] == "client-msg-0001"
    stored = await rows(app.service.engine, "SELECT * FROM chat_messages WHERE direction = 'in'")
    assert [(r["channel_message_id"], r["message_text"]) for r in stored] == [
        ("client-msg-0001", "Hola")
    ]
    await ws.close()


async def test_welcome_reply_is_pushed_to_the_open_socket(app: AppHarness):
    ws = await connect(app)
    await receive(ws, "history")
    await say(ws, "client-msg-0001", "Hola")
    reply = await receive(ws, "message")
    assert reply["direction"] == "out"
    assert reply["text"] == "Hi there! Thanks for writing to Demo Realty."
    await ws.close()


async def test_resending_a_message_id_stores_it_once(app: AppHarness):
    ws = await connect(app)
    await receive(ws, "history")
    for _ in range(3):
        await say(ws, "client-msg-0001", "Hola")
    stored = await rows(app.service.engine, "SELECT id FROM chat_messages WHERE direction = 'in'")
    assert len(stored) == 1
    await ws.close()


async def test_history_on_reconnect_holds_both_sides_in_order(app: AppHarness):
    ws = await connect(app)
    await receive(ws, "history")
    await say(ws, "client-msg-0001", "Hola")
    await receive(ws, "message")
    await say(ws, "client-msg-0002", "Busco depto")
    await ws.close()

    async def welcome_recorded_sent() -> bool:
        # The socket gets the reply during the send; the row is marked sent with the
        # next group commit, a few milliseconds later. History shows sent replies.
        found = await rows(
            app.service.engine, "SELECT status FROM chat_messages WHERE direction = 'out'"
        )
        return [r["status"] for r in found] == ["sent"]

    await wait_for(welcome_recorded_sent)
    again = await connect(app)
    history = (await receive(again, "history"))["messages"]
    assert [(m["direction"], m["text"]) for m in history] == [
        ("in", "Hola"),
        ("out", "Hi there! Thanks for writing to Demo Realty."),
        ("in", "Busco depto"),
    ]
    await again.close()


async def test_reply_sent_while_offline_arrives_in_history_and_is_marked_delivered(
    app: AppHarness,
):
    ws = await connect(app)
    await receive(ws, "history")
    await say(ws, "client-msg-0001", "Hola")
    await receive(ws, "message")
    await ws.close()
    lead_id = (await rows(app.service.engine, "SELECT id FROM leads"))[0]["id"]
    async with app.service.sessions() as session, session.begin():
        row_id = await enqueue(
            session,
            QueuedMessage(lead_id, "demo", "webchat", VISITOR, "An agent will call you."),
        )
    app.service.dispatcher.wake()

    async def status_is(expected: str) -> bool:
        (row,) = await rows(
            app.service.engine, "SELECT status FROM chat_messages WHERE id = :id", id=row_id
        )
        return row["status"] == expected

    await wait_for(lambda: status_is("sent"))
    again = await connect(app)
    history = (await receive(again, "history"))["messages"]
    assert history[-1]["text"] == "An agent will call you."
    assert history[-1]["id"] == str(row_id)
    await again.send_json({"type": "received", "ids": [str(row_id)]})
    await wait_for(lambda: status_is("delivered"))
    await again.close()


async def test_two_visitors_never_see_each_others_messages(app: AppHarness):
    first = await connect(app, "visitor-one-11111111")
    await receive(first, "history")
    await say(first, "client-msg-0001", "private to one")
    second = await connect(app, "visitor-two-22222222")
    assert (await receive(second, "history"))["messages"] == []
    await first.close()
    await second.close()


FEATURES = "[brokers.demo.features]\ntyping_indicator = true\nread_receipts = true\n"


async def test_with_the_features_on_the_page_is_told_typing_then_read(make_app: AppFactory):
    app = await make_app(
        DEMO_TOML.replace("[brokers.demo.templates]", FEATURES + "[brokers.demo.templates]")
    )
    ws = await connect(app)
    await receive(ws, "history")
    await say(ws, "client-msg-0001", "Hola")
    frames = []
    while len({f["type"] for f in frames} & {"typing", "message", "read"}) < 3:
        frames.append(await asyncio.wait_for(ws.receive_json(), 10))
    kinds = [f["type"] for f in frames]
    assert kinds.index("typing") < kinds.index("message")  # typing shows before the reply
    assert next(f for f in frames if f["type"] == "read")["id"] == "client-msg-0001"
    await ws.close()


async def test_without_the_features_no_typing_or_read_frame(app: AppHarness):
    ws = await connect(app)
    await receive(ws, "history")
    await say(ws, "client-msg-0001", "Hola")
    await receive(ws, "message")
    await asyncio.sleep(0.3)
    extra = []
    while True:
        try:
            extra.append(await asyncio.wait_for(ws.receive_json(), 0.2))
        except TimeoutError:
            break
    assert {f["type"] for f in extra} <= {"ack"}
    await ws.close()


async def test_a_reply_another_process_sent_reaches_the_page_open_on_this_one(
    make_app: AppFactory,
):
    toml = DEMO_TOML.replace(
        "[brokers.demo.providers.webchat]\n",
        "[brokers.demo.providers.webchat]\ncatch_up_seconds = 0.2\n",
    )
    here = await make_app(toml, cluster_check_seconds=0.1)  # the page is connected here
    ws = await connect(here)
    await receive(ws, "history")
    await say(ws, "client-msg-0001", "Hola")
    await receive(ws, "message")  # the welcome, sent here
    here.service.dispatcher.stop()  # from now on only the other process sends
    await next(t for t in here.service._tasks if t.get_name() == "dispatcher")
    there = await make_app(toml, cluster_check_seconds=0.1)
    lead_id = (await rows(here.service.engine, "SELECT id FROM leads"))[0]["id"]
    async with there.service.sessions() as session, session.begin():
        queued = QueuedMessage(lead_id, "demo", "webchat", VISITOR, "An agent will call you.")
        row_id = await enqueue(session, queued)
    there.service.dispatcher.wake()

    reply = await receive(ws, "message")
    assert (reply["id"], reply["text"]) == (str(row_id), "An agent will call you.")
    await ws.send_json({"type": "received", "ids": [reply["id"]]})

    async def delivered() -> bool:
        sql = "SELECT status FROM chat_messages WHERE id = :id"
        return (await rows(here.service.engine, sql, id=row_id))[0]["status"] == "delivered"

    await wait_for(delivered)
    await asyncio.sleep(0.5)  # more catch-ups: the reply is not handed over again
    with contextlib.suppress(TimeoutError):
        extra = await asyncio.wait_for(ws.receive_json(), 0.3)
        raise AssertionError(f"handed over twice: {extra}")
    await ws.close()
