"""The fake Graph API (Messenger and Instagram part), checked against the provider fixtures.

Runtime tests trust the fake only as far as it answers what PROVIDERS.md §2, §4 and §5 and
the `messenger_*` and `instagram_*` fixtures document, so every answer here is compared
with a fixture's shape.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.graph_api import FakeGraph, FakeNumber
from tests.fakes.graph_pages import FakePage, SentPageMessage
from tests.fakes.serving import running_fake
from tests.helpers import fixture_json as fixture
from tests.helpers import shape

PAGE_ID = "102030405060708"
PAGE_TOKEN = "EAAGpageTokenNOTREAL"
OTHER_PAGE_ID = "102030405069999"
OTHER_PAGE_TOKEN = "EAAGotherPageTokenNOTREAL"
IG_ID = "17841400000000001"
IG_TOKEN = "IGQWtokenNOTREAL"
NUMBER_ID = "106540352242922"
NUMBER_TOKEN = "EAAGnumberTokenNOTREAL"
PSID = "1254459154682919"  # the messenger_* fixtures' recipient
IGSID = "1234567890123456"  # the instagram_* fixtures' recipient
OTHER_PSID = "1254459154680000"
PAGE_MESSAGES = f"/v23.0/{PAGE_ID}/messages"
IG_MESSAGES = f"/v23.0/{IG_ID}/messages"
PAGE_AUTH = {"Authorization": f"Bearer {PAGE_TOKEN}"}
IG_AUTH = {"Authorization": f"Bearer {IG_TOKEN}"}
ENVELOPE_KEYS = {"message", "type", "code", "fbtrace_id"}

MESSENGER_SENDS = [
    "messenger_send_request.json",
    "messenger_send_attachment_url_request.json",
    "messenger_send_human_agent_tag_request.json",
    "messenger_send_reply_to_request.json",
]
INSTAGRAM_SENDS = [
    "instagram_send_request.json",
    "instagram_send_image_request.json",
    "instagram_send_human_agent_request.json",
]


@pytest.fixture
def fake() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
def page(fake: FakeGraph) -> FakePage:
    fake.add_page(OTHER_PAGE_ID, OTHER_PAGE_TOKEN, name="Other Realty")
    return fake.add_page(PAGE_ID, PAGE_TOKEN, name="Example Realty")


@pytest.fixture
def ig(fake: FakeGraph) -> FakePage:
    return fake.add_instagram_account(IG_ID, IG_TOKEN, username="example.realty")


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
        self,
        body: Any,
        *,
        path: str = PAGE_MESSAGES,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = PAGE_AUTH if headers is None else headers
        url = self.base_url + path
        async with self.session.post(url, json=body, headers=headers, params=params) as resp:
            return resp.status, await resp.json()

    async def get(
        self,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = PAGE_AUTH if headers is None else headers
        async with self.session.get(self.base_url + path, headers=headers, params=params) as resp:
            return resp.status, await resp.json()


@pytest.fixture
def api(http: aiohttp.ClientSession, base_url: str, page: FakePage, ig: FakePage) -> Api:
    return Api(http, base_url)


def text(body: str = "Hello", to: str = PSID, **extra: Any) -> dict[str, Any]:
    return {
        "recipient": {"id": to},
        "messaging_type": "RESPONSE",
        "message": {"text": body},
        **extra,
    }


def ig_text(body: str = "Hello", to: str = IGSID) -> dict[str, Any]:
    return {"recipient": {"id": to}, "message": {"text": body}}


def human_agent(to: str = PSID) -> dict[str, Any]:
    body = text("Sam here, following up.", to=to)
    return {**body, "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}


def image(url: str = "https://cdn.example.com/a.jpg") -> dict[str, Any]:
    return {"type": "image", "payload": {"url": url}}


def assert_graph_error(body: Any, code: int, subcode: int | None = None) -> dict[str, Any]:
    """The Graph envelope as Messenger sends it: no WhatsApp `error_data`."""
    error = body["error"]
    assert set(error) == (ENVELOPE_KEYS if subcode is None else ENVELOPE_KEYS | {"error_subcode"})
    assert error["type"] == "OAuthException" and error["code"] == code
    assert error.get("error_subcode") == subcode
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["fbtrace_id"], str) and error["fbtrace_id"]
    return error


# --- sending --------------------------------------------------------------------------------


@pytest.mark.parametrize("request_fixture", MESSENGER_SENDS)
async def test_messenger_fixture_sends_are_accepted_with_the_documented_response_shape(
    api: Api, page: FakePage, request_fixture: str
) -> None:
    request = fixture(request_fixture)
    before = time.monotonic()
    status, body = await api.post(request)

    assert status == 200
    assert shape(body) == shape(fixture("messenger_send_response.json"))
    assert body["recipient_id"] == PSID and body["message_id"].startswith("m_")
    (sent,) = page.sent
    assert (sent.recipient, sent.body, sent.mid) == (PSID, request, body["message_id"])
    assert (sent.messaging_type, sent.tag) == (request["messaging_type"], request.get("tag"))
    assert sent.text == request["message"].get("text")
    assert sent.attachment_type == request["message"].get("attachment", {}).get("type")
    assert before <= sent.at <= time.monotonic()
    assert page.actions == []


@pytest.mark.parametrize("request_fixture", INSTAGRAM_SENDS)
async def test_instagram_fixture_sends_are_accepted_with_the_documented_response_shape(
    api: Api, ig: FakePage, request_fixture: str
) -> None:
    request = fixture(request_fixture)
    status, body = await api.post(request, path=IG_MESSAGES, headers=IG_AUTH)

    assert status == 200
    assert shape(body) == shape(fixture("instagram_send_response.json"))
    assert body["recipient_id"] == IGSID
    (sent,) = ig.sent
    assert (sent.recipient, sent.body, sent.mid) == (IGSID, request, body["message_id"])
    assert (sent.messaging_type, sent.tag) == (request.get("messaging_type"), request.get("tag"))


async def test_message_ids_look_like_meta_s_and_are_unique(api: Api, ig: FakePage) -> None:
    page_mids = [(await api.post(text()))[1]["message_id"] for _ in range(3)]
    ig_mids = [
        (await api.post(ig_text(), path=IG_MESSAGES, headers=IG_AUTH))[1]["message_id"]
        for _ in range(3)
    ]
    assert len(set(page_mids)) == 3 and len(set(ig_mids)) == 3
    assert all(mid.startswith("m_") and len(mid) > 40 for mid in page_mids)
    fixture_mid = fixture("instagram_send_response.json")["message_id"]
    for mid in ig_mids:
        assert mid.startswith(fixture_mid[:4])  # "aWdf": base64 of "ig_"
        decoded = base64.b64decode(mid + "=" * (-len(mid) % 4))
        assert decoded.startswith(b"ig_item:1:IGMessage:" + IG_ID.encode())


async def test_me_messages_is_the_page_or_account_the_token_belongs_to(
    api: Api, fake: FakeGraph, page: FakePage, ig: FakePage
) -> None:
    assert (await api.post(text(), path="/v23.0/me/messages"))[0] == 200
    status, _ = await api.post(ig_text(), path="/v23.0/me/messages", headers=IG_AUTH)
    assert status == 200
    assert [m.recipient for m in page.sent] == [PSID]
    assert [m.recipient for m in ig.sent] == [IGSID]
    assert [r.page_id for r in fake.requests] == [PAGE_ID, IG_ID]


async def test_attachment_by_id_and_up_to_30_or_10_images_are_accepted(
    api: Api, page: FakePage, ig: FakePage
) -> None:
    by_id = {"type": "file", "payload": {"attachment_id": "1857777774821032"}}
    assert (await api.post(text(), path=PAGE_MESSAGES))[0] == 200
    for kind in ("image", "audio", "video", "file"):
        body = {**text(), "message": {"attachment": {**by_id, "type": kind}}}
        assert (await api.post(body))[0] == 200
    assert (await api.post({**text(), "message": {"attachments": [image()] * 30}}))[0] == 200
    status, answer = await api.post({**text(), "message": {"attachments": [image()] * 31}})
    assert status == 400 and "30" in assert_graph_error(answer, 100)["message"]

    ig_images = {**ig_text(), "message": {"attachments": [image()] * 10}}
    assert (await api.post(ig_images, path=IG_MESSAGES, headers=IG_AUTH))[0] == 200
    ig_images["message"]["attachments"].append(image())
    status, answer = await api.post(ig_images, path=IG_MESSAGES, headers=IG_AUTH)
    assert status == 400 and "10" in assert_graph_error(answer, 100)["message"]
    assert [m.attachment_type for m in page.sent] == [None, "image", "audio", "video", "file", None]
    assert len(ig.sent) == 1


async def test_metadata_quick_replies_and_reply_to_are_accepted(api: Api, page: FakePage) -> None:
    body = text(reply_to={"mid": "m_ExampleMidText0001"})
    body["message"]["metadata"] = "m" * 1000
    body["message"]["quick_replies"] = [{"content_type": "text", "title": "Yes", "payload": "Y"}]
    assert (await api.post(body))[0] == 200
    assert page.sent[0].body == body


# --- sender actions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fixture", "path", "headers"),
    [
        ("messenger_sender_action_typing_on_request.json", PAGE_MESSAGES, PAGE_AUTH),
        ("messenger_sender_action_mark_seen_request.json", PAGE_MESSAGES, PAGE_AUTH),
        ("instagram_sender_action_request.json", IG_MESSAGES, IG_AUTH),
        ("instagram_sender_action_request.json", "/v23.0/me/messages", IG_AUTH),
    ],
)
async def test_sender_action_fixtures_answer_recipient_id_and_are_recorded_not_sent(
    api: Api, fake: FakeGraph, request_fixture: str, path: str, headers: dict[str, str]
) -> None:
    request = fixture(request_fixture)
    status, body = await api.post(request, path=path, headers=headers)

    assert status == 200
    assert shape(body) == shape(fixture("messenger_sender_action_response.json"))
    recipient = request["recipient"]["id"]
    assert body == {"recipient_id": recipient}
    target = fake.pages[IG_ID if headers is IG_AUTH else PAGE_ID]
    (action,) = target.actions
    assert (action.recipient, action.action) == (recipient, request["sender_action"])
    assert target.sent == []


async def test_typing_off_is_a_sender_action_and_unknown_actions_are_refused(
    api: Api, page: FakePage
) -> None:
    assert (await api.post({"recipient": {"id": PSID}, "sender_action": "typing_off"}))[0] == 200
    status, body = await api.post({"recipient": {"id": PSID}, "sender_action": "typing"})
    assert status == 400
    assert "typing_on" in assert_graph_error(body, 100)["message"]
    assert [a.action for a in page.actions] == ["typing_off"]


# --- text limits ------------------------------------------------------------------------------


async def test_messenger_text_limit_is_2000_characters_whatever_their_bytes(
    api: Api, page: FakePage
) -> None:
    assert (await api.post(text("€" * 2000)))[0] == 200  # 6000 bytes
    status, body = await api.post(text("a" * 2001))
    assert status == 400
    assert "2000" in assert_graph_error(body, 100)["message"]
    assert len(page.sent) == 1


async def test_instagram_text_limit_is_1000_utf8_bytes_not_characters(
    api: Api, ig: FakePage
) -> None:
    accepted = "€" * 333  # 999 bytes, 333 characters
    refused = "€" * 333 + "é"  # 1001 bytes, 334 characters
    assert len(accepted.encode()) == 999 and len(refused.encode()) == 1001
    assert (await api.post(ig_text(accepted), path=IG_MESSAGES, headers=IG_AUTH))[0] == 200
    assert (await api.post(ig_text("a" * 1000), path=IG_MESSAGES, headers=IG_AUTH))[0] == 200
    status, body = await api.post(ig_text(refused), path=IG_MESSAGES, headers=IG_AUTH)
    assert status == 400
    assert "1000 bytes" in assert_graph_error(body, 100)["message"]
    assert [m.text for m in ig.sent] == [accepted, "a" * 1000]


# --- body validation --------------------------------------------------------------------------


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


def _message(message: Any) -> dict[str, Any]:
    return {**text(), "message": message}


def _attachment(payload: Any, kind: str = "image") -> dict[str, Any]:
    return _message({"attachment": {"type": kind, "payload": payload}})


@pytest.mark.parametrize(
    "body",
    [
        [text()],
        _without(text(), "recipient"),
        {**text(), "recipient": {"id": ""}},
        {**text(), "recipient": {"id": 1254459154682919}},
        {**text(), "recipient": "1254459154682919"},
        _without(text(), "message"),
        {**text(), "sender_action": "typing_on"},
        _message("Hello"),
        _message({}),
        _message({"text": ""}),
        _message({"text": 42}),
        _message({"text": "Hi", "attachment": image()}),
        _message({"text": "Hi", "sticker_id": 369239263222822}),
        _message({"text": "Hi", "metadata": "m" * 1001}),
        _message({"text": "Hi", "metadata": 7}),
        _message({"text": "Hi", "quick_replies": []}),
        _message({"attachment": {"type": "template", "payload": {"url": "https://a.example/"}}}),
        _message({"attachment": {"type": "image"}}),
        _attachment({}),
        _attachment({"url": "https://a.example/x.jpg", "attachment_id": "1"}),
        _attachment({"url": "ftp://a.example/x.jpg"}),
        _attachment({"url": "not a url"}),
        _attachment({"attachment_id": ""}),
        _attachment({"url": "https://a.example/x.jpg", "is_reusable": "yes"}),
        _message({"attachments": []}),
        _message({"attachments": [{**image(), "type": "video"}]}),
        _message({"attachments": image()}),
        {**text(), "reply_to": {"mid": ""}},
        {**text(), "reply_to": "m_ExampleMidText0001"},
        _without(text(), "messaging_type"),
        {**text(), "messaging_type": "NON_PROMOTIONAL_SUBSCRIPTION"},
        {**text(), "tag": "HUMAN_AGENT"},
        {**text(), "messaging_type": "MESSAGE_TAG"},
        {**text(), "messaging_type": "MESSAGE_TAG", "tag": "CUSTOMER_FEEDBACK"},
    ],
)
async def test_a_bad_messenger_body_is_400_graph_error_100_and_nothing_is_recorded(
    api: Api, page: FakePage, body: Any
) -> None:
    status, answer = await api.post(body)

    assert status == 400
    assert answer["error"]["message"].startswith("(#100) ")
    assert_graph_error(answer, 100)
    assert page.sent == [] and page.actions == []


@pytest.mark.parametrize(
    "tag", ["CONFIRMED_EVENT_UPDATE", "ACCOUNT_UPDATE", "POST_PURCHASE_UPDATE"]
)
async def test_tags_deprecated_on_2026_04_27_are_refused_with_code_100(
    api: Api, page: FakePage, ig: FakePage, tag: str
) -> None:
    body = {**text(), "messaging_type": "MESSAGE_TAG", "tag": tag}
    status, answer = await api.post(body)
    assert status == 400
    assert tag in assert_graph_error(answer, 100)["message"]
    body["recipient"]["id"] = IGSID
    assert (await api.post(body, path=IG_MESSAGES, headers=IG_AUTH))[0] == 400
    assert page.sent == [] and ig.sent == []


async def test_messaging_type_is_required_on_messenger_but_optional_on_instagram(
    api: Api, page: FakePage, ig: FakePage
) -> None:
    status, body = await api.post(_without(text(), "messaging_type"))
    assert status == 400 and "messaging_type" in assert_graph_error(body, 100)["message"]
    assert (await api.post(ig_text(), path=IG_MESSAGES, headers=IG_AUTH))[0] == 200
    for kind in ("RESPONSE", "UPDATE"):
        body = {**ig_text(), "messaging_type": kind}
        assert (await api.post(body, path=IG_MESSAGES, headers=IG_AUTH))[0] == 200
    assert [m.messaging_type for m in ig.sent] == [None, "RESPONSE", "UPDATE"]


async def test_a_body_that_is_not_json_is_400_graph_error_100(
    http: aiohttp.ClientSession, base_url: str, api: Api, page: FakePage
) -> None:
    headers = {**PAGE_AUTH, "Content-Type": "application/json"}
    async with http.post(base_url + PAGE_MESSAGES, data=b"{not json", headers=headers) as resp:
        assert resp.status == 400
        assert_graph_error(await resp.json(), 100)
    assert page.sent == []


# --- the token --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": PAGE_TOKEN}],
    ids=["missing", "wrong", "no-scheme"],
)
async def test_missing_or_unknown_token_answers_401_invalid_oauth_token_190(
    api: Api, page: FakePage, headers: dict[str, str]
) -> None:
    for path in (PAGE_MESSAGES, "/v23.0/me/messages"):
        status, body = await api.post(text(), path=path, headers=headers)
        assert status == 401
        error = assert_graph_error(body, 190)
        assert error["message"] == "Invalid OAuth access token - Cannot parse access token"
    assert (await api.get(f"/v23.0/{PAGE_ID}", headers=headers))[0] == 401
    assert (await api.get(f"/v23.0/{PAGE_ID}/subscribed_apps", headers=headers))[0] == 401
    assert (await api.get("/v23.0/app", headers=headers))[0] == 401
    assert page.sent == []


async def test_the_token_may_come_as_the_access_token_query_parameter(
    api: Api, fake: FakeGraph, page: FakePage
) -> None:
    status, _ = await api.post(text(), headers={}, params={"access_token": PAGE_TOKEN})
    assert status == 200
    status, _ = await api.get(f"/v23.0/{PAGE_ID}", headers={}, params={"access_token": PAGE_TOKEN})
    assert status == 200
    assert len(page.sent) == 1
    assert [r.had_token for r in fake.requests] == [True, True]


@pytest.mark.parametrize(
    ("path", "verb"),
    [
        (f"/v23.0/{OTHER_PAGE_ID}/messages", "post"),
        (f"/v23.0/{IG_ID}/messages", "post"),
        ("/v23.0/999000999/messages", "post"),
    ],
)
async def test_a_known_token_on_another_object_is_graph_error_100_subcode_33(
    api: Api, fake: FakeGraph, path: str, verb: str
) -> None:
    status, body = await api.post(text(), path=path)  # this page's token

    assert status == 400
    error = assert_graph_error(body, 100, 33)
    object_id = path.split("/")[2]
    assert error["message"].startswith(f"(#100) Unsupported {verb} request. Object with ID")
    assert f"'{object_id}'" in error["message"]
    assert all(p.sent == [] for p in fake.pages.values())


async def test_another_objects_token_on_get_is_graph_error_100_subcode_33(api: Api) -> None:
    for path in (f"/v23.0/{OTHER_PAGE_ID}", f"/v23.0/{IG_ID}/subscribed_apps"):
        status, body = await api.get(path)
        assert status == 400
        assert "Unsupported get request" in assert_graph_error(body, 100, 33)["message"]


async def test_expired_token_answers_190_session_expired_on_every_endpoint(
    api: Api, page: FakePage, ig: FakePage
) -> None:
    page.expire_token()
    expected = fixture("whatsapp_token_expired_error.json")["error"]["message"]
    answers = [
        await api.post(text()),
        await api.post(text(), path="/v23.0/me/messages"),
        await api.post({"recipient": {"id": PSID}, "sender_action": "typing_on"}),
        await api.get(f"/v23.0/{PAGE_ID}"),
        await api.get(f"/v23.0/{PAGE_ID}/subscribed_apps"),
        await api.post(None, path=f"/v23.0/{PAGE_ID}/subscribed_apps?subscribed_fields=messages"),
        await api.get("/v23.0/app"),
    ]
    for status, body in answers:
        assert status == 401
        error = assert_graph_error(body, 190)
        assert error["message"].startswith("Error validating access token: Session has expired")
        assert error["message"] == expected
    assert page.sent == [] and page.actions == []
    assert (await api.post(ig_text(), path=IG_MESSAGES, headers=IG_AUTH))[0] == 200


async def test_request_log_records_page_calls_but_never_the_token(
    api: Api, fake: FakeGraph
) -> None:
    await api.post(text())
    await api.post(text(), headers={}, params={"access_token": PAGE_TOKEN})
    await api.post(text(), headers={})
    await api.get(f"/v23.0/{PAGE_ID}/subscribed_apps")
    await api.get("/v23.0/app")

    assert [(r.http_method, r.path, r.page_id, r.had_token) for r in fake.requests] == [
        ("POST", PAGE_MESSAGES, PAGE_ID, True),
        ("POST", PAGE_MESSAGES, PAGE_ID, True),
        ("POST", PAGE_MESSAGES, PAGE_ID, False),
        ("GET", f"/v23.0/{PAGE_ID}/subscribed_apps", PAGE_ID, True),
        ("GET", "/v23.0/app", None, True),
    ]
    assert all(r.phone_number_id is None for r in fake.requests)
    assert fake.requests[0].body == text()
    assert PAGE_TOKEN not in repr(fake.requests)


# --- fault injection --------------------------------------------------------------------------


FAULTS = [
    # kind, HTTP status, code, subcode, error fixture
    ("613", 400, 613, None, "messenger_rate_limit_error.json"),
    ("10_2018278", 400, 10, 2018278, "messenger_outside_window_error.json"),
    ("4", 429, 4, None, None),
    ("1545041", 400, 1545041, None, None),
    ("551", 400, 551, 1545041, None),
    ("100", 400, 100, None, None),
    ("190", 401, 190, None, None),
    ("500", 500, 2, None, None),
]


@pytest.mark.parametrize(("kind", "status", "code", "subcode", "error_fixture"), FAULTS)
async def test_each_injected_error_answers_its_envelope_once(
    api: Api,
    page: FakePage,
    kind: str,
    status: int,
    code: int,
    subcode: int | None,
    error_fixture: str | None,
) -> None:
    page.fail_next(kind)
    got_status, body = await api.post(text())

    assert got_status == status
    error = assert_graph_error(body, code, subcode)
    if error_fixture is not None:
        expected = fixture(error_fixture)
        assert shape(body) == shape(expected)
        assert {**error, "fbtrace_id": "-"} == {**expected["error"], "fbtrace_id": "-"}
    assert page.sent == []
    assert (await api.post(text()))[0] == 200  # the fault was used up


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("4", "(#4) Application request limit reached"),
        ("1545041", "(#1545041) Messaging window closed"),
        ("551", "(#551) This person isn't available right now."),
        ("500", "An unexpected error has occurred. Please retry your request later."),
    ],
)
async def test_injected_error_messages_are_graph_s(
    api: Api, page: FakePage, kind: str, message: str
) -> None:
    page.fail_next(kind)
    _, body = await api.post(text())
    assert body["error"]["message"] == message


async def test_instagram_faults_use_the_same_envelopes(api: Api, ig: FakePage) -> None:
    ig.fail_next("613")
    status, body = await api.post(ig_text(), path=IG_MESSAGES, headers=IG_AUTH)
    expected = fixture("messenger_rate_limit_error.json")["error"]
    assert status == 400
    assert {**body["error"], "fbtrace_id": "-"} == {**expected, "fbtrace_id": "-"}
    assert ig.sent == []


async def test_fault_count_and_status_can_be_chosen(api: Api, page: FakePage) -> None:
    page.fail_next("613", count=2, status=429)
    for _ in range(2):
        status, body = await api.post(text())
        assert (status, body["error"]["code"]) == (429, 613)
    assert (await api.post(text()))[0] == 200


async def test_fault_for_one_recipient_spares_other_recipients_and_their_actions(
    api: Api, page: FakePage
) -> None:
    page.fail_next("551", to=PSID)
    assert (await api.post(text(to=OTHER_PSID)))[0] == 200
    typing = {"recipient": {"id": OTHER_PSID}, "sender_action": "typing_on"}
    assert (await api.post(typing))[0] == 200
    status, body = await api.post(text(to=PSID))
    assert (status, body["error"]["code"]) == (400, 551)
    assert [m.recipient for m in page.sent] == [OTHER_PSID]
    assert (await api.post(text(to=PSID)))[0] == 200


async def test_sender_actions_consume_faults_too(api: Api, page: FakePage) -> None:
    page.fail_next("613")
    status, body = await api.post(fixture("messenger_sender_action_typing_on_request.json"))
    assert (status, body["error"]["code"]) == (400, 613)
    assert page.actions == []
    assert (await api.post(text()))[0] == 200


async def test_faults_are_per_page(api: Api, fake: FakeGraph, page: FakePage) -> None:
    page.fail_next("4")
    other = {"Authorization": f"Bearer {OTHER_PAGE_TOKEN}"}
    path = f"/v23.0/{OTHER_PAGE_ID}/messages"
    assert (await api.post(text(), path=path, headers=other))[0] == 200
    assert (await api.post(text()))[0] == 429
    assert len(fake.pages[OTHER_PAGE_ID].sent) == 1 and page.sent == []


async def test_dropped_connection_gives_no_answer_and_sends_nothing(
    http: aiohttp.ClientSession, base_url: str, api: Api, page: FakePage
) -> None:
    page.fail_next("drop")
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(base_url + PAGE_MESSAGES, json=text(), headers=PAGE_AUTH) as resp:
            await resp.read()
    assert page.sent == []
    assert (await api.post(text()))[0] == 200


async def test_slow_fault_answers_normally_after_the_delay(api: Api, page: FakePage) -> None:
    page.fail_next("slow", delay=0.3)
    started = time.monotonic()
    status, body = await api.post(text())
    assert status == 200 and body["message_id"].startswith("m_")
    assert 0.3 <= time.monotonic() - started < 2.0
    assert page.sent[0].at - started >= 0.3


async def test_latency_delays_every_answer(api: Api, page: FakePage) -> None:
    page.latency = 0.2
    started = time.monotonic()
    assert (await api.post(text()))[0] == 200
    assert (await api.get(f"/v23.0/{PAGE_ID}"))[0] == 200
    assert time.monotonic() - started >= 0.4


def test_unknown_fault_kinds_are_refused(page: FakePage) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        page.fail_next("131056")


# --- the messaging window ---------------------------------------------------------------------


async def test_closed_window_refuses_response_and_update_with_the_fixture_error(
    api: Api, page: FakePage
) -> None:
    page.closed_windows.add(PSID)
    expected = fixture("messenger_outside_window_error.json")
    for kind in ("RESPONSE", "UPDATE"):
        status, body = await api.post(text(messaging_type=kind))
        assert status == 400
        assert shape(body) == shape(expected)
        assert {**body["error"], "fbtrace_id": "-"} == {**expected["error"], "fbtrace_id": "-"}
    assert (await api.post(text(to=OTHER_PSID)))[0] == 200  # other windows stay open
    assert [m.recipient for m in page.sent] == [OTHER_PSID]


async def test_human_agent_tag_goes_through_a_closed_window_until_its_7_days_are_over(
    api: Api, page: FakePage
) -> None:
    page.closed_windows.add(PSID)
    request = fixture("messenger_send_human_agent_tag_request.json")
    assert (await api.post(request))[0] == 200
    page.human_agent_expired.add(PSID)
    status, body = await api.post(request)
    assert status == 400
    assert_graph_error(body, 1545041)
    assert [(m.messaging_type, m.tag) for m in page.sent] == [("MESSAGE_TAG", "HUMAN_AGENT")]


async def test_human_agent_expiry_matters_only_while_the_window_is_closed(
    api: Api, page: FakePage
) -> None:
    page.human_agent_expired.add(PSID)
    assert (await api.post(human_agent()))[0] == 200
    assert (await api.post(text()))[0] == 200


async def test_instagram_closed_window_refuses_untagged_sends_but_not_human_agent(
    api: Api, ig: FakePage
) -> None:
    ig.closed_windows.add(IGSID)
    status, body = await api.post(ig_text(), path=IG_MESSAGES, headers=IG_AUTH)
    assert status == 400
    assert_graph_error(body, 10, 2018278)
    request = fixture("instagram_send_human_agent_request.json")
    assert (await api.post(request, path=IG_MESSAGES, headers=IG_AUTH))[0] == 200
    assert [m.tag for m in ig.sent] == ["HUMAN_AGENT"]


async def test_sender_actions_ignore_a_closed_window(api: Api, page: FakePage) -> None:
    page.closed_windows.add(PSID)
    request = fixture("messenger_sender_action_mark_seen_request.json")
    assert (await api.post(request))[0] == 200
    assert [a.action for a in page.actions] == ["mark_seen"]


# --- before_answer ----------------------------------------------------------------------------


async def test_before_answer_runs_after_acceptance_and_before_the_http_answer(
    api: Api, page: FakePage
) -> None:
    seen: list[tuple[SentPageMessage, bool, float]] = []

    async def hook(message: SentPageMessage) -> None:
        seen.append((message, message in page.sent, time.monotonic()))
        await asyncio.sleep(0.2)

    page.before_answer = hook
    started = time.monotonic()
    status, body = await api.post(text())
    answered = time.monotonic()

    assert status == 200
    ((message, recorded, hook_at),) = seen
    assert recorded and message.mid == body["message_id"]
    assert answered - hook_at >= 0.2 and hook_at >= started
    assert (await api.post(fixture("messenger_sender_action_typing_on_request.json")))[0] == 200
    assert len(seen) == 1  # sender actions do not run it


async def test_before_answer_does_not_run_for_a_refused_send(api: Api, page: FakePage) -> None:
    calls: list[SentPageMessage] = []

    async def hook(message: SentPageMessage) -> None:
        calls.append(message)

    page.before_answer = hook
    page.fail_next("613")
    assert (await api.post(text()))[0] == 400
    assert (await api.post(text("")))[0] == 400
    assert calls == []


# --- Page details, the app, subscriptions -----------------------------------------------------


async def test_page_details_without_a_linked_instagram_account(api: Api) -> None:
    status, body = await api.get(f"/v23.0/{PAGE_ID}", params={"fields": "id,name"})
    assert (status, body) == (200, {"id": PAGE_ID, "name": "Example Realty"})
    assert (await api.get("/v23.0/me"))[1] == body


async def test_page_details_name_the_linked_instagram_account(
    http: aiohttp.ClientSession, base_url: str, fake: FakeGraph
) -> None:
    fake.add_page(PAGE_ID, PAGE_TOKEN, name="Example Realty", instagram_account_id=IG_ID)
    status, body = await Api(http, base_url).get(
        f"/v23.0/{PAGE_ID}", params={"fields": "id,name,instagram_business_account"}
    )
    assert status == 200
    assert body == {
        "id": PAGE_ID,
        "name": "Example Realty",
        "instagram_business_account": {"id": IG_ID},
    }


async def test_instagram_account_details_give_username_and_user_id(api: Api) -> None:
    status, body = await api.get(f"/v23.0/{IG_ID}", headers=IG_AUTH)
    assert (status, body) == (200, {"id": IG_ID, "username": "example.realty", "user_id": IG_ID})
    assert (await api.get("/v23.0/me", headers=IG_AUTH))[1] == body


async def test_app_answers_its_id_to_any_known_token(
    api: Api, fake: FakeGraph, http: aiohttp.ClientSession
) -> None:
    fake.add_number(NUMBER_ID, NUMBER_TOKEN)
    fake.app_id = "1000000000000042"
    number_auth = {"Authorization": f"Bearer {NUMBER_TOKEN}"}
    for headers in (PAGE_AUTH, IG_AUTH, number_auth):
        status, body = await api.get("/v23.0/app", headers=headers)
        assert (status, body) == (200, {"id": "1000000000000042", "name": "Leadline Test App"})
    assert FakeGraph().app_id == "1517776481860111"


async def test_subscribed_apps_default_to_the_fields_each_kind_needs(
    api: Api, fake: FakeGraph
) -> None:
    status, body = await api.get(f"/v23.0/{PAGE_ID}/subscribed_apps")
    assert status == 200
    assert body == {
        "data": [
            {
                "id": fake.app_id,
                "name": "Leadline Test App",
                "subscribed_fields": [
                    "messages",
                    "messaging_postbacks",
                    "message_echoes",
                    "message_deliveries",
                    "message_reads",
                    "message_reactions",
                ],
            }
        ]
    }
    _, body = await api.get("/v23.0/me/subscribed_apps", headers=IG_AUTH)
    assert body["data"][0]["subscribed_fields"] == [
        "messages",
        "messaging_seen",
        "message_reactions",
        "messaging_postbacks",
    ]


async def test_unsubscribe_leaves_no_subscribed_app_and_a_post_subscribes_again(
    api: Api, page: FakePage
) -> None:
    page.unsubscribe()
    assert (await api.get(f"/v23.0/{PAGE_ID}/subscribed_apps")) == (200, {"data": []})
    status, body = await api.post(
        None,
        path=f"/v23.0/{PAGE_ID}/subscribed_apps",
        params={"subscribed_fields": "messages,message_echoes"},
    )
    assert (status, body) == (200, {"success": True})
    assert page.subscribed_fields == ["messages", "message_echoes"]
    _, body = await api.get(f"/v23.0/{PAGE_ID}/subscribed_apps")
    assert body["data"][0]["subscribed_fields"] == ["messages", "message_echoes"]


async def test_subscribed_fields_may_come_as_a_form_or_json_field_and_under_me(
    http: aiohttp.ClientSession, base_url: str, api: Api, page: FakePage, ig: FakePage
) -> None:
    url = f"{base_url}/v23.0/me/subscribed_apps"
    form = {"subscribed_fields": "messages, messaging_postbacks"}
    async with http.post(url, data=form, headers=PAGE_AUTH) as resp:
        assert (resp.status, await resp.json()) == (200, {"success": True})
    assert page.subscribed_fields == ["messages", "messaging_postbacks"]
    status, _ = await api.post(
        {"subscribed_fields": ["messages", "messaging_seen"]},
        path=f"/v23.0/{IG_ID}/subscribed_apps",
        headers=IG_AUTH,
    )
    assert status == 200 and ig.subscribed_fields == ["messages", "messaging_seen"]


@pytest.mark.parametrize(
    ("body", "params"),
    [
        (None, None),
        ({}, None),
        ({"subscribed_fields": ""}, None),
        (None, {"subscribed_fields": ""}),
    ],
)
async def test_subscribing_without_fields_is_graph_error_100(
    api: Api, page: FakePage, body: Any, params: dict[str, str] | None
) -> None:
    status, answer = await api.post(body, path=f"/v23.0/{PAGE_ID}/subscribed_apps", params=params)
    assert status == 400
    error = assert_graph_error(answer, 100)
    assert error["message"] == "(#100) The parameter subscribed_fields is required"
    assert len(page.subscribed_fields) == 6  # unchanged


async def test_subscribing_with_a_malformed_field_name_is_graph_error_100(
    api: Api, page: FakePage
) -> None:
    path = f"/v23.0/{PAGE_ID}/subscribed_apps"
    status, answer = await api.post(None, path=path, params={"subscribed_fields": "messages,,x y"})
    assert status == 400
    assert "subscribed_fields[1]" in assert_graph_error(answer, 100)["message"]


# --- Page-linked Instagram (Messenger API for Instagram) ----------------------------------------


async def test_page_linked_instagram_sends_follow_instagram_rules_and_land_on_the_account(
    http: aiohttp.ClientSession, base_url: str, fake: FakeGraph
) -> None:
    ig = fake.add_instagram_account(IG_ID, IG_TOKEN)
    page = fake.add_page(PAGE_ID, PAGE_TOKEN, instagram_account_id=IG_ID)
    page.instagram_recipients.add(IGSID)
    api = Api(http, base_url)

    status, body = await api.post(fixture("instagram_send_request.json"))  # the Page's token
    assert status == 200
    assert shape(body) == shape(fixture("instagram_send_response.json"))
    assert body["message_id"].startswith("aWdf")
    assert (await api.post(fixture("instagram_sender_action_request.json")))[0] == 200
    assert (await api.post(ig_text("€" * 333 + "é")))[0] == 400  # 1001 bytes
    assert (await api.post(text()))[0] == 200  # a PSID: Messenger, as before
    assert [m.recipient for m in ig.sent] == [IGSID]
    assert [a.action for a in ig.actions] == ["typing_on"]
    assert [m.recipient for m in page.sent] == [PSID]

    ig.fail_next("551")  # the account's faults apply to its users
    status, body = await api.post(ig_text())
    assert (status, body["error"]["code"]) == (400, 551)


# --- WhatsApp on the same fake ----------------------------------------------------------------


async def test_whatsapp_routes_keep_working_beside_pages(
    api: Api, fake: FakeGraph, page: FakePage
) -> None:
    number: FakeNumber = fake.add_number(NUMBER_ID, NUMBER_TOKEN)
    fake.add_media("1003383421387256", b"jpeg", "image/jpeg")
    auth = {"Authorization": f"Bearer {NUMBER_TOKEN}"}
    status, body = await api.post(
        fixture("whatsapp_send_text_request.json"),
        path=f"/v23.0/{NUMBER_ID}/messages",
        headers=auth,
    )
    assert status == 200 and body["messages"][0]["id"].startswith("wamid.")
    assert (await api.get(f"/v23.0/{NUMBER_ID}", headers=auth))[1]["id"] == NUMBER_ID
    assert (await api.get("/v23.0/1003383421387256", headers=auth))[1]["mime_type"] == "image/jpeg"
    # A Page's token does not reach the number, and a number's token does not reach the Page.
    assert (await api.post(text(), path=f"/v23.0/{NUMBER_ID}/messages"))[0] == 401
    status, body = await api.post(text(), headers=auth)
    assert status == 400
    assert_graph_error(body, 100, 33)
    assert len(number.sent) == 1 and page.sent == []


def test_ids_are_unique_across_numbers_pages_and_accounts(fake: FakeGraph) -> None:
    fake.add_number(NUMBER_ID, NUMBER_TOKEN)
    fake.add_page(PAGE_ID, PAGE_TOKEN)
    for add in (fake.add_page, fake.add_instagram_account):
        for taken in (NUMBER_ID, PAGE_ID, "me"):
            with pytest.raises(ValueError, match="already taken"):
                add(taken, "EAAGanotherTokenNOTREAL")


# --- the User Profile API ---------------------------------------------------------------------


async def test_a_profile_answers_the_fields_asked_for_and_the_id(
    api: Api, page: FakePage, ig: FakePage
) -> None:
    page.add_profile(PSID, first_name="Peter", last_name="Chang", profile_pic="https://x/p.jpg")
    status, body = await api.get(f"/v23.0/{PSID}", params={"fields": "first_name,last_name"})
    assert (status, body) == (200, {"id": PSID, "first_name": "Peter", "last_name": "Chang"})
    ig.add_profile(IGSID, name="Peter Chang", username="peter.chang", follower_count=1234)
    status, body = await api.get(
        f"/v23.0/{IGSID}", headers=IG_AUTH, params={"fields": "name,username"}
    )
    assert (status, body) == (200, {"id": IGSID, "name": "Peter Chang", "username": "peter.chang"})


async def test_a_user_without_a_profile_is_graph_error_2018218(api: Api, page: FakePage) -> None:
    page.add_profile(PSID)
    status, body = await api.get(f"/v23.0/{PSID}", params={"fields": "first_name"})
    assert status == 400
    assert assert_graph_error(body, 2018218)["message"] == "No profile available for this user."


async def test_profile_faults_and_an_expired_token_apply_to_profile_reads(
    api: Api, page: FakePage
) -> None:
    page.add_profile(PSID, first_name="Peter")
    page.fail_next_profile("500")
    status, body = await api.get(f"/v23.0/{PSID}", params={"fields": "first_name"})
    assert status == 500 and assert_graph_error(body, 2)
    assert (await api.get(f"/v23.0/{PSID}", params={"fields": "first_name"}))[0] == 200
    page.expire_token()
    status, body = await api.get(f"/v23.0/{PSID}", params={"fields": "first_name"})
    assert status == 401 and assert_graph_error(body, 190)
