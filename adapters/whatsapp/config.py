"""The `[brokers.X.providers.whatsapp]` table."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from leadline.config.providers import ProviderConfig

TEXT_VARIABLE = "{text}"  # in a window template's parameters: the message that could not go
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")  # Meta's codes: "es", "en_US", "pt_BR"
_TOKEN = re.compile(r"[A-Za-z0-9_\-.|]{8,4096}")


class WindowTemplate(BaseModel):
    """The approved template a free-form message becomes once the 24-hour window closed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$")
    language: str
    # The template's body variables, in order; "{text}" stands for the message's text.
    parameters: tuple[str, ...] = ()

    @field_validator("language")
    @classmethod
    def _meta_language(cls, value: str) -> str:
        from pywa.types.templates import TemplateLanguage

        if not _LANGUAGE.fullmatch(value):
            raise ValueError('a template language code like "es" or "en_US"')
        # Looked up by value: TemplateLanguage("xx") raises TypeError in pywa 4.5.
        if value not in {language.value for language in TemplateLanguage}:
            raise ValueError("not a language WhatsApp templates support")
        return value


class WhatsAppConfig(ProviderConfig):
    phone_number_id: str = Field(pattern=r"^[0-9]{1,32}$")
    access_token: SecretStr
    # Read before app_secret: it decides whether app_secret may be left out.
    allow_unsigned: bool = False
    app_secret: SecretStr | None = Field(default=None, validate_default=True)
    verify_token: SecretStr
    api_version: str = "24.0"
    window_template: WindowTemplate | None = None

    @field_validator("access_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        if not _TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("must be the access token Meta gave (letters and digits)")
        return value

    @field_validator("app_secret")
    @classmethod
    def _signed_unless_allowed(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            value = None
        if value is None and not info.data.get("allow_unsigned"):
            raise ValueError(
                "required: webhooks are checked with the app secret "
                "(allow_unsigned = true skips the check, for local tests only)"
            )
        return value

    @field_validator("verify_token")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @field_validator("api_version")
    @classmethod
    def _graph_version(cls, value: str) -> str:
        version = value.removeprefix("v")
        if not re.fullmatch(r"[0-9]{1,3}\.0", version):
            raise ValueError('a Graph API version like "24.0"')
        return version
