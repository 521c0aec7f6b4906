"""The CRM's HTTP API (`/api/v1`) on the real app: keys and tenants, leads, messages, sends
with idempotency keys, edits, merges, validation, the OpenAPI document, and the events
POSTed to a broker's CRM (a real aiohttp server on loopback stands for the CRM).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web

from tests.conftest import TEST_ENV, AppFactory, AppHarness, wait_for
from tests.fakes.serving import running_fake
from tests.helpers import rows, signed_delivery
from tests.test_process import LEADLINE, child_env

DEMO_KEY = "demo-api-key-0123456789abcdef"
ACME_KEY = "acme-api-key-0123456789abcdef"
CRM_SECRET = "crm-signing-secret-0123456789"
ENV = {**TEST_ENV, "DEMO_API_KEY": DEMO_KEY, "ACME_API_KEY": ACME_KEY, "CRM_SECRET": CRM_SECRET}


def toml(crm_url: str | None = None, acme_keys: bool = True) -> str:
    events = f'\n[brokers.demo.events]\nurl = "{crm_url}"\nsecret = "${{CRM_SECRET}}"\n'
    return f"""
[brokers.demo]
name = "Demo Realty"
default_provider = "signed"
api_keys = ["${{DEMO_API_KEY}}"]
[brokers.demo.providers.webchat]
[brokers.demo.providers.signed]
secret = "${{DEMO_SIGNED_SECRET}}"
[brokers.demo.templates]
welcome = "Hi {{name}}!"
{events if crm_url else ""}
[brokers.acme]
name = "Acme Homes"
{'api_keys = ["${ACME_API_KEY}"]' if acme_keys else ""}
[brokers.acme.providers.signed]
secret = "${{ACME_SIGNED_SECRET}}"
[brokers.acme.features]
auto_reply = false
"""


@dataclass
class Crm:
    """The broker's CRM: takes events, or answers 500 while `down`."""

    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    down: int = 0  # answer this many requests with 500 first

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/events", self._take)
        return app

    def close(self) -> None:
        """Nothing to release."""

    async def _take(self, request: web.Request) -> web.Response:
        if self.down > 0:
            self.down -= 1
            return web.Response(status=500, text="CRM down")
        self.received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


def auth(key: str = DEMO_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def deliver(app: AppHarness, broker: str, *messages: dict[str, Any]) -> None:
    secret = ENV["DEMO_SIGNED_SECRET" if broker == "demo" else "ACME_SIGNED_SECRET"]
    body, headers = signed_delivery(secret, {"messages": list(messages)})
    response = await app.client.post(f"/webhooks/{broker}/signed", data=body, headers=headers)
    assert response.status == 200


def message(message_id: str, sender: str, text: str, name: str | None = None) -> dict[str, Any]:
    return {"id": message_id, "from": sender, "text": text, **({"name": name} if name else {})}


async def get(app: AppHarness, path: str, key: str = DEMO_KEY, **params: Any) -> Any:
    response = await app.client.get(path, headers=auth(key), params=params)
    return response.status, await response.json()


@pytest.fixture
async def api(make_app: AppFactory) -> AppHarness:
    app = await make_app(toml(), env=ENV)
    await deliver(app, "demo", message("m1", "u1", "hola", "Ana"), message("m2", "u2", "hi", "Bo"))
    await deliver(app, "acme", message("m9", "u9", "acme's lead", "Cy"))
    return app


async def lead_id(app: AppHarness, broker: str, user: str) -> int:
    found = await rows(
        app.service.engine,
        "SELECT lead_id FROM lead_channels WHERE broker_id = :b AND channel_user_id = :u",
        b=broker,
        u=user,
    )
    return found[0]["lead_id"]


# --- keys and tenants -----------------------------------------------------------------------


async def test_a_missing_or_wrong_key_is_401_and_names_the_scheme(api: AppHarness) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic x"}):
        response = await api.client.get("/api/v1/leads", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "error" in await response.json()


async def test_every_route_with_another_brokers_key_and_ids_is_404(api: AppHarness) -> None:
    demo_lead = await lead_id(api, "demo", "u1")
    [demo_message] = await rows(
        api.service.engine, "SELECT id FROM chat_messages WHERE broker_id = 'demo' LIMIT 1"
    )
    acme = auth(ACME_KEY)
    client = api.client
    answers = [
        await client.get(f"/api/v1/leads/{demo_lead}", headers=acme),
        await client.patch(f"/api/v1/leads/{demo_lead}", headers=acme, json={"name": "x"}),
        await client.get(f"/api/v1/leads/{demo_lead}/messages", headers=acme),
        await client.post(f"/api/v1/leads/{demo_lead}/messages", headers=acme, json={"text": "x"}),
        await client.post(
            f"/api/v1/leads/{await lead_id(api, 'acme', 'u9')}/merge",
            headers=acme,
            json={"merge_lead_id": demo_lead},
        ),
        await client.get(f"/api/v1/messages/{demo_message['id']}", headers=acme),
    ]
    assert [a.status for a in answers] == [404] * 6
    status, page = await get(api, "/api/v1/leads", ACME_KEY)
    assert status == 200 and [lead["name"] for lead in page["items"]] == ["Cy"]
    demo_rows = await rows(api.service.engine, "SELECT * FROM leads WHERE id = :i", i=demo_lead)
    assert demo_rows[0]["name"] == "Ana"  # nothing changed


async def test_a_broker_without_keys_has_the_api_off(make_app: AppFactory) -> None:
    app = await make_app(toml(acme_keys=False), env=ENV)
    response = await app.client.get("/api/v1/leads", headers=auth(ACME_KEY))
    assert response.status == 401


# --- leads ----------------------------------------------------------------------------------


async def test_leads_page_by_cursor_and_filter_by_provider_tag_text_and_time(
    api: AppHarness,
) -> None:
    await deliver(api, "demo", *(message(f"p{i}", f"p{i}", "x", f"Pat {i}") for i in range(5)))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        status, page = await get(api, "/api/v1/leads", **params)
        assert status == 200
        seen += [lead["name"] for lead in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["Ana", "Bo", "Pat 0", "Pat 1", "Pat 2", "Pat 3", "Pat 4"]
    ana = await lead_id(api, "demo", "u1")
    patch = await api.client.patch(
        f"/api/v1/leads/{ana}", headers=auth(), json={"tags": ["hot", "buyer"], "phone": "+34600"}
    )
    assert patch.status == 200
    assert [x["name"] for x in (await get(api, "/api/v1/leads", tag="hot"))[1]["items"]] == ["Ana"]
    assert [x["name"] for x in (await get(api, "/api/v1/leads", q="pat 3"))[1]["items"]] == [
        "Pat 3"
    ]
    assert [x["name"] for x in (await get(api, "/api/v1/leads", q="+346"))[1]["items"]] == ["Ana"]
    assert len((await get(api, "/api/v1/leads", provider="signed"))[1]["items"]) == 7
    assert (await get(api, "/api/v1/leads", provider="webchat"))[1]["items"] == []
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert (await get(api, "/api/v1/leads", updated_since=later))[1]["items"] == []
    before = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert len((await get(api, "/api/v1/leads", updated_since=before))[1]["items"]) == 7


async def test_one_lead_comes_with_its_channels(api: AppHarness) -> None:
    status, lead = await get(api, f"/api/v1/leads/{await lead_id(api, 'demo', 'u1')}")
    assert status == 200 and lead["name"] == "Ana"
    assert lead["channels"] == [
        {"provider": "signed", "channel_user_id": "u1", "channel_username": None}
    ]


async def test_a_lead_update_checks_its_fields_and_names_the_bad_one(api: AppHarness) -> None:
    ana = await lead_id(api, "demo", "u1")
    path = f"/api/v1/leads/{ana}"
    for body, bad in [
        ({"phone": "9" * 65}, "phone"),
        ({"tags": ["ok", ""]}, "tags.1"),
        ({"nickname": "A"}, "nickname"),
        ({"name": "A\u0000na"}, "name"),
    ]:
        response = await api.client.patch(path, headers=auth(), json=body)
        assert response.status == 422
        assert [f["field"] for f in (await response.json())["fields"]] == [bad]
    garbage = await api.client.patch(path, headers=auth(), data=b"{not json")
    assert (garbage.status, (await garbage.json())["fields"][0]["field"]) == (422, "body")
    good = await api.client.patch(path, headers=auth(), json={"name": "Ana María"})
    assert (await good.json())["name"] == "Ana María"


async def test_bad_query_parameters_and_cursors_are_422_naming_them(api: AppHarness) -> None:
    for params, bad in [
        ({"limit": 0}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"updated_since": "yesterday"}, "updated_since"),
        ({"updated_since": "2026-01-01T00:00:00"}, "updated_since"),  # no time zone
        ({"colour": "red"}, "colour"),
    ]:
        status, body = await get(api, "/api/v1/leads", **params)
        assert status == 422, params
        assert [f["field"] for f in body["fields"]] == [bad]
    assert (
        await api.client.get("/api/v1/leads/99999999999999999999", headers=auth())
    ).status == 404


async def test_merging_two_leads_moves_channels_and_messages_and_is_recorded(
    api: AppHarness,
) -> None:
    ana, bo = await lead_id(api, "demo", "u1"), await lead_id(api, "demo", "u2")
    path = f"/api/v1/leads/{ana}/merge"
    same = await api.client.post(path, headers=auth(), json={"merge_lead_id": ana})
    assert (same.status, (await same.json())["fields"][0]["field"]) == (422, "merge_lead_id")
    response = await api.client.post(path, headers=auth(), json={"merge_lead_id": bo})
    assert response.status == 200
    merged = await response.json()
    assert {c["channel_user_id"] for c in merged["channels"]} == {"u1", "u2"}
    assert (await get(api, f"/api/v1/leads/{bo}"))[0] == 404
    _, page = await get(api, f"/api/v1/leads/{ana}/messages", direction="in")
    assert [m["text"] for m in page["items"]] == ["hola", "hi"]
    [record] = await rows(api.service.engine, "SELECT * FROM lead_merges")
    assert (record["into_lead_id"], record["from_lead_id"]) == (ana, bo)


# --- messages ---------------------------------------------------------------------------------


async def test_messages_come_in_time_order_across_providers_page_by_page(api: AppHarness) -> None:
    ana = await lead_id(api, "demo", "u1")
    async with api.service.engine.begin() as conn:  # Ana also has a web chat channel
        await conn.execute(
            sa.text(
                "INSERT INTO lead_channels (lead_id, broker_id, provider, channel_user_id, "
                "created_at) VALUES (:l, 'demo', 'webchat', 'visitor-0001', :t)"
            ),
            {"l": ana, "t": datetime.now(UTC).replace(tzinfo=None)},
        )

    async def welcomed() -> bool:  # the welcome is queued before the sends below
        found = await rows(
            api.service.engine, "SELECT id FROM chat_messages WHERE direction = 'out'"
        )
        return len(found) == 2

    await wait_for(welcomed)
    for n in range(3):
        response = await api.client.post(
            f"/api/v1/leads/{ana}/messages",
            headers=auth(),
            json={"text": f"out {n}", "provider": "webchat"},
        )
        assert response.status == 202
    texts: list[str] = []
    providers: set[str] = set()
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        status, page = await get(api, f"/api/v1/leads/{ana}/messages", **params)
        assert status == 200
        texts += [m["text"] for m in page["items"]]
        providers |= {m["provider"] for m in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert texts == ["hola", "Hi Ana!", "out 0", "out 1", "out 2"]
    assert providers == {"signed", "webchat"}
    status, only = await get(api, f"/api/v1/leads/{ana}/messages", provider="webchat")
    assert [m["text"] for m in only["items"]] == ["out 0", "out 1", "out 2"]


async def test_a_sent_message_is_queued_then_sent_and_its_status_readable(api: AppHarness) -> None:
    ana = await lead_id(api, "demo", "u1")
    response = await api.client.post(
        f"/api/v1/leads/{ana}/messages", headers=auth(), json={"text": "A visit on Monday?"}
    )
    assert response.status == 202
    queued = await response.json()
    assert queued["status"] == "pending"

    async def sent() -> bool:
        status, found = await get(api, f"/api/v1/messages/{queued['id']}")
        return status == 200 and found["status"] == "sent"

    await wait_for(sent)
    assert "A visit on Monday?" in [m.text for m in api.adapter("demo", "signed").sent]


async def test_an_idempotency_key_makes_a_repeat_answer_the_first_message(api: AppHarness) -> None:
    ana = await lead_id(api, "demo", "u1")
    path = f"/api/v1/leads/{ana}/messages"
    headers = {**auth(), "Idempotency-Key": "crm-op-77"}
    first = await api.client.post(path, headers=headers, json={"text": "once"})
    second = await api.client.post(path, headers=headers, json={"text": "once"})
    assert (first.status, second.status) == (202, 202)
    assert (await first.json())["id"] == (await second.json())["id"]
    other = await api.client.post(path, headers=headers, json={"text": "twice?"})
    assert other.status == 422
    assert (await other.json())["fields"][0]["field"] == "Idempotency-Key"
    found = await rows(
        api.service.engine, "SELECT id FROM chat_messages WHERE message_text = 'once'"
    )
    assert len(found) == 1


async def test_unfit_sends_are_422_naming_the_field(api: AppHarness) -> None:
    ana = await lead_id(api, "demo", "u1")
    path = f"/api/v1/leads/{ana}/messages"
    for body, bad in [
        ({}, "body"),  # neither text, attachment nor template
        ({"text": "x", "provider": "webchat"}, "provider"),  # no web chat channel
        ({"text": "x", "attachments": [{"kind": "image"}]}, None),
        ({"text": "x" * 20_001}, "text"),
        (
            {"text": "x", "attachments": [{"kind": "hologram", "url": "https://x.y/z"}]},
            "attachments.0.kind",
        ),
    ]:
        response = await api.client.post(path, headers=auth(), json=body)
        if bad is None:
            assert response.status == 202  # an attachment without url goes to the adapter
            continue
        assert response.status == 422, body
        assert (await response.json())["fields"][0]["field"] == bad


# --- the OpenAPI document -----------------------------------------------------------------------


async def test_the_openapi_document_lists_exactly_the_api_routes(api: AppHarness) -> None:
    response = await api.client.get("/api/v1/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.")
    documented = {
        (path.replace("{lead_id}", "L").replace("{message_id}", "M"), method.upper())
        for path, item in document["paths"].items()
        for method in item
    }
    served = set()
    for route in api.client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path") or ""
        if (
            not path.startswith("/api/v1")
            or path.endswith("openapi.json")
            or route.method == "HEAD"
        ):
            continue
        served.add((path.replace("{lead_id}", "L").replace("{message_id}", "M"), route.method))
    assert documented == served


# --- events for the CRM -------------------------------------------------------------------------


@pytest.fixture
async def crm() -> AsyncIterator[tuple[Crm, str]]:
    fake = Crm()
    async with running_fake(fake) as base:
        yield fake, f"{base}/events"


async def test_stored_messages_and_status_changes_reach_the_crm_signed(
    make_app: AppFactory, crm: tuple[Crm, str]
) -> None:
    fake, url = crm
    app = await make_app(toml(url), env=ENV)
    await deliver(app, "demo", message("m1", "u1", "hola", "Ana"))

    async def heard() -> bool:
        kinds = [(e["event"], e["message"]["status"]) for e in fake.events()]
        return ("message.stored", "delivered") in kinds and ("message.status", "sent") in kinds

    await wait_for(heard, timeout=20)
    for headers, body in fake.received:
        expected = "sha256=" + hmac.new(CRM_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Leadline-Signature"], expected)
        assert headers["X-Leadline-Event"] == str(json.loads(body)["id"])
    first = fake.events()[0]
    assert first["lead_id"] == await lead_id(app, "demo", "u1")
    assert first["message"]["text"] == "hola" and first["broker"] == "demo"


async def test_a_crm_that_fails_gets_events_later_in_order_and_status_shows_it(
    make_app: AppFactory, crm: tuple[Crm, str], tmp_path: Path, database_url: str
) -> None:
    fake, url = crm
    fake.down = 10**6  # the CRM is down
    app = await make_app(toml(url), env=ENV)
    for n in range(3):  # ingestion never waits for the CRM
        await deliver(app, "demo", message(f"m{n}", "u1", f"message {n}", "Ana"))

    async def failing() -> bool:
        found = await rows(app.service.engine, "SELECT attempts FROM crm_events ORDER BY id")
        return bool(found) and found[0]["attempts"] >= 1

    await wait_for(failing, timeout=20)
    env = child_env(tmp_path, database_url)
    env.update(ENV, LEADLINE_BROKERS_FILE=str(app.settings.brokers_file))
    process = await asyncio.create_subprocess_exec(
        LEADLINE, "status", env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    line = next(x for x in out.decode().splitlines() if x.startswith("demo ") and "HTTP 500" in x)
    assert int(line.split()[2]) >= 1  # failing
    fake.down = 0
    async with app.service.engine.begin() as conn:  # the retries are due now
        await conn.execute(sa.text("UPDATE crm_events SET next_attempt_at = NULL"))

    async def all_heard() -> bool:
        stored = [e for e in fake.events() if e["event"] == "message.stored"]
        return len(stored) == 3

    await wait_for(all_heard, timeout=30)
    texts = [e["message"]["text"] for e in fake.events() if e["event"] == "message.stored"]
    assert texts == ["message 0", "message 1", "message 2"]  # in order, per lead
    ids = [e["id"] for e in fake.events()]
    assert ids == sorted(ids)


async def test_events_written_before_a_merge_reach_the_crm_under_the_lead_they_joined(
    make_app: AppFactory, crm: tuple[Crm, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = crm
    fake.down = 10**6  # the CRM is down while the messages come and the leads merge
    app = await make_app(toml(url), env=ENV)
    await deliver(app, "demo", message("m1", "u1", "hola", "Ana"), message("m2", "u2", "hi", "Bo"))
    ana, bo = await lead_id(app, "demo", "u1"), await lead_id(app, "demo", "u2")
    merged = await app.client.post(
        f"/api/v1/leads/{ana}/merge", headers=auth(), json={"merge_lead_id": bo}
    )
    assert merged.status == 200
    fake.down = 0
    async with app.service.engine.begin() as conn:  # the retries are due now
        await conn.execute(sa.text("UPDATE crm_events SET next_attempt_at = NULL"))

    async def both_heard() -> bool:
        texts = {e["message"]["text"] for e in fake.events() if e["event"] == "message.stored"}
        return texts == {"hola", "hi"}

    await wait_for(both_heard, timeout=30)
    assert {e["lead_id"] for e in fake.events()} == {ana}  # never the merged-away `bo`
    logged = caplog.text
    for secret in (DEMO_KEY, CRM_SECRET):
        assert secret not in logged
