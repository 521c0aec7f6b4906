"""Instagram Direct, on the Messenger Platform (PROVIDERS.md §5), in either of Meta's forms:

- Page-linked (Messenger API for Instagram): `page_id` and `page_access_token`; sends
  go to graph.facebook.com/{page_id}/messages. The Instagram account the webhooks
  name is `ig_account_id`, or found through the Page at start.
- Instagram Login: `ig_account_id` and `access_token`; sends go to
  graph.instagram.com/{ig_account_id}/messages.

Text is limited to 1,000 bytes of UTF-8 per message; longer text is split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from leadline.adapters.base import AdapterError, Profile
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
INSTAGRAM_GRAPH = "https://graph.instagram.com"
FORMS = "give page_id and page_access_token (Page-linked) or ig_account_id and access_token"


class InstagramConfig(MetaAppConfig):
    page_id: str | None = Field(default=None, pattern=r"^[0-9]{1,32}$")
    page_access_token: SecretStr | None = Field(default=None, validate_default=True)
    ig_account_id: str | None = Field(default=None, pattern=r"^[0-9]{1,32}$")
    access_token: SecretStr | None = Field(default=None, validate_default=True)

    @property
    def page_linked(self) -> bool:
        return self.page_id is not None

    @field_validator("page_access_token")
    @classmethod
    def _page_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if info.data.get("page_id") is None:
            if value is not None:
                raise ValueError("goes with page_id (the Page-linked form)")
            return None
        if value is None:
            raise ValueError("required with page_id")
        return access_token_shape(value)

    @field_validator("access_token")
    @classmethod
    def _login_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        page_linked = info.data.get("page_id") is not None
        if value is None:
            if not page_linked:
                raise ValueError(f"required: {FORMS} (Instagram Login)")
            return None
        if page_linked:
            raise ValueError("give either the Page-linked form or Instagram Login, not both")
        if info.data.get("ig_account_id") is None:
            raise ValueError("goes with ig_account_id (the Instagram Login form)")
        return access_token_shape(value)


class InstagramAdapter(GraphMessagingAdapter):
    name = "instagram"
    config_model = InstagramConfig
    capabilities = messaging_capabilities(
        100
    )  # messages/s: the safe one of Meta's two figures (§5)
    object_kind = "instagram"
    # Instagram leaves messaging_type out inside the window, echoes no metadata, and
    # keeps no media by URL for reuse.
    rules = Rules(max_bytes=1000, in_window_type=None, tag_ours=False, reusable=False)
    subscribed_fields = ("messages", "messaging_seen", "message_reactions", "messaging_postbacks")
    profile_fields = "name,username"  # Instagram's User Profile API; either may be null
    settings: InstagramConfig

    def endpoint(self) -> Endpoint:
        settings = self.settings
        if settings.page_id is not None and settings.page_access_token is not None:
            base = str(settings.api_base) if settings.api_base else GRAPH
            token = settings.page_access_token.get_secret_value()
            return Endpoint(base, token, node=settings.page_id, subscriptions=settings.page_id)
        assert settings.ig_account_id is not None and settings.access_token is not None
        base = str(settings.api_base) if settings.api_base else INSTAGRAM_GRAPH
        account = settings.ig_account_id
        token = settings.access_token.get_secret_value()
        return Endpoint(base, token, node=account, subscriptions=account)

    async def identify(self, client: GraphClient) -> str:
        settings = self.settings
        if settings.page_id is None:
            assert settings.ig_account_id is not None
            await client.get(settings.ig_account_id, {"fields": "id,username"})
            return settings.ig_account_id
        page = await client.get(settings.page_id, {"fields": "id,name,instagram_business_account"})
        linked = page.get("instagram_business_account")
        found = str(linked["id"]) if isinstance(linked, dict) and linked.get("id") else None
        if settings.ig_account_id is not None:
            return settings.ig_account_id
        if found is None:
            raise AdapterError(f"Page {settings.page_id} has no linked Instagram account")
        return found

    def fields_to_subscribe(self) -> tuple[str, ...]:
        # A Page subscribes to Page fields; the Instagram ones are set on the app.
        return ("messages",) if self.settings.page_linked else tuple(self.subscribed_fields)

    async def our_app_id(self, client: GraphClient) -> str | None:
        # An Instagram Login token sees only its own app's subscription.
        return await app_id_of(client) if self.settings.page_linked else None

    def read_profile(self, answer: Mapping[str, Any]) -> Profile:
        name, username = answer.get("name"), answer.get("username")
        return Profile(
            name=name.strip() or None if isinstance(name, str) else None,
            username=username.strip() or None if isinstance(username, str) else None,
        )
