"""The aiohttp application: webhooks, the adapters' public routes, and `/healthz`.

Every answer to bad input is a 4xx with a reason in JSON; a failure on our side
(the database) is a 503, so providers retry. Nothing is acknowledged before it
is stored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime

import sqlalchemy as sa
from aiohttp import web

from leadline.adapters.base import (
    Adapter,
    HttpReply,
    InboundEvent,
    PublicRoute,
    RequestRejected,
)
from leadline.adapters.registry import Registry
from leadline.config.brokers import BrokersFile
from leadline.config.settings import Settings
from leadline.runtime.api import openapi
from leadline.runtime.api import routes as api
from leadline.runtime.bodies import (
    ClientErrorsQuiet,
    close_after_unfinished_body,
    fail_bodies_on_broken_framing,
    read_body,
)
from leadline.runtime.channels import Channel, ChannelState
from leadline.runtime.logs import Redactor
from leadline.runtime.pipeline import PipelineStopped
from leadline.runtime.routing import route as route_events
from leadline.runtime.sanitize import checked_events
from leadline.runtime.service import SERVICE, Service, open_service
from leadline.storage.delivery_report import DeliveryCounts, delivery_counts
from leadline.storage.types import utcnow

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def build_app(
    settings: Settings,
    brokers: BrokersFile,
    registry: Registry,
    redactor: Redactor,
    clock: Callable[[], datetime] = utcnow,
) -> web.Application:
    """The application; `clock` is the service's time (tests move it)."""
    # Bodies are taken as sent: signatures cover the bytes on the wire, and a body that
    # fails to decompress would otherwise break the connection inside aiohttp. Every
    # body is read with `read_body` (bounded in time; broken framing fails it at once).
    fail_bodies_on_broken_framing()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_headers, close_after_unfinished_body],
        handler_args={"auto_decompress": False, "logger": ClientErrorsQuiet()},
    )

    async def service_context(app: web.Application) -> AsyncIterator[None]:
        service = await open_service(settings, brokers, registry, redactor, clock)
        app[SERVICE] = service
        _announce(settings, service)
        yield
        await service.close()

    async def stop_service(app: web.Application) -> None:
        # Before aiohttp waits for open requests: close the web chat's sockets,
        # which would otherwise hold the shutdown for its whole timeout.
        await app[SERVICE].stop()

    app.cleanup_ctx.append(service_context)
    app.on_shutdown.append(stop_service)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/webhooks/{broker_id}/{provider}", webhook_post)
    app.router.add_get("/webhooks/{broker_id}/{provider}", webhook_get)
    api.add_routes(app)
    app.router.add_get(f"{api.PREFIX}/openapi.json", openapi.serve)
    for entry in registry.entries.values():
        for route in entry.adapter.public_routes:
            path = f"/{entry.name}/{{broker_id}}{route.suffix}"
            app.router.add_route(route.method, path, _public_route(entry.name, route))
    return app


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _announce(settings: Settings, service: Service) -> None:
    base = f"http://{settings.host}:{settings.port}"
    log.info("Leadline starts on %s (health: %s/healthz)", base, base)
    for channel in service.channels:
        if channel.state == ChannelState.UP and channel.adapter and channel.adapter.public_routes:
            log.info(
                "broker %s: open %s/%s/%s",
                channel.broker.id,
                base,
                channel.provider,
                channel.broker.id,
            )


def _channel(request: web.Request, provider: str | None = None) -> tuple[Channel, Adapter]:
    """The running channel a request is for, or the 4xx/503 that explains why not."""
    service = request.app[SERVICE]
    broker_id = request.match_info["broker_id"]
    provider = provider or request.match_info["provider"]
    channel = service.channels.get(broker_id, provider)
    if channel is None:
        if broker_id in service.brokers.invalid:
            raise web.HTTPNotFound(text=f"broker {broker_id!r} is not running: configuration error")
        raise web.HTTPNotFound(text=f"no provider {provider!r} for broker {broker_id!r}")
    if channel.state == ChannelState.DISABLED or channel.adapter is None:
        raise web.HTTPNotFound(text=f"provider {provider!r} is disabled for broker {broker_id!r}")
    if channel.state != ChannelState.UP:
        raise web.HTTPServiceUnavailable(text=f"provider {provider!r} is down; retry later")
    return channel, channel.adapter


def _http_errors_as_json(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, exc.text or exc.reason)

    return wrapped


def _reply(reply: HttpReply) -> web.Response:
    return web.Response(status=reply.status, text=reply.body, content_type=reply.content_type)


@_http_errors_as_json
async def webhook_post(request: web.Request) -> web.StreamResponse:
    channel, adapter = _channel(request)
    if not adapter.capabilities.webhooks:
        return error(404, f"provider {channel.provider!r} does not take webhooks")
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        return error(415, "compressed request bodies are not accepted")
    # 413 past client_max_size, 408 past the body timeout, 400 on broken framing.
    body = await read_body(request, request.app[SERVICE].settings.body_timeout_seconds)
    try:
        adapter.verify(request.headers, body)
    except RequestRejected as rejected:
        return error(rejected.status, rejected.reason)
    except Exception:
        # Fail closed: a signature that cannot even be checked is a wrong one.
        log.exception("broker %s: %s could not check a signature", *channel.key)
        return error(403, "signature could not be verified")
    try:
        events = checked_events(adapter.parse(request.headers, body))
    except RequestRejected as rejected:
        return error(rejected.status, rejected.reason)
    except Exception:
        log.exception("broker %s: %s could not parse a delivery", *channel.key)
        return error(400, "payload could not be parsed")
    service = request.app[SERVICE]
    routes = route_events(service.channels, channel, request.headers, body, events)
    if routes.unowned:
        accounts = ", ".join(sorted(routes.unowned))
        log.error(
            "broker %s: %s delivery for account(s) %s, which no broker here has; "
            "those events are not stored (check the provider ids in brokers.toml)",
            channel.broker.id, channel.provider, accounts,
        )  # fmt: skip
        if not any(routes.events.values()):
            return error(403, f"account {accounts} is not this broker's {channel.provider}")
    try:
        for (broker_id, provider), routed in routes.events.items():
            await service.pipeline.ingest(broker_id, provider, routed)
    except RequestRejected as rejected:
        return error(rejected.status, rejected.reason)
    except PipelineStopped:
        return error(503, "shutting down; retry later")
    except Exception:
        log.exception("broker %s: %s delivery not stored", *channel.key)
        return error(503, "not stored; retry later")
    return _stored_reply(channel.key, adapter, events)


def _stored_reply(
    key: tuple[str, str], adapter: Adapter, events: Sequence[InboundEvent]
) -> web.StreamResponse:
    """The adapter's answer to a stored delivery; a plain 200 if it cannot make one,
    since what was stored must not be delivered again."""
    try:
        return _reply(adapter.webhook_reply(events))
    except Exception:
        log.exception("broker %s: %s could not answer a stored delivery", *key)
        return web.Response(text="ok")


@_http_errors_as_json
async def webhook_get(request: web.Request) -> web.StreamResponse:
    _, adapter = _channel(request)
    try:
        return _reply(adapter.handshake(request.query))
    except RequestRejected as rejected:
        return error(rejected.status, rejected.reason)


def _public_route(provider: str, route: PublicRoute) -> Handler:
    @_http_errors_as_json
    async def handler(request: web.Request) -> web.StreamResponse:
        channel, adapter = _channel(request, provider)
        inbox = request.app[SERVICE].inbox(*channel.key)
        serve = getattr(adapter, route.handler_name)
        return await serve(request, inbox)

    return handler


async def index(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    links = [
        f"/{c.provider}/{c.broker.id}"
        for c in service.channels
        if c.state == ChannelState.UP and c.adapter is not None and c.adapter.public_routes
    ]
    return web.json_response({"service": "leadline", "pages": links, "health": "/healthz"})


async def healthz(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    database = "ok"
    try:
        async with service.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        database = f"unreachable: {exc.__class__.__name__}"
    counts = await _delivery_counts(service) if database == "ok" else {}
    brokers: dict[str, dict[str, object]] = {}
    for channel in service.channels:
        broker = brokers.setdefault(
            channel.broker.id, {"name": channel.broker.name, "providers": {}}
        )
        state: dict[str, object] = {"state": channel.state.value}
        if channel.reason:
            state["reason"] = service.redactor.redact(channel.reason)
        if channel.polling is not None:
            state["polling"] = channel.polling.value
        state["delivery"] = counts.get(channel.key, DeliveryCounts()).as_json()
        broker["providers"][channel.provider] = state  # type: ignore[index]
    for broker_id in sorted(service.brokers.invalid):
        brokers[broker_id] = {"state": "invalid", "reason": "configuration error (leadline check)"}
    healthy = database == "ok"
    body = {"status": "ok" if healthy else "degraded", "database": database, "brokers": brokers}
    return web.json_response(body, status=200 if healthy else 503)


async def _delivery_counts(service: Service) -> dict[tuple[str, str], DeliveryCounts]:
    async with service.sessions() as session:
        return await delivery_counts(session, utcnow())
