"""The fake Telegram Bot API, proven with the REAL aiogram 3.31 client pointed at it.

If aiogram accepts what the fake answers (and raises the same exceptions it raises
against Telegram), runtime tests built on the fake exercise the real client code.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import BufferedInputFile, ReplyParameters

from tests.fakes.serving import running_fake
from tests.fakes.telegram_api import FakeBot, FakeTelegram, Upload

TOKEN = "111222333:AAExampleToken_not-real"
CHAT = 123456789

BotFactory = Callable[[str], Bot]


class LoopbackSession(AiohttpSession):
    """aiogram's own session; only `close` skips the 250 ms it waits for TLS connections
    to wind down, which plain loopback HTTP does not need (it would add 5 s to this module).
    Requests, form encoding, response checks and downloads are aiogram's, unchanged."""

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


@pytest.fixture
def fake() -> FakeTelegram:
    return FakeTelegram()


@pytest.fixture
def fake_bot(fake: FakeTelegram) -> FakeBot:
    return fake.add_bot(TOKEN, "demo_realty_bot", "Demo Realty")


@pytest.fixture
async def base_url(fake: FakeTelegram) -> AsyncIterator[str]:
    async with running_fake(fake) as url:
        yield url


@pytest.fixture
async def make_bot(base_url: str) -> AsyncIterator[BotFactory]:
    """Real aiogram bots on the fake; each has its own session, as separate processes would."""
    made: list[Bot] = []

    def make(token: str = TOKEN) -> Bot:
        session = LoopbackSession(api=TelegramAPIServer.from_base(base_url))
        made.append(Bot(token, session=session))
        return made[-1]

    yield make
    await asyncio.gather(*(bot.session.close() for bot in made))


@pytest.fixture
def bot(make_bot: BotFactory, fake_bot: FakeBot) -> Bot:
    return make_bot(TOKEN)


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def raw(base_url: str, path: str, http: str = "POST", **kwargs: Any) -> tuple[int, Any]:
    """A request without aiogram, to check the exact wire format."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(http, base_url + path, **kwargs) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


# --- getMe and the error envelope ------------------------------------------------------


async def test_get_me_returns_the_bot_user_whose_id_is_the_token_prefix(bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.is_bot, me.username) == (111222333, True, "demo_realty_bot")


async def test_unknown_token_is_401_and_unknown_method_is_404_with_telegram_bodies(
    base_url: str, fake_bot: FakeBot
) -> None:
    status, body = await raw(base_url, "/bot999:nope/getMe")
    assert (status, body) == (401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
    status, body = await raw(base_url, f"/bot{TOKEN}/getMeNot")
    assert (status, body) == (404, {"ok": False, "error_code": 404, "description": "Not Found"})


async def test_error_bodies_have_the_shape_of_the_provider_fixtures(
    base_url: str, fake_bot: FakeBot
) -> None:
    fake_bot.fail_next("sendMessage", "429", retry_after=35)
    fake_bot.blocked_chats.add(5)
    fake_bot.migrated_chats[-42] = -1001234567890
    send = f"/bot{TOKEN}/sendMessage"
    assert await raw(base_url, send, json={"chat_id": 1, "text": "x"}) == (
        429,
        {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 35",
            "parameters": {"retry_after": 35},
        },
    )
    assert await raw(base_url, send, json={"chat_id": 5, "text": "x"}) == (
        403,
        {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"},
    )
    assert await raw(base_url, send, json={"chat_id": -42, "text": "x"}) == (
        400,
        {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: group chat was upgraded to a supergroup chat",
            "parameters": {"migrate_to_chat_id": -1001234567890},
        },
    )


async def test_params_from_json_query_string_and_form_are_typed_alike(
    fake: FakeTelegram, base_url: str, fake_bot: FakeBot
) -> None:
    reply = {"message_id": 42, "allow_sending_without_reply": True}
    as_json = {"chat_id": CHAT, "text": "a", "reply_parameters": reply}
    as_strings = {"chat_id": str(CHAT), "text": "a", "reply_parameters": json.dumps(reply)}
    path = f"/bot{TOKEN}/sendMessage"
    await raw(base_url, path, json=as_json)
    await raw(base_url, path, "GET", params=as_strings)
    await raw(base_url, path, data=as_strings)
    params = [call.params for call in fake_bot.sent]
    assert params[0] == params[1] == params[2]
    assert params[0]["chat_id"] == CHAT
    assert params[0]["reply_parameters"] == reply
    assert [(r.http_method, r.content_type) for r in fake.requests] == [
        ("POST", "application/json"),
        ("GET", ""),
        ("POST", "application/x-www-form-urlencoded"),
    ]


# --- getUpdates --------------------------------------------------------------------------


async def test_get_updates_returns_pushed_updates_parsed_by_aiogram(
    bot: Bot, fake_bot: FakeBot
) -> None:
    text_id = fake_bot.push_update(fake_bot.text_update(CHAT, "Hello, is anyone there?"))
    fake_bot.push_update(fake_bot.photo_update(CHAT, "Is this the right part?"))
    fake_bot.push_update(fake_bot.callback_update(CHAT, "opt:a"))
    fake_bot.push_update(fake_bot.edited_update(CHAT, 1, "Hello (edited)"))
    fake_bot.push_update(fake_bot.text_update(CHAT, "/start ref_abc"))

    text, photo, callback, edited, command = await bot.get_updates()

    assert text.update_id == text_id and photo.update_id == text_id + 1
    assert text.message.text == "Hello, is anyone there?"
    assert text.message.chat.type == "private" and text.message.from_user.username == "ada_example"
    assert photo.message.caption == "Is this the right part?" and len(photo.message.photo) == 3
    assert callback.callback_query.data == "opt:a"
    assert callback.callback_query.message.from_user.id == 111222333
    assert (edited.edited_message.message_id, edited.edited_message.text) == (1, "Hello (edited)")
    assert edited.edited_message.edit_date is not None
    assert command.message.entities[0].type == "bot_command"
    assert command.message.entities[0].length == len("/start")


async def test_offset_confirms_and_forgets_earlier_updates_and_limit_caps_the_batch(
    bot: Bot, fake_bot: FakeBot
) -> None:
    ids = [fake_bot.push_update(fake_bot.text_update(CHAT, f"m{i}")) for i in range(3)]

    assert [u.update_id for u in await bot.get_updates(limit=2)] == ids[:2]
    assert [u.update_id for u in await bot.get_updates()] == ids  # nothing confirmed yet
    assert [u.update_id for u in await bot.get_updates(offset=ids[2])] == ids[2:]
    assert [u["update_id"] for u in fake_bot.pending_updates] == ids[2:]
    assert await bot.get_updates(offset=ids[2] + 1) == []
    assert fake_bot.pending_updates == []


async def test_long_poll_returns_as_soon_as_an_update_is_pushed(
    bot: Bot, fake_bot: FakeBot
) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await until(lambda: fake_bot.is_polling)
    started = time.monotonic()
    fake_bot.push_update(fake_bot.text_update(CHAT, "now"))
    updates = await poll
    assert time.monotonic() - started < 0.5
    assert [u.message.text for u in updates] == ["now"]


async def test_long_poll_returns_empty_after_the_timeout(bot: Bot, fake_bot: FakeBot) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=1, allowed_updates=["message"]) == []
    assert 0.9 < time.monotonic() - started < 2.0
    assert fake_bot.allowed_updates == ["message"]


async def test_active_webhook_makes_get_updates_raise_conflict(bot: Bot, fake_bot: FakeBot) -> None:
    await bot.set_webhook(
        "https://bots.example.com/telegram/hook",
        secret_token="example_secret",
        allowed_updates=["message", "callback_query"],
        max_connections=10,
    )
    fake_bot.push_update(fake_bot.text_update(CHAT, "queued"))
    info = await bot.get_webhook_info()
    assert (info.url, info.pending_update_count, info.max_connections) == (
        "https://bots.example.com/telegram/hook",
        1,
        10,
    )
    assert fake_bot.webhook is not None and fake_bot.webhook.secret_token == "example_secret"

    with pytest.raises(TelegramConflictError) as caught:
        await bot.get_updates()
    assert "webhook is active" in caught.value.message

    await bot.delete_webhook(drop_pending_updates=True)
    assert await bot.get_updates() == []
    assert (await bot.get_webhook_info()).url == ""


async def test_second_concurrent_poller_terminates_the_first_with_conflict(
    make_bot: BotFactory, fake_bot: FakeBot
) -> None:
    first, second = make_bot(TOKEN), make_bot(TOKEN)
    earlier = asyncio.create_task(first.get_updates(timeout=5))
    await until(lambda: fake_bot.is_polling)

    assert await second.get_updates(timeout=0) == []
    with pytest.raises(TelegramConflictError) as caught:
        await earlier
    assert "terminated by other getUpdates request" in caught.value.message


# --- sending -----------------------------------------------------------------------------


async def test_send_message_and_photo_are_recorded_with_their_params(
    fake: FakeTelegram, bot: Bot, fake_bot: FakeBot
) -> None:
    sent = await bot.send_message(
        CHAT,
        "<b>Thanks!</b> An agent will reply shortly.",
        parse_mode="HTML",
        reply_parameters=ReplyParameters(message_id=42, allow_sending_without_reply=True),
    )
    photo = await bot.send_photo(
        CHAT, "https://cdn.example.com/images/part-123.jpg", caption="The part"
    )

    assert (sent.chat.id, sent.text) == (CHAT, "<b>Thanks!</b> An agent will reply shortly.")
    assert photo.message_id == sent.message_id + 1 and photo.caption == "The part"
    assert photo.photo[-1].file_id
    message, picture = fake_bot.sent
    assert message.method == "sendMessage"
    assert message.params["parse_mode"] == "HTML"
    assert message.params["reply_parameters"] == {
        "message_id": 42,
        "allow_sending_without_reply": True,
    }
    assert picture.method == "sendPhoto"
    assert picture.params["photo"] == "https://cdn.example.com/images/part-123.jpg"
    # aiogram sends a urlencoded form (multipart only with an upload), JSON-dumping non-strings.
    assert fake.calls("sendMessage")[0].content_type == "application/x-www-form-urlencoded"


async def test_every_media_kind_is_sent_by_file_id_and_returns_its_media_field(
    bot: Bot, fake_bot: FakeBot
) -> None:
    assert (await bot.send_video(CHAT, "vid-1")).video.file_id == "vid-1"
    assert (await bot.send_audio(CHAT, "aud-1")).audio.file_id == "aud-1"
    assert (await bot.send_document(CHAT, "doc-1")).document.file_id == "doc-1"
    assert (await bot.send_voice(CHAT, "voi-1")).voice.file_id == "voi-1"
    assert [call.method for call in fake_bot.sent] == [
        "sendVideo",
        "sendAudio",
        "sendDocument",
        "sendVoice",
    ]


async def test_uploaded_document_arrives_as_multipart_and_can_be_fetched_back(
    fake: FakeTelegram, bot: Bot, fake_bot: FakeBot
) -> None:
    upload = BufferedInputFile(b"%PDF-1.4 listing", filename="listing.pdf")
    sent = await bot.send_document(CHAT, upload, caption="Brochure")

    call = fake_bot.sent[0]
    # aiogram labels every uploaded part application/octet-stream, whatever the file.
    assert call.params["document"] == Upload(
        "listing.pdf", "application/octet-stream", b"%PDF-1.4 listing"
    )
    assert fake.calls("sendDocument")[0].content_type == "multipart/form-data"
    assert (sent.document.file_name, sent.document.mime_type) == ("listing.pdf", "application/pdf")
    file = await bot.get_file(sent.document.file_id)
    assert (await bot.download_file(file.file_path)).read() == b"%PDF-1.4 listing"


async def test_chat_action_and_callback_answer_return_true_and_are_recorded(
    bot: Bot, fake_bot: FakeBot
) -> None:
    assert await bot.send_chat_action(CHAT, "typing") is True
    assert await bot.answer_callback_query("4382bfdwdsb323b2d9", text="Option A selected") is True
    action, answer = fake_bot.sent
    assert (action.method, action.params) == (
        "sendChatAction",
        {"chat_id": CHAT, "action": "typing"},
    )
    assert answer.params == {"callback_query_id": "4382bfdwdsb323b2d9", "text": "Option A selected"}


async def test_blocked_chat_raises_forbidden(bot: Bot, fake_bot: FakeBot) -> None:
    fake_bot.blocked_chats.add(CHAT)
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(CHAT, "hello?")
    assert fake_bot.sent == []


async def test_migrated_chat_raises_migrate_to_chat_with_the_new_id(
    bot: Bot, fake_bot: FakeBot
) -> None:
    fake_bot.migrated_chats[-4242] = -1004242
    with pytest.raises(TelegramMigrateToChat) as caught:
        await bot.send_photo(-4242, "https://cdn.example.com/a.jpg")
    assert caught.value.migrate_to_chat_id == -1004242
    assert (await bot.send_message(-1004242, "again")).chat.type == "supergroup"


# --- faults ------------------------------------------------------------------------------


async def test_429_raises_retry_after_with_the_exact_seconds_then_recovers(
    bot: Bot, fake_bot: FakeBot
) -> None:
    fake_bot.fail_next("sendMessage", "429", retry_after=7)
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(CHAT, "hi")
    assert caught.value.retry_after == 7
    assert (await bot.send_message(CHAT, "hi")).text == "hi"


async def test_revoked_token_raises_unauthorized_on_every_call(bot: Bot, fake_bot: FakeBot) -> None:
    fake_bot.revoke()
    with pytest.raises(TelegramUnauthorizedError):
        await bot.get_me()
    with pytest.raises(TelegramUnauthorizedError):
        await bot.get_updates()


@pytest.mark.parametrize(
    ("kind", "error"),
    [("500", TelegramServerError), ("502", TelegramServerError), ("502-html", ClientDecodeError)],
)
async def test_server_errors_raise_what_aiogram_raises(
    bot: Bot, fake_bot: FakeBot, kind: str, error: type[Exception]
) -> None:
    fake_bot.fail_next("getUpdates", kind)
    with pytest.raises(error):
        await bot.get_updates()
    assert await bot.get_updates() == []


async def test_injected_409_on_any_method_raises_conflict(bot: Bot, fake_bot: FakeBot) -> None:
    fake_bot.fail_next("*", "409", count=2)
    for _ in range(2):
        with pytest.raises(TelegramConflictError):
            await bot.get_me()
    assert (await bot.get_me()).is_bot


async def test_dropped_connection_raises_network_error(bot: Bot, fake_bot: FakeBot) -> None:
    fake_bot.fail_next("sendMessage", "drop")
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(CHAT, "lost")
    assert fake_bot.sent == []
    assert (await bot.send_message(CHAT, "found")).text == "found"


# --- files and the request log -------------------------------------------------------------


async def test_get_file_and_download_return_the_registered_bytes(
    bot: Bot, fake_bot: FakeBot
) -> None:
    update = fake_bot.photo_update(CHAT, content=b"\xff\xd8 jpeg bytes")
    fake_bot.push_update(update)
    (received,) = await bot.get_updates()
    largest = received.message.photo[-1]

    file = await bot.get_file(largest.file_id)
    assert file.file_size == len(b"\xff\xd8 jpeg bytes") and file.file_path.startswith("photos/")
    assert (await bot.download_file(file.file_path)).read() == b"\xff\xd8 jpeg bytes"
    path = fake_bot.add_file("BQAC-doc", b"plain", "documents/terms.txt")
    assert (await bot.download_file(path)).read() == b"plain"


async def test_unknown_file_id_is_bad_request_and_unknown_path_is_404(
    bot: Bot, fake_bot: FakeBot
) -> None:
    with pytest.raises(Exception, match="invalid file_id"):
        await bot.get_file("nope")
    # The download goes through aiohttp's raise_for_status, not aiogram's error mapping.
    with pytest.raises(aiohttp.ClientResponseError) as caught:
        await bot.download_file("photos/missing.jpg")
    assert caught.value.status == 404


async def test_request_log_never_contains_the_token(
    fake: FakeTelegram, bot: Bot, fake_bot: FakeBot
) -> None:
    fake_bot.add_file("f1", b"x", "documents/f1.txt")
    await bot.get_me()
    await bot.send_message(CHAT, "hi")
    await bot.download_file("documents/f1.txt")
    fake_bot.revoke()
    with pytest.raises(TelegramUnauthorizedError):
        await bot.get_me()

    assert [(r.method, r.path) for r in fake.requests] == [
        ("getMe", "/bot<token>/getMe"),
        ("sendMessage", "/bot<token>/sendMessage"),
        ("file", "/file/bot<token>/documents/f1.txt"),
        ("getMe", "/bot<token>/getMe"),
    ]
    secret = TOKEN.split(":", 1)[1]
    assert secret not in repr(fake.requests) and TOKEN not in repr(fake.requests)
