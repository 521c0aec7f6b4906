"""The fake Graph API (WhatsApp Cloud API part), checked against the provider fixtures.

Runtime tests trust the fake only as far as it answers what PROVIDERS.md §2-§3 and the
`whatsapp_*` fixtures document, so every answer here is compared with a fixture's shape.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.graph_api import FakeGraph, FakeNumber
from tests.fakes.serving import running_fake
from tests.helpers import fixture_json as fixture
from tests.helpers import shape

NUMBER_ID = "106540352242922"
TOKEN = "EAAGexampleTokenNOTREAL123"
OTHER_ID = "106540352242999"
OTHER_TOKEN = "EAAGotherTokenNOTREAL456"
TO = "+16505551234"
MESSAGES = f"/v23.0/{NUMBER_ID}/messages"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENVELOPE_KEYS = {"message", "type", "code", "error_data", "fbtrace_id"}


@pytest.fixture
def fake() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
def number(fake: FakeGraph) -> FakeNumber:
    fake.add_number(OTHER_ID, OTHER_TOKEN)
    return fake.add_number(NUMBER_ID, TOKEN)


@pytest.fixture
async def base_url(fake: FakeGraph) -> AsyncIterator[str]:
    async with running_fake(fake) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Api:
    """Raw HTTP against the fake: (status, parsed JSON)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def post(
        self, body: Any, *, path: str = MESSAGES, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        headers = AUTH if headers is None else headers
        async with self.session.post(self.base_url + path, json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def get(self, url: str, *, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = AUTH if headers is None else headers
        full = url if url.startswith("http") else self.base_url + url
        async with self.session.get(full, headers=headers) as resp:
            return resp.status, await resp.json()


@pytest.fixture
def api(http: aiohttp.ClientSession, base_url: str, number: FakeNumber) -> Api:
    return Api(http, base_url)


def text(body: str = "Hello", to: str = TO) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": body}}


def assert_graph_error(body: Any, code: int, *, error_data: bool = True) -> dict[str, Any]:
    error = body["error"]
    keys = ENVELOPE_KEYS if error_data else ENVELOPE_KEYS - {"error_data"}
    assert set(error) == keys
    assert error["type"] == "OAuthException" and error["code"] == code
    assert isinstance(error["message"], str) and isinstance(error["fbtrace_id"], str)
    if error_data:
        assert set(error["error_data"]) == {"messaging_product", "details"}
        assert error["error_data"]["messaging_product"] == "whatsapp"
    return error


# --- sending ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fixture", "response_fixture"),
    [
        ("whatsapp_send_text_request.json", "whatsapp_send_text_response.json"),
        ("whatsapp_send_reply_context_request.json", "whatsapp_send_text_response.json"),
        ("whatsapp_send_image_by_id_request.json", "whatsapp_send_image_response.json"),
        ("whatsapp_send_image_by_link_request.json", "whatsapp_send_image_response.json"),
        ("whatsapp_send_template_request.json", "whatsapp_send_text_response.json"),
    ],
)
async def test_fixture_sends_are_accepted_with_the_documented_response_shape(
    api: Api, number: FakeNumber, request_fixture: str, response_fixture: str
) -> None:
    request = fixture(request_fixture)
    before = time.monotonic()
    status, body = await api.post(request)

    assert status == 200
    assert shape(body) == shape(fixture(response_fixture))
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+16505551234", "wa_id": "16505551234"}]
    assert body["messages"][0]["id"].startswith("wamid.")
    (sent,) = number.sent
    assert (sent.to, sent.wa_id, sent.type) == (TO, "16505551234", request["type"])
    assert sent.body == request and sent.wamid == body["messages"][0]["id"]
    assert before <= sent.at <= time.monotonic()


async def test_every_media_type_is_accepted_by_link_or_id_and_wamids_are_unique(
    api: Api, number: FakeNumber
) -> None:
    for kind in ("image", "video", "audio", "document", "sticker"):
        for media in ({"id": "1479537139650973"}, {"link": "https://example.com/f.bin"}):
            body = {"messaging_product": "whatsapp", "to": TO, "type": kind, kind: media}
            status, answer = await api.post(body)
            assert status == 200, answer
    assert [m.type for m in number.sent] == [
        kind for kind in ("image", "video", "audio", "document", "sticker") for _ in range(2)
    ]
    assert len({m.wamid for m in number.sent}) == 10


async def test_input_is_echoed_as_sent_and_wa_id_is_its_digits(
    api: Api, number: FakeNumber
) -> None:
    status, body = await api.post(text(to="16505551234"))
    assert status == 200
    assert body["contacts"] == [{"input": "16505551234", "wa_id": "16505551234"}]


async def test_text_of_exactly_4096_characters_is_accepted_and_4097_is_rejected(
    api: Api, number: FakeNumber
) -> None:
    assert (await api.post(text("é" * 4096)))[0] == 200
    status, body = await api.post(text("é" * 4097))
    assert status == 400
    assert "4096" in assert_graph_error(body, 131009)["error_data"]["details"]
    assert len(number.sent) == 1


# --- mark as read and typing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fixture", "typing"),
    [("whatsapp_mark_read_request.json", False), ("whatsapp_typing_indicator_request.json", True)],
)
async def test_mark_read_and_typing_indicator_answer_success_true_and_are_recorded(
    api: Api, number: FakeNumber, request_fixture: str, typing: bool
) -> None:
    request = fixture(request_fixture)
    status, body = await api.post(request)

    assert (status, body) == (200, fixture("whatsapp_mark_read_response.json"))
    (read,) = number.read
    assert (read.message_id, read.typing_indicator) == (request["message_id"], typing)
    assert number.sent == []


# --- the token -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": TOKEN},  # no "Bearer"
        {"Authorization": f"Bearer {OTHER_TOKEN}"},  # another number's token
    ],
    ids=["missing", "wrong", "no-scheme", "other-number"],
)
async def test_missing_or_wrong_token_answers_401_oauth_error_190(
    api: Api, number: FakeNumber, headers: dict[str, str]
) -> None:
    status, body = await api.post(text(), headers=headers)

    assert status == 401
    error = assert_graph_error(body, 190, error_data=False)
    assert shape(body) == shape(fixture("whatsapp_token_expired_error.json"))
    assert "access token" in error["message"]
    assert number.sent == []


async def test_expired_token_answers_the_fixture_message_on_every_endpoint(
    api: Api, fake: FakeGraph, number: FakeNumber
) -> None:
    fake.add_media("1003383421387256", b"jpeg", "image/jpeg")
    number.expire_token()
    expected = fixture("whatsapp_token_expired_error.json")["error"]
    for status, body in (await api.post(text()), await api.get("/v23.0/1003383421387256")):
        assert status == 401
        error = assert_graph_error(body, 190, error_data=False)
        assert error["message"] == expected["message"]


async def test_unknown_phone_number_id_with_a_valid_token_is_graph_error_100(
    api: Api,
) -> None:
    status, body = await api.post(text(), path="/v23.0/999/messages")
    assert status == 400
    error = body["error"]
    assert (error["code"], error["error_subcode"], error["type"]) == (100, 33, "OAuthException")
    assert "Unsupported post request" in error["message"]


# --- body validation ---------------------------------------------------------------------


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (_without(text(), "messaging_product"), 131008),
        ({**text(), "messaging_product": "messenger"}, 131009),
        (_without(text(), "to"), 131008),
        ({**text(), "to": "not a number"}, 131009),
        ({**text(), "recipient_type": "broadcast"}, 131009),
        ({**text(), "type": "hologram"}, 131009),
        (_without(text(), "text"), 131008),
        ({**text(), "text": {"body": ""}}, 131008),
        ({**text(), "text": "Hello"}, 131009),
        ({**text(), "text": {"body": "x", "preview_url": "yes"}}, 131009),
        ({"messaging_product": "whatsapp", "to": TO, "type": "image", "image": {}}, 131008),
        (
            {
                "messaging_product": "whatsapp",
                "to": TO,
                "type": "image",
                "image": {"id": "1", "link": "https://example.com/a.png"},
            },
            131009,
        ),
        (
            {
                "messaging_product": "whatsapp",
                "to": TO,
                "type": "document",
                "document": {"link": "ftp://example.com/a.pdf"},
            },
            131009,
        ),
        (
            {
                "messaging_product": "whatsapp",
                "to": TO,
                "type": "image",
                "image": {"id": "1", "caption": "c" * 1025},
            },
            131009,
        ),
        (
            {
                "messaging_product": "whatsapp",
                "to": TO,
                "type": "template",
                "template": {"name": "hello_world", "language": {}},
            },
            131008,
        ),
        (
            {
                "messaging_product": "whatsapp",
                "to": TO,
                "type": "template",
                "template": {"language": {"code": "en_US"}},
            },
            131008,
        ),
        (
            {
                "messaging_product": "whatsapp",
                "to": TO,
                "type": "template",
                "template": {"name": "x", "language": {"code": "en"}, "components": [1]},
            },
            131009,
        ),
        ({**text(), "context": {"message_id": ""}}, 131009),
        ({"messaging_product": "whatsapp", "status": "read"}, 131008),
        ({"messaging_product": "whatsapp", "status": "read", "message_id": "42"}, 131009),
        ({"messaging_product": "whatsapp", "status": "delivered", "message_id": "wamid.X"}, 131009),
        (
            {
                "messaging_product": "whatsapp",
                "status": "read",
                "message_id": "wamid.X",
                "typing_indicator": {"type": "audio"},
            },
            131009,
        ),
        ([text()], 131009),
    ],
)
async def test_a_bad_body_is_400_with_a_graph_error_and_nothing_is_recorded(
    api: Api, number: FakeNumber, body: Any, code: int
) -> None:
    status, answer = await api.post(body)

    assert status == 400
    assert_graph_error(answer, code)
    assert number.sent == [] and number.read == []


async def test_a_body_that_is_not_json_is_400_graph_error_100(
    http: aiohttp.ClientSession, base_url: str, number: FakeNumber
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(base_url + MESSAGES, data=b"{not json", headers=headers) as resp:
        assert resp.status == 400
        assert_graph_error(await resp.json(), 100)


# --- fault injection -------------------------------------------------------------------------


ERROR_KINDS = [
    ("130429", 400, "whatsapp_rate_limit_error.json"),
    ("131056", 400, "whatsapp_pair_rate_limit_error.json"),
    ("4", 429, None),
    ("80007", 400, None),
    ("131047", 400, None),
    ("131026", 400, None),
    ("131050", 400, None),
    ("500", 500, None),
]


@pytest.mark.parametrize(("kind", "status", "error_fixture"), ERROR_KINDS)
async def test_each_injected_error_answers_its_documented_envelope_once(
    api: Api, number: FakeNumber, kind: str, status: int, error_fixture: str | None
) -> None:
    number.fail_next(kind)
    got_status, body = await api.post(text())

    assert got_status == status
    code = 131000 if kind == "500" else int(kind)
    error = assert_graph_error(body, code)
    assert error["message"].startswith(f"(#{code}) ")
    if error_fixture is not None:
        expected = fixture(error_fixture)["error"]
        expected.pop("error_subcode", None)  # not sent from v16.0 on
        assert {**error, "fbtrace_id": "-"} == {**expected, "fbtrace_id": "-"}
    assert number.sent == []
    assert (await api.post(text()))[0] == 200  # the fault was used up


async def test_131047_details_match_the_outside_window_status_fixture(
    api: Api, number: FakeNumber
) -> None:
    number.fail_next("131047")
    _, body = await api.post(text())
    (status,) = fixture("whatsapp_outside_24h_window_error.json")["entry"][0]["changes"][0][
        "value"
    ]["statuses"]
    (expected,) = status["errors"]
    assert body["error"]["error_data"]["details"] == expected["error_data"]["details"]
    assert body["error"]["message"] == f"(#131047) {expected['title']}"


async def test_rate_limit_error_carries_the_fixture_subcode_only_before_v16(
    api: Api, number: FakeNumber
) -> None:
    number.fail_next("130429", count=2)
    _, old = await api.post(text(), path=f"/v15.0/{NUMBER_ID}/messages")
    _, new = await api.post(text(), path=f"/v16.0/{NUMBER_ID}/messages")
    expected = fixture("whatsapp_rate_limit_error.json")
    assert shape(old) == shape(expected)
    assert old["error"]["error_subcode"] == expected["error"]["error_subcode"]
    assert "error_subcode" not in new["error"]


async def test_injected_190_answers_the_token_expired_fixture(api: Api, number: FakeNumber) -> None:
    number.fail_next("190")
    status, body = await api.post(text())
    expected = fixture("whatsapp_token_expired_error.json")
    assert status == 401
    assert {**body["error"], "fbtrace_id": "-"} == {**expected["error"], "fbtrace_id": "-"}
    assert (await api.post(text()))[0] == 200


async def test_fault_count_status_and_details_can_be_chosen(api: Api, number: FakeNumber) -> None:
    number.fail_next("130429", count=2, status=429, details="slow down")
    for _ in range(2):
        status, body = await api.post(text())
        assert status == 429 and body["error"]["error_data"]["details"] == "slow down"
    assert (await api.post(text()))[0] == 200


async def test_fault_for_one_recipient_spares_others_and_mark_read(
    api: Api, number: FakeNumber
) -> None:
    number.fail_next("131056", to="+1 650-555-1234")
    assert (await api.post(text(to="+447700900123")))[0] == 200
    assert (await api.post(fixture("whatsapp_mark_read_request.json")))[0] == 200
    status, body = await api.post(text(to="16505551234"))
    assert (status, body["error"]["code"]) == (400, 131056)
    assert [m.wa_id for m in number.sent] == ["447700900123"]


async def test_fault_without_recipient_also_hits_mark_read(api: Api, number: FakeNumber) -> None:
    number.fail_next("500")
    status, _ = await api.post(fixture("whatsapp_mark_read_request.json"))
    assert status == 500 and number.read == []


async def test_faults_are_per_number(api: Api, fake: FakeGraph, number: FakeNumber) -> None:
    number.fail_next("4")
    other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    status, _ = await api.post(text(), path=f"/v23.0/{OTHER_ID}/messages", headers=other)
    assert status == 200
    assert (await api.post(text()))[0] == 429
    assert [m.phone_number_id for m in fake.sent()] == [OTHER_ID]


async def test_dropped_connection_gives_no_answer_and_sends_nothing(
    http: aiohttp.ClientSession, base_url: str, api: Api, number: FakeNumber
) -> None:
    number.fail_next("drop")
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(base_url + MESSAGES, json=text(), headers=AUTH) as resp:
            await resp.read()
    assert number.sent == []
    assert (await api.post(text()))[0] == 200


async def test_slow_fault_answers_normally_after_the_delay(api: Api, number: FakeNumber) -> None:
    number.fail_next("slow", delay=0.3)
    started = time.monotonic()
    status, body = await api.post(text())
    assert status == 200 and body["messages"][0]["id"].startswith("wamid.")
    assert 0.3 <= time.monotonic() - started < 2.0
    assert number.sent[0].at - started >= 0.3


async def test_closed_window_refuses_free_form_with_131047_but_not_templates(
    api: Api, number: FakeNumber
) -> None:
    number.closed_windows.add("16505551234")
    status, body = await api.post(text())
    assert (status, body["error"]["code"]) == (400, 131047)
    assert (await api.post(fixture("whatsapp_send_template_request.json")))[0] == 200
    number.undeliverable.add("16505551234")
    status, body = await api.post(fixture("whatsapp_send_template_request.json"))
    assert (status, body["error"]["code"]) == (400, 131026)
    assert [m.type for m in number.sent] == ["template"]


def test_unknown_fault_kinds_are_refused(fake: FakeGraph, number: FakeNumber) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        number.fail_next("131048")
    with pytest.raises(ValueError, match="unknown media fault"):
        fake.fail_next_media("131056")


# --- media ---------------------------------------------------------------------------------


MEDIA_ID = "1003383421387256"
JPEG = b"\xff\xd8\xff\xe0 example jpeg bytes"


async def test_media_url_response_has_the_fixture_shape_and_the_bytes_digest(
    api: Api, fake: FakeGraph, base_url: str
) -> None:
    fake.add_media(MEDIA_ID, JPEG, "image/jpeg")
    status, body = await api.get(f"/v23.0/{MEDIA_ID}")

    assert status == 200
    assert shape(body) == shape(fixture("whatsapp_media_url_response.json"))
    assert body["id"] == MEDIA_ID and body["mime_type"] == "image/jpeg"
    assert body["sha256"] == base64.b64encode(hashlib.sha256(JPEG).digest()).decode()
    assert body["file_size"] == str(len(JPEG))
    assert body["url"].startswith(base_url + "/whatsapp_business/attachments/?mid=" + MEDIA_ID)


async def test_media_url_downloads_the_bytes_only_with_the_token(
    http: aiohttp.ClientSession, api: Api, fake: FakeGraph
) -> None:
    fake.add_media(MEDIA_ID, JPEG, "image/jpeg")
    _, body = await api.get(f"/v23.0/{MEDIA_ID}")
    async with http.get(body["url"], headers=AUTH) as resp:
        assert resp.status == 200 and resp.content_type == "image/jpeg"
        assert await resp.read() == JPEG
    async with http.get(body["url"]) as resp:
        assert resp.status == 401
        assert_graph_error(await resp.json(), 190, error_data=False)


async def test_expired_media_url_is_404_and_a_fresh_one_works(
    http: aiohttp.ClientSession, api: Api, fake: FakeGraph
) -> None:
    fake.add_media(MEDIA_ID, JPEG, "image/jpeg")
    _, old = await api.get(f"/v23.0/{MEDIA_ID}")
    fake.expire_media_urls()
    async with http.get(old["url"], headers=AUTH) as resp:
        assert resp.status == 404
    _, new = await api.get(f"/v23.0/{MEDIA_ID}")
    assert new["url"] != old["url"]
    async with http.get(new["url"], headers=AUTH) as resp:
        assert resp.status == 200 and await resp.read() == JPEG


async def test_media_urls_expire_after_the_configured_ttl(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    fake = FakeGraph(media_url_ttl=0.2)
    fake.add_number(NUMBER_ID, TOKEN)
    fake.add_media(MEDIA_ID, JPEG, "image/jpeg")
    assert FakeGraph().media_url_ttl == 300.0  # the documented 5 minutes by default
    async with running_fake(fake) as url:
        api = Api(http, url)
        _, body = await api.get(f"/v23.0/{MEDIA_ID}")
        async with http.get(body["url"], headers=AUTH) as resp:
            assert resp.status == 200
        time.sleep(0.25)  # the fake reads time.monotonic(); no need to yield
        async with http.get(body["url"], headers=AUTH) as resp:
            assert resp.status == 404


async def test_tampered_media_url_is_404(
    http: aiohttp.ClientSession, api: Api, fake: FakeGraph
) -> None:
    fake.add_media(MEDIA_ID, JPEG, "image/jpeg")
    _, body = await api.get(f"/v23.0/{MEDIA_ID}")
    forged = body["url"].rsplit("hash=", 1)[0] + "hash=forged"
    async with http.get(forged, headers=AUTH) as resp:
        assert resp.status == 404


async def test_unknown_media_id_is_graph_error_100_and_media_needs_a_token(
    api: Api, fake: FakeGraph
) -> None:
    status, body = await api.get("/v23.0/404404")
    assert status == 400 and body["error"]["code"] == 100
    fake.add_media(MEDIA_ID, JPEG, "image/jpeg")
    status, body = await api.get(f"/v23.0/{MEDIA_ID}", headers={})
    assert status == 401
    assert_graph_error(body, 190, error_data=False)
    other = {"Authorization": f"Bearer {OTHER_TOKEN}"}  # media belongs to the WABA
    assert (await api.get(f"/v23.0/{MEDIA_ID}", headers=other))[0] == 200


async def test_media_faults_hit_the_url_lookup_or_the_download(
    http: aiohttp.ClientSession, api: Api, fake: FakeGraph
) -> None:
    fake.add_media(MEDIA_ID, JPEG, "image/jpeg")
    fake.fail_next_media("500")
    status, body = await api.get(f"/v23.0/{MEDIA_ID}")
    assert status == 500 and body["error"]["code"] == 131000
    _, body = await api.get(f"/v23.0/{MEDIA_ID}")
    # aiohttp silently retries a GET once when the connection drops: two drops surface.
    fake.fail_next_media("drop", count=2, download=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(body["url"], headers=AUTH) as resp:
            await resp.read()
    assert [r.path for r in fake.requests[-2:]] == ["/whatsapp_business/attachments/"] * 2
    async with http.get(body["url"], headers=AUTH) as resp:
        assert await resp.read() == JPEG


# --- the request log ---------------------------------------------------------------------


async def test_request_log_never_contains_the_token(
    http: aiohttp.ClientSession, api: Api, fake: FakeGraph
) -> None:
    fake.add_media(MEDIA_ID, JPEG, "image/jpeg")
    await api.post(text())
    await api.post(text(), headers={})
    _, body = await api.get(f"/v23.0/{MEDIA_ID}")
    async with http.get(body["url"], headers=AUTH) as resp:
        await resp.read()

    assert [(r.http_method, r.path, r.phone_number_id, r.had_token) for r in fake.requests] == [
        ("POST", MESSAGES, NUMBER_ID, True),
        ("POST", MESSAGES, NUMBER_ID, False),
        ("GET", f"/v23.0/{MEDIA_ID}", None, True),
        ("GET", "/whatsapp_business/attachments/", None, True),
    ]
    assert fake.requests[0].body == text()
    assert TOKEN not in repr(fake.requests)
