"""`leadline check --online` only looks; `leadline webhooks subscribe` is what changes the
provider's delivery. Both run as the command line runs them (a process of their own),
against the fake Telegram and Graph APIs on loopback, which log every request."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.fakes.graph_api import FakeGraph
from tests.fakes.serving import running_fake
from tests.fakes.telegram_api import FakeTelegram, Webhook

LEADLINE = str(Path(sys.executable).parent / "leadline")
PUBLIC_URL = "https://leadline.example"
OURS = f"{PUBLIC_URL}/webhooks/demo/telegram"
FOREIGN = "https://legacy-crm.example/telegram/hook"
TG_TOKEN = "111222333:AAE-demo-token-not-real"
PAGE, IG, NUMBER = "102030405060708", "17841400000000001", "106540352242922"
ENV = {
    "TG_TOKEN": TG_TOKEN,
    "TG_SECRET": "hook-secret_42",
    "PAGE_TOKEN": "EAAGdemoPageTokenNOTREAL",
    "IG_TOKEN": "IGQWdemoTokenNOTREAL",
    "WA_TOKEN": "EAAGdemoWhatsAppTokenNOTREAL",
    "META_APP_SECRET": "meta-app-secret-NOT-REAL",
    "META_VERIFY": "verify-me-please",
}
# What changes what Telegram delivers, and where.
TELEGRAM_CHANGES = {"setwebhook", "deletewebhook", "getupdates", "logout", "close"}


async def leadline(tmp_path: Path, brokers: str, *args: str) -> tuple[int, str]:
    """The console script on `brokers`, as an operator runs it."""
    path = tmp_path / "brokers.toml"
    path.write_text(brokers)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLINE_")}
    env.update(ENV, LEADLINE_BROKERS_FILE=str(path), LEADLINE_PUBLIC_URL=PUBLIC_URL)
    process = await asyncio.create_subprocess_exec(
        LEADLINE, *args, env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert all(secret not in out.decode() + err.decode() for secret in ENV.values())
    return process.returncode or 0, out.decode()


def telegram_toml(base: str, mode: str) -> str:
    secret = 'webhook_secret = "${TG_SECRET}"' if mode == "webhook" else ""
    return f"""
[brokers.demo]
name = "Demo Realty"
[brokers.demo.providers.telegram]
bot_token = "${{TG_TOKEN}}"
api_base = "{base}"
mode = "{mode}"
{secret}
"""


def foreign_webhook() -> Webhook:
    """What another system (the broker's old CRM) set for the bot: its URL, messages only."""
    return Webhook(FOREIGN, secret_token="theirs", allowed_updates=["message"], max_connections=40)


def telegram_changes(fake: FakeTelegram) -> list[str]:
    return [r.method for r in fake.requests if r.method.lower() in TELEGRAM_CHANGES]


async def test_check_online_reports_a_foreign_webhook_in_webhook_mode_and_leaves_it_set(
    tmp_path: Path,
) -> None:
    fake = FakeTelegram()
    bot = fake.add_bot(TG_TOKEN, "demo_realty_bot")
    bot.webhook = foreign_webhook()
    async with running_fake(fake) as base:
        code, out = await leadline(tmp_path, telegram_toml(base, "webhook"), "check", "--online")
    assert code == 1, out
    assert (
        f"online: broker demo, telegram: Telegram delivers updates to {FOREIGN}, not here; "
        "Telegram withholds edited_message, callback_query updates from that webhook"
    ) in out
    assert "valid, but not every broker can run as configured" in out
    assert telegram_changes(fake) == []
    assert sorted({r.method for r in fake.requests}) == ["getMe", "getWebhookInfo"]
    assert bot.webhook == foreign_webhook()


async def test_check_online_reports_a_webhook_a_polling_bot_would_delete_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    fake = FakeTelegram()
    bot = fake.add_bot(TG_TOKEN, "demo_realty_bot")
    bot.webhook = foreign_webhook()
    async with running_fake(fake) as base:
        toml = telegram_toml(base, "polling")
        code, out = await leadline(tmp_path, toml, "check", "--online")
        assert code == 1, out
        assert f"online: broker demo, telegram: a webhook is set for this bot ({FOREIGN})" in out
        assert "`leadline run` deletes it to poll" in out
        assert telegram_changes(fake) == []
        assert bot.webhook == foreign_webhook()

        bot.webhook = None
        code, out = await leadline(tmp_path, toml, "check", "--online")
    assert code == 0, out
    assert "online: broker demo, telegram: webhooks delivered here" in out
    assert telegram_changes(fake) == []


async def test_webhooks_subscribe_is_what_sets_the_telegram_webhook_here(tmp_path: Path) -> None:
    fake = FakeTelegram()
    bot = fake.add_bot(TG_TOKEN, "demo_realty_bot")
    bot.webhook = foreign_webhook()
    async with running_fake(fake) as base:
        toml = telegram_toml(base, "webhook")
        code, out = await leadline(tmp_path, toml, "webhooks", "subscribe", "demo", "telegram")
        assert (code, out.strip()) == (0, "online: broker demo, telegram: webhooks delivered here")
        assert telegram_changes(fake) == ["setWebhook"]
        assert bot.webhook is not None and bot.webhook.url == OURS
        assert bot.webhook.secret_token == ENV["TG_SECRET"]
        assert bot.webhook.allowed_updates == ["message", "edited_message", "callback_query"]
        code, out = await leadline(tmp_path, toml, "check", "--online")
    assert code == 0, out
    assert telegram_changes(fake) == ["setWebhook"]  # still the one of `subscribe`


def graph_toml(facebook: str, instagram: str) -> str:
    meta = 'app_secret = "${META_APP_SECRET}"\nverify_token = "${META_VERIFY}"'
    return f"""
[brokers.demo]
name = "Demo Realty"
[brokers.demo.providers.messenger]
page_id = "{PAGE}"
page_access_token = "${{PAGE_TOKEN}}"
api_base = "{facebook}"
{meta}
[brokers.demo.providers.instagram]
ig_account_id = "{IG}"
access_token = "${{IG_TOKEN}}"
api_base = "{instagram}"
{meta}
[brokers.demo.providers.whatsapp]
phone_number_id = "{NUMBER}"
access_token = "${{WA_TOKEN}}"
api_base = "{facebook}"
{meta}
"""


async def test_check_online_makes_no_post_to_graph_and_only_subscribe_does(
    tmp_path: Path,
) -> None:
    facebook, instagram = FakeGraph(), FakeGraph()
    page = facebook.add_page(PAGE, ENV["PAGE_TOKEN"])
    facebook.add_number(NUMBER, ENV["WA_TOKEN"])
    account = instagram.add_instagram_account(IG, ENV["IG_TOKEN"])
    page.unsubscribe()  # Meta's hour-long outage rule
    account.unsubscribe()
    async with running_fake(facebook) as fb_url, running_fake(instagram) as ig_url:
        toml = graph_toml(fb_url, ig_url)
        code, out = await leadline(tmp_path, toml, "check", "--online")
        assert code == 1, out
        assert f"online: broker demo, messenger: {PAGE} is not subscribed" in out
        assert f"online: broker demo, instagram: {IG} is not subscribed" in out
        assert "online: broker demo, whatsapp: webhooks delivered here" in out
        asked = [*facebook.requests, *instagram.requests]
        assert asked and {r.http_method for r in asked} == {"GET"}
        assert (page.subscribed_fields, account.subscribed_fields) == ([], [])

        code, out = await leadline(tmp_path, toml, "webhooks", "subscribe", "demo", "messenger")
        assert code == 0, out
        posts = [r.path for r in facebook.requests if r.http_method == "POST"]
        assert posts == [f"/v24.0/{PAGE}/subscribed_apps"]
        assert "messages" in page.subscribed_fields
        assert account.subscribed_fields == []  # only the channel named
