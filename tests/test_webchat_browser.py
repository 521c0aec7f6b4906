"""The demo web chat end to end, in a real headless Chromium driven by Playwright.

The page, its websocket, the pipeline, the reply worker and the dispatcher all
run for real; the tests look at what the visitor sees and at the stored rows.
Debian's `chromium` package provides the browser (Playwright's own downloads are
never used). SQLite only: the storage paths are covered on both databases elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from leadline.adapters.base import StatusUpdate
from leadline.runtime import dispatcher as dispatcher_module
from leadline.storage.outbox import QueuedMessage, enqueue
from tests.conftest import DEMO_TOML, AppFactory, AppHarness, under_ci, wait_for
from tests.helpers import rows

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000
PAGE = "/webchat/demo"
VISITOR_KEY = f"leadline:{PAGE}:visitor"
WELCOME = "Hi there! Thanks for writing to Demo Realty."

expect.set_options(timeout=TIMEOUT_MS)


# --- the browser -----------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        message = (
            f"{CHROMIUM} not found: install Debian's `chromium` package (apt install chromium)"
        )
        if under_ci():
            pytest.fail(message + " (CI=true: the browser tests must run)")
        pytest.skip(message)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def new_context(browser: Browser) -> BrowserContext:
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    return context


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (cookies, localStorage): one visitor."""
    context = await new_context(browser)
    try:
        yield context
    finally:
        await context.close()


# --- helpers ---------------------------------------------------------------------


async def open_chat(context: BrowserContext, app: AppHarness) -> Page:
    page = await context.new_page()
    await page.goto(app.url(PAGE))
    await page.wait_for_selector("#state[data-state=online]", timeout=TIMEOUT_MS)
    return page


async def say(page: Page, text: str) -> None:
    """Type a message, send it with Enter, and wait for the server's ack."""
    before = await page.locator("#log .msg.in").count()
    await page.fill("#text", text)
    await page.press("#text", "Enter")
    sent = page.locator("#log .msg.in").nth(before)
    await expect(sent).to_have_text(text)
    await expect(sent).to_have_class("msg in")  # no longer "sending": acknowledged, stored
    await expect(page.locator("#text")).to_have_value("")


async def shown(page: Page) -> list[tuple[str, str, str]]:
    """(direction, id, text) of every message in the log, top to bottom."""
    return [
        tuple(m)
        for m in await page.locator("#log .msg").evaluate_all(
            "els => els.map(e => [e.dataset.direction, e.dataset.id, e.textContent])"
        )
    ]


async def visitor_id(page: Page) -> str:
    return json.loads(await page.evaluate(f"localStorage.getItem({json.dumps(VISITOR_KEY)})"))


async def messages(app: AppHarness) -> list[dict[str, Any]]:
    return await rows(
        app.service.engine,
        "SELECT id, lead_id, provider, channel_user_id, channel_message_id, message_text,"
        " direction, status FROM chat_messages ORDER BY id",
    )


async def status_of(app: AppHarness, message_id: int) -> str:
    found = await rows(
        app.service.engine, "SELECT status FROM chat_messages WHERE id = :id", id=message_id
    )
    return found[0]["status"]


async def wait_for_status(app: AppHarness, message_id: int, status: str) -> None:
    async def reached() -> bool:
        return await status_of(app, message_id) == status

    await wait_for(reached)


# --- the tests -------------------------------------------------------------------


async def test_message_gets_the_welcome_reply_and_the_history_survives_a_reload(
    app: AppHarness, context: BrowserContext
):
    page = await open_chat(context, app)
    await page.fill("#text", "Hola, busco depto")
    await page.press("#text", "Enter")
    await expect(page.locator("#log .msg.in")).to_have_text(["Hola, busco depto"])
    await expect(page.locator("#log .msg.out")).to_have_text([WELCOME])

    await page.reload()
    await page.wait_for_selector("#state[data-state=online]", timeout=TIMEOUT_MS)
    await expect(page.locator("#log .msg")).to_have_count(2)
    history = await shown(page)
    assert [(direction, text) for direction, _, text in history] == [
        ("in", "Hola, busco depto"),
        ("out", WELCOME),
    ]

    visitor = await visitor_id(page)
    stored = await messages(app)
    assert [(r["direction"], r["message_text"]) for r in stored] == [
        ("in", "Hola, busco depto"),
        ("out", WELCOME),
    ]
    assert {(r["provider"], r["channel_user_id"]) for r in stored} == {("webchat", visitor)}
    inbound, reply = stored
    # The page shows the ids the server knows: the page's own id for the visitor's
    # message, the row id for the reply.
    assert [m[1] for m in history] == [inbound["channel_message_id"], str(reply["id"])]
    assert inbound["status"] == "delivered"
    # The reply was shown, at the latest from the history frame: the page said so.
    await wait_for_status(app, reply["id"], "delivered")


async def test_visitor_keeps_one_id_across_reloads_and_a_new_visitor_is_a_new_lead(
    app: AppHarness, browser: Browser, context: BrowserContext
):
    page = await open_chat(context, app)
    visitor = await visitor_id(page)
    await say(page, "first")
    await page.reload()
    await page.wait_for_selector("#state[data-state=online]", timeout=TIMEOUT_MS)
    assert await visitor_id(page) == visitor
    await say(page, "second")

    engine = app.service.engine
    leads = await rows(engine, "SELECT id FROM leads")
    assert len(leads) == 1
    channels = await rows(
        engine, "SELECT lead_id, channel_user_id FROM lead_channels WHERE provider = 'webchat'"
    )
    assert channels == [{"lead_id": leads[0]["id"], "channel_user_id": visitor}]
    inbound = [r for r in await messages(app) if r["direction"] == "in"]
    assert [(r["message_text"], r["channel_user_id"], r["lead_id"]) for r in inbound] == [
        ("first", visitor, leads[0]["id"]),
        ("second", visitor, leads[0]["id"]),
    ]

    other_context = await new_context(browser)
    try:
        other = await open_chat(other_context, app)
        other_visitor = await visitor_id(other)
        assert other_visitor != visitor
        await expect(other.locator("#log .msg")).to_have_count(0)  # not the first one's history
        await say(other, "someone else")
    finally:
        await other_context.close()
    leads = await rows(engine, "SELECT id FROM leads ORDER BY id")
    assert len(leads) == 2
    channels = await rows(
        engine,
        "SELECT lead_id, channel_user_id FROM lead_channels WHERE provider = 'webchat' ORDER BY id",
    )
    assert channels == [
        {"lead_id": leads[0]["id"], "channel_user_id": visitor},
        {"lead_id": leads[1]["id"], "channel_user_id": other_visitor},
    ]


async def test_reply_sent_while_the_page_is_closed_is_received_on_reconnect(
    app: AppHarness, context: BrowserContext
):
    page = await open_chat(context, app)
    visitor = await visitor_id(page)
    await say(page, "Hola, busco depto")
    await expect(page.locator("#log .msg.out")).to_have_text([WELCOME])
    await page.close()
    adapter = app.adapter("demo", "webchat")

    async def gone() -> bool:
        return adapter.connected(visitor) == 0

    await wait_for(gone)

    lead = (await rows(app.service.engine, "SELECT id FROM leads"))[0]
    text = "Tenemos 3 deptos en Palermo, ¿cuándo querés verlos?"
    async with app.service.sessions() as session, session.begin():
        reply_id = await enqueue(
            session,
            QueuedMessage(
                lead_id=lead["id"],
                broker_id="demo",
                provider="webchat",
                channel_user_id=visitor,
                message_text=text,
            ),
        )
    app.service.dispatcher.wake()
    await wait_for_status(app, reply_id, "sent")

    page = await open_chat(context, app)
    await expect(page.locator("#log .msg.out")).to_have_text([WELCOME, text])
    assert (await shown(page))[-1] == ("out", str(reply_id), text)
    await wait_for_status(app, reply_id, "delivered")


async def test_page_shows_markup_in_messages_as_literal_text(
    app: AppHarness, context: BrowserContext
):
    markup = "<img src=x onerror=alert(1)>"
    page = await open_chat(context, app)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await say(page, markup)
    sent = page.locator("#log .msg.in")
    assert await sent.inner_text() == markup
    assert await page.locator("#log img").count() == 0

    await page.reload()  # and from the history frame too
    await page.wait_for_selector("#state[data-state=online]", timeout=TIMEOUT_MS)
    await expect(sent).to_have_count(1)
    assert await sent.inner_text() == markup
    assert await page.locator("#log img").count() == 0
    assert dialogs == []


async def test_conversation_renders_to_a_screenshot(
    app: AppHarness, context: BrowserContext, tmp_path: Path
):
    page = await open_chat(context, app)
    await say(page, "Hola, busco depto")
    await expect(page.locator("#log .msg.out")).to_have_text([WELCOME])
    shot = tmp_path / "webchat.png"
    await page.screenshot(path=shot, full_page=True)
    data = shot.read_bytes()
    assert len(data) > 0
    assert data.startswith(b"\x89PNG\r\n\x1a\n")


async def test_reply_shown_live_is_delivered_even_when_marking_it_sent_is_slow(
    app: AppHarness, context: BrowserContext, monkeypatch: pytest.MonkeyPatch
):
    receipt_stored = asyncio.Event()
    pipeline = app.service.pipeline
    ingest, record = pipeline.ingest, dispatcher_module.record

    async def ingest_noting_receipts(broker_id, provider, events):
        outcome = await ingest(broker_id, provider, events)
        if any(isinstance(e, StatusUpdate) for e in events):
            receipt_stored.set()
        return outcome

    async def slow_record(session, outcomes):
        # A database slower than the browser's round trip: the page's receipt
        # is processed before the row is marked sent.
        if outcomes:
            await asyncio.wait_for(receipt_stored.wait(), TIMEOUT_MS / 1000)
        return await record(session, outcomes)

    monkeypatch.setattr(pipeline, "ingest", ingest_noting_receipts)
    monkeypatch.setattr(dispatcher_module, "record", slow_record)

    page = await open_chat(context, app)
    await say(page, "Hola, busco depto")
    await expect(page.locator("#log .msg.out")).to_have_text([WELCOME])
    reply = next(r for r in await messages(app) if r["direction"] == "out")

    async def settled() -> bool:
        return await status_of(app, reply["id"]) != "pending"

    await wait_for(settled)  # the receipt was processed first, then the row marked sent
    assert await status_of(app, reply["id"]) == "delivered"


async def test_with_read_receipts_the_visitors_message_shows_read(
    make_app: AppFactory, context: BrowserContext
):
    features = "[brokers.demo.features]\ntyping_indicator = true\nread_receipts = true\n"
    toml = DEMO_TOML.replace("[brokers.demo.templates]", features + "[brokers.demo.templates]")
    app = await make_app(toml)
    page = await open_chat(context, app)
    await page.fill("#text", "Hola")
    await page.press("#text", "Enter")
    await expect(page.locator("#log .msg.out")).to_have_text([WELCOME])
    await expect(page.locator("#log .msg.in")).to_have_class("msg in read")
    await expect(page.locator("#typing")).to_have_text("")  # the reply ended the typing
