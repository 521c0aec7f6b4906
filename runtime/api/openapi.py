"""The OpenAPI 3.1 document of `/api/v1`, made from the models the handlers use.

Served at `/api/v1/openapi.json` without a key. Schemas come from the pydantic models
(`models.py`, the query models of `routes.py`), so the document cannot drift from
what the handlers accept and answer; the paths are listed here once, beside them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from leadline.runtime.api.models import (
    BIGINT,
    ErrorOut,
    LeadOut,
    LeadPage,
    LeadPatch,
    MergeIn,
    MessageOut,
    MessagePage,
    Queued,
    SendIn,
)
from leadline.runtime.api.routes import KEY_HEADER, PREFIX, LeadQuery, MessageQuery

REF = "#/components/schemas/{model}"
ERRORS = {
    "401": "no API key, or not a valid one",
    "404": "no such lead or message (another broker's is none of yours)",
    "422": "the request is not valid: `fields` names what is wrong",
    "503": "the database failed; retry later",
}


@cache
def document() -> dict[str, Any]:
    inputs: list[type[BaseModel]] = [SendIn, LeadPatch, MergeIn]
    outputs: list[type[BaseModel]] = [LeadOut, LeadPage, MessageOut, MessagePage, Queued, ErrorOut]
    _, schemas = models_json_schema(
        [(m, "validation") for m in inputs] + [(m, "serialization") for m in outputs],
        ref_template=REF,
    )
    lead = f"{PREFIX}/leads/{{lead_id}}"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Leadline CRM API",
            "version": "1.0.0",
            "description": "A broker's leads and messages on every provider. Every route "
            "answers for the broker whose API key comes with the request.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            f"{PREFIX}/leads": {
                "get": _operation("listLeads", "The broker's leads, by id", LeadPage, LeadQuery)
            },
            lead: {
                "get": _operation("getLead", "One lead with its channels", LeadOut, path="lead"),
                "patch": _operation(
                    "updateLead", "Change a lead's name, phone or tags", LeadOut,
                    path="lead", body=LeadPatch,
                ),
            },
            f"{lead}/merge": {
                "post": _operation(
                    "mergeLeads", "Merge another lead of the broker into this one", LeadOut,
                    path="lead", body=MergeIn,
                )
            },
            f"{lead}/messages": {
                "get": _operation(
                    "listMessages", "A lead's messages on every provider, in time order",
                    MessagePage, MessageQuery, path="lead",
                ),
                "post": _operation(
                    "sendMessage", "Queue a message to the lead", Queued,
                    path="lead", body=SendIn, status="202", idempotent=True,
                ),
            },
            f"{PREFIX}/messages/{{message_id}}": {
                "get": _operation("getMessage", "One message and its status", MessageOut,
                                  path="message"),
            },
        },
    }  # fmt: skip


def _operation(
    operation_id: str,
    summary: str,
    answer: type[BaseModel],
    query: type[BaseModel] | None = None,
    *,
    path: str | None = None,
    body: type[BaseModel] | None = None,
    status: str = "200",
    idempotent: bool = False,
) -> dict[str, Any]:
    parameters = []
    if path is not None:
        parameters.append(_path_parameter(f"{path}_id"))
    if query is not None:
        parameters.extend(_query_parameters(query))
    if idempotent:
        parameters.append(
            {
                "name": KEY_HEADER,
                "in": "header",
                "required": False,
                "description": "a repeat with the same key and body answers the first message",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                           "pattern": "^[\\x20-\\x7e]+$"},
            }
        )  # fmt: skip
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "parameters": parameters,
        "responses": {
            status: {"description": "done", "content": _json(answer)},
            **{
                code: {"description": why, "content": _json(ErrorOut)}
                for code, why in ERRORS.items()
            },
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    return operation


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}


def _path_parameter(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": BIGINT},
        "example": 1,
    }


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _plain(prop, defs)}
        for name, prop in schema["properties"].items()
    ]


def _plain(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: a query string is never null, and the model's own
    definitions (an enum) are written in place."""
    options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
    chosen = dict(options[0]) if len(options) == 1 else {"anyOf": options}
    ref = chosen.pop("$ref", None)
    if ref is not None:
        chosen = {**defs[ref.rsplit("/", 1)[-1]], **chosen}
    if prop.get("default") is not None:
        chosen["default"] = prop["default"]
    return chosen


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document())
