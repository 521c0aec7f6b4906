"""`/healthz` and `/`: what runs, what is down or disabled and why, never a secret."""

from __future__ import annotations

from tests.conftest import DEMO_TOML, TEST_ENV, AppFactory

TOML = (
    DEMO_TOML
    + """
[brokers.revoked]
name = "Revoked Realty"

[brokers.revoked.providers.signed]
secret = "${REVOKED_SECRET}"
refuse_start = true

[brokers.revoked.providers.webchat]
enabled = false

[brokers.broken]
name = "Broken"
timezone = "Mars/Olympus"
"""
)
ENV = {**TEST_ENV, "REVOKED_SECRET": "revoked-secret-value"}


async def test_healthz_reports_each_brokers_providers_with_reasons(make_app: AppFactory):
    app = await make_app(TOML, ENV)
    response = await app.client.get("/healthz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    demo = body["brokers"]["demo"]["providers"]
    assert {name: p["state"] for name, p in demo.items()} == {"webchat": "up", "signed": "up"}
    revoked = body["brokers"]["revoked"]["providers"]
    assert revoked["signed"]["state"] == "down"
    assert revoked["signed"]["reason"] == "PermissionError: credential *** was revoked"
    assert (revoked["webchat"]["state"], revoked["webchat"]["reason"]) == (
        "disabled",
        "enabled = false",
    )
    assert body["brokers"]["broken"]["state"] == "invalid"
    assert "revoked-secret-value" not in await response.text()


async def test_one_brokers_dead_channel_leaves_the_others_serving(make_app: AppFactory):
    app = await make_app(TOML, ENV)
    assert (await app.client.get("/webchat/demo")).status == 200
    down = await app.client.post("/webhooks/revoked/signed", data=b"{}")
    assert down.status == 503
    disabled = await app.client.get("/webchat/revoked")
    assert disabled.status == 404
    assert "disabled" in (await disabled.json())["error"]
    invalid = await app.client.post("/webhooks/broken/signed", data=b"{}")
    assert invalid.status == 404
    assert "configuration error" in (await invalid.json())["error"]


async def test_index_lists_the_web_chat_pages(make_app: AppFactory):
    app = await make_app(TOML, ENV)
    body = await (await app.client.get("/")).json()
    assert body["pages"] == ["/webchat/demo"]
