"""Who is asking: a broker's API key, sent as `Authorization: Bearer <key>`.

Every configured key of every broker is compared, in constant time, whatever matches
first: how long an answer takes says nothing about which keys exist. A broker without
keys has the API off.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from aiohttp import web

from leadline.config.brokers import BrokerConfig


class Unauthorized(web.HTTPUnauthorized):
    def __init__(self, reason: str) -> None:
        super().__init__(text=reason, headers={"WWW-Authenticate": 'Bearer realm="leadline"'})


def broker_of(request: web.Request, brokers: Mapping[str, BrokerConfig]) -> BrokerConfig:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    sent = given.strip().encode("utf-8", "surrogateescape")
    found: BrokerConfig | None = None
    for broker in brokers.values():
        for key in broker.api_keys:
            if hmac.compare_digest(sent, key.get_secret_value().encode()):
                found = broker
    if found is None:
        raise Unauthorized("the API key is not valid")
    return found
