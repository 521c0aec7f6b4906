"""Facebook Messenger: a Page's conversations, on the Messenger Platform (PROVIDERS.md §4).

Everything but the settings and the limits is shared with Instagram in
`adapters/graph_messaging`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, SecretStr, field_validator

from leadline.adapters.base import Profile
from leadline.adapters.graph_messaging import (
    Endpoint,
    GraphMessagingAdapter,
    app_id_of,
    messaging_capabilities,
)
from leadline.adapters.graph_messaging.client import GraphClient
from leadline.adapters.graph_messaging.outbound import Rules
from leadline.adapters.meta import MetaAppConfig, access_token_shape

GRAPH = "https://graph.facebook.com"


class MessengerConfig(MetaAppConfig):
    page_id: str = Field(pattern=r"^[0-9]{1,32}$")
    page_access_token: SecretStr

    @field_validator("page_access_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        return access_token_shape(value)


class MessengerAdapter(GraphMessagingAdapter):
    name = "messenger"
    config_model = MessengerConfig
    capabilities = messaging_capabilities(300)  # messages/s: per Page
    object_kind = "page"
    rules = Rules(max_chars=2000)
    subscribed_fields = (
        "messages",
        "messaging_postbacks",
        "message_echoes",
        "message_deliveries",
        "message_reads",
        "message_reactions",
    )
    # id, name, first_name, last_name and profile_pic are what Meta grants (User Profile API)
    profile_fields = "first_name,last_name"
    settings: MessengerConfig

    def endpoint(self) -> Endpoint:
        base = str(self.settings.api_base) if self.settings.api_base else GRAPH
        token = self.settings.page_access_token.get_secret_value()
        page = self.settings.page_id
        return Endpoint(base, token, node=page, subscriptions=page)

    async def identify(self, client: GraphClient) -> str:
        await client.get(self.settings.page_id, {"fields": "id,name"})
        return self.settings.page_id

    async def our_app_id(self, client: GraphClient) -> str | None:
        return await app_id_of(client)

    def read_profile(self, answer: Mapping[str, Any]) -> Profile:
        parts = [answer.get("first_name"), answer.get("last_name")]
        name = " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
        return Profile(name=name or None)
