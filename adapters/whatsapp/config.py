"""The `[brokers.X.providers.whatsapp]` table."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from leadline.adapters.meta import MetaAppConfig, access_token_shape

TEXT_VARIABLE = "{text}"  # in a window template's parameters: the message that could not go
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")  # Meta's codes: "es", "en_US", "pt_BR"


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


class WhatsAppConfig(MetaAppConfig):
    phone_number_id: str = Field(pattern=r"^[0-9]{1,32}$")
    access_token: SecretStr
    window_template: WindowTemplate | None = None

    @field_validator("access_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        return access_token_shape(value)
