"""The handlers of `/api/v1`: a broker's CRM reads leads and messages, sends, edits, merges.

Each handler answers for the broker whose key came with the request (`auth`); an id
of another broker's lead or message is a 404, as an unknown one is. Bad input is a
422 naming the field; a database failure is a 503, so a client retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import sqlalchemy as sa
from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from leadline.adapters.base import Attachment, TemplateRef
from leadline.config.brokers import BrokerConfig
from leadline.config.vocabulary import Direction
from leadline.runtime.api import cursors
from leadline.runtime.api.auth import broker_of
from leadline.runtime.api.models import (
    BIGINT,
    ChannelOut,
    LeadOut,
    LeadPage,
    LeadPatch,
    MergeIn,
    MessageOut,
    MessagePage,
    Queued,
    SendIn,
    Text,
)
from leadline.runtime.bodies import read_body
from leadline.runtime.sending import CannotQueue, Outgoing, queue_message
from leadline.runtime.service import SERVICE, Service
from leadline.storage import crm
from leadline.storage.models import ChatMessage, Lead

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
KEY_HEADER = "Idempotency-Key"
Handler = Callable[[web.Request, Service, BrokerConfig], Awaitable[web.Response]]
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=50, ge=1, le=200)
    cursor: Annotated[str, Field(max_length=1000)] | None = None


class LeadQuery(_Query):
    provider: Annotated[Text, Field(max_length=32)] | None = None
    tag: Annotated[Text, Field(max_length=64)] | None = None
    q: Annotated[Text, Field(max_length=255)] | None = None
    updated_since: AwareDatetime | None = None


class MessageQuery(_Query):
    provider: Annotated[Text, Field(max_length=32)] | None = None
    direction: Direction | None = None


class Unprocessable(Exception):
    """A 422: bad input, with the fields at fault."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name}: {reason}" for name, reason in fields))
        self.fields = fields


def add_routes(app: web.Application) -> None:
    lead = f"{PREFIX}/leads/{{lead_id:[0-9]{{1,25}}}}"
    app.router.add_get(f"{PREFIX}/leads", _api(list_leads))
    app.router.add_get(lead, _api(get_lead))
    app.router.add_patch(lead, _api(patch_lead))
    app.router.add_post(f"{lead}/merge", _api(merge_lead))
    app.router.add_get(f"{lead}/messages", _api(list_messages))
    app.router.add_post(f"{lead}/messages", _api(send_message))
    app.router.add_get(f"{PREFIX}/messages/{{message_id:[0-9]{{1,25}}}}", _api(get_message))


def _api(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            service = request.app[SERVICE]
            broker = broker_of(request, service.brokers.brokers)
            return await handler(request, service, broker)
        except Unprocessable as exc:
            fields = [{"field": name, "reason": reason} for name, reason in exc.fields]
            return _error(422, "the request is not valid", fields)
        except web.HTTPException as exc:
            return _error(exc.status, exc.text or exc.reason, headers=exc.headers)
        except sa.exc.DBAPIError:
            log.exception("API: database failure")
            return _error(503, "the database failed; retry later")

    return wrapped


def _error(
    status: int,
    reason: str,
    fields: list[dict[str, str]] | None = None,
    headers: Any = None,
) -> web.Response:
    body: dict[str, Any] = {"error": reason}
    if fields is not None:
        body["fields"] = fields
    extra = {k: v for k, v in (headers or {}).items() if k == "WWW-Authenticate"}
    return web.json_response(body, status=status, headers=extra or None)


def _ok(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


# --- reading input -------------------------------------------------------------------------


def _validated(model: type[M], data: Any, where: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(
            [(where + ".".join(str(p) for p in e["loc"]) or "body", e["msg"]) for e in exc.errors()]
        ) from None


def _query(request: web.Request, model: type[M]) -> M:
    return _validated(model, {k: request.query.getone(k) for k in request.query})


async def _body(request: web.Request, model: type[M]) -> M:
    raw = await read_body(request, request.app[SERVICE].settings.body_timeout_seconds)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise Unprocessable([("body", "is not a JSON document")]) from None
    return _validated(model, data)


def _id(request: web.Request, name: str) -> int:
    value = int(request.match_info[name])
    if not 1 <= value <= BIGINT:
        raise web.HTTPNotFound(text=f"no such {name.removesuffix('_id')}")
    return value


def _position(read: Callable[[str | None], T], cursor: str | None) -> T:
    try:
        return read(cursor)
    except cursors.BadCursor as exc:
        raise Unprocessable([("cursor", str(exc))]) from None


# --- leads ---------------------------------------------------------------------------------


async def list_leads(request: web.Request, service: Service, broker: BrokerConfig) -> web.Response:
    query = _query(request, LeadQuery)
    after = _position(cursors.lead_position, query.cursor)
    where = crm.LeadFilter(query.provider, query.tag, query.q, query.updated_since)
    async with service.sessions() as session:
        leads = await crm.list_leads(session, broker.id, where, after, query.limit + 1)
    page = leads[: query.limit]
    more = len(leads) > query.limit
    next_cursor = cursors.encode({"id": page[-1].id}) if more and page else None
    return _ok(LeadPage(items=[_lead(lead) for lead in page], next_cursor=next_cursor))


async def get_lead(request: web.Request, service: Service, broker: BrokerConfig) -> web.Response:
    async with service.sessions() as session:
        view = await crm.get_lead(session, broker.id, _id(request, "lead_id"))
    return _ok(_lead_view(view))


async def patch_lead(request: web.Request, service: Service, broker: BrokerConfig) -> web.Response:
    lead_id = _id(request, "lead_id")
    changes = (await _body(request, LeadPatch)).model_dump(exclude_unset=True)
    if "tags" in changes and changes["tags"] is None:
        changes["tags"] = []  # null clears the tags, as it clears the name or the phone
    async with service.sessions() as session, session.begin():
        view = await crm.update_lead(session, broker.id, lead_id, changes)
        answer = _lead_view(view)
    return _ok(answer)


async def merge_lead(request: web.Request, service: Service, broker: BrokerConfig) -> web.Response:
    lead_id = _id(request, "lead_id")
    merge = await _body(request, MergeIn)
    if merge.merge_lead_id == lead_id:
        raise Unprocessable([("merge_lead_id", "a lead cannot be merged into itself")])
    async with service.sessions() as session, session.begin():
        view = await crm.merge_leads(session, broker.id, lead_id, merge.merge_lead_id)
        answer = _lead_view(view)
    log.info("broker %s: lead %s merged into lead %s", broker.id, merge.merge_lead_id, lead_id)
    return _ok(answer)


def _lead(lead: Lead, channels: list[ChannelOut] | None = None) -> LeadOut:
    assert lead.id is not None
    return LeadOut(
        id=lead.id,
        name=lead.name,
        phone=lead.phone,
        tags=lead.tags,
        metadata=lead.lead_metadata,
        created_at=lead.created_at,
        updated_at=lead.updated_at,
        channels=channels,
    )


def _lead_view(view: crm.LeadView | None) -> LeadOut:
    if view is None:
        raise web.HTTPNotFound(text="no such lead")
    channels = [
        ChannelOut(
            provider=c.provider,
            channel_user_id=c.channel_user_id,
            channel_username=c.channel_username,
        )
        for c in view.channels
    ]
    return _lead(view.lead, channels)


# --- messages ------------------------------------------------------------------------------


async def list_messages(
    request: web.Request, service: Service, broker: BrokerConfig
) -> web.Response:
    lead_id = _id(request, "lead_id")
    query = _query(request, MessageQuery)
    after = _position(cursors.message_position, query.cursor)
    where = crm.MessageFilter(query.provider, query.direction)
    async with service.sessions() as session:
        if await crm.get_lead(session, broker.id, lead_id) is None:
            raise web.HTTPNotFound(text="no such lead")
        found = await crm.lead_messages(session, broker.id, lead_id, where, after, query.limit + 1)
    page = found[: query.limit]
    next_cursor = None
    if len(found) > query.limit and page:
        last = page[-1]
        next_cursor = cursors.encode({"at": last.created_at.isoformat(), "id": last.id})
    return _ok(MessagePage(items=[_message(m) for m in page], next_cursor=next_cursor))


async def get_message(request: web.Request, service: Service, broker: BrokerConfig) -> web.Response:
    async with service.sessions() as session:
        message = await crm.get_message(session, broker.id, _id(request, "message_id"))
    if message is None:
        raise web.HTTPNotFound(text="no such message")
    return _ok(_message(message))


async def send_message(
    request: web.Request, service: Service, broker: BrokerConfig
) -> web.Response:
    """Queue a message for the lead (202); with an Idempotency-Key, a repeat of the same
    request answers the first one's message instead of queueing another."""
    lead_id = _id(request, "lead_id")
    key = _idempotency_key(request)
    sending = await _body(request, SendIn)
    digest = hashlib.sha256(f"{lead_id}:{sending.model_dump_json()}".encode()).hexdigest()
    async with service.sessions() as session, session.begin():
        if key is not None and (earlier := await crm.remembered(session, broker.id, key)):
            if earlier.request_hash != digest:
                raise Unprocessable([(KEY_HEADER, "was used before with another request")])
            message = await crm.get_message(session, broker.id, earlier.message_id)
            assert message is not None and message.id is not None
            return _ok(Queued(id=message.id, status=message.status.value), status=202)
        message_id = await _queue(session, service, broker, lead_id, sending)
        if key is not None and not await crm.remember(session, broker.id, key, digest, message_id):
            raise web.HTTPConflict(text=f"{KEY_HEADER} is in use by a request under way")
    service.dispatcher.wake()
    return _ok(Queued(id=message_id, status="pending"), status=202)


async def _queue(
    session: Any, service: Service, broker: BrokerConfig, lead_id: int, sending: SendIn
) -> int:
    template = sending.template
    outgoing = Outgoing(
        broker.id,
        lead_id,
        text=sending.text,
        attachments=[
            Attachment(
                kind=a.kind,
                url=str(a.url) if a.url else None,
                ref=a.ref,
                file_name=a.file_name,
                caption=a.caption,
            )
            for a in sending.attachments
        ],
        provider=sending.provider,
        reply_to=sending.reply_to,
        template=TemplateRef(template.name, template.language, tuple(template.parameters))
        if template
        else None,
        human_agent=sending.human_agent,
        metadata={"via": "api"},
    )
    try:
        return await queue_message(session, service.brokers.brokers, outgoing, service.clock())
    except CannotQueue as exc:
        if exc.about == "lead":
            raise web.HTTPNotFound(text="no such lead") from None
        field = "provider" if exc.about == "provider" else "body"
        raise Unprocessable([(field, str(exc))]) from None


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(KEY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise Unprocessable([(KEY_HEADER, "must be 1-255 printable ASCII characters")])
    return key


def _message(message: ChatMessage) -> MessageOut:
    assert message.id is not None
    return MessageOut(
        id=message.id,
        lead_id=message.lead_id,
        provider=message.provider,
        direction=message.direction.value,
        status=message.status.value,
        text=message.message_text,
        attachments=message.attachments,
        channel_user_id=message.channel_user_id,
        channel_message_id=message.channel_message_id,
        ai_response_used=message.ai_response_used,
        error=message.error,
        send_after=message.send_after,
        created_at=message.created_at,
        updated_at=message.updated_at,
    )
