"""The brokers.toml schema: one validated, secret-resolved `BrokerConfig` per broker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from leadline.config.calendar import BusinessCalendar, BusinessHoursConfig, check_iana_zone
from leadline.config.providers import ProviderConfig
from leadline.config.templates import check_template

BROKER_ID_PATTERN = r"^[a-z0-9-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Features(_Strict):
    auto_reply: bool = True
    typing_indicator: bool = False
    read_receipts: bool = False
    # Name leads from the provider's profile where webhooks carry no name (Messenger,
    # Instagram): one profile read per new lead.
    profile_lookup: bool = True


class Templates(_Strict):
    welcome: str | None = None  # a new lead's first message
    closed_reply: str | None = None  # a message while closed: once per closed period
    open_reply: str | None = None  # at the next opening, to whoever wrote while closed

    @field_validator("*")
    @classmethod
    def _known_variables(cls, value: str | None) -> str | None:
        if value is not None:
            check_template(value)
        return value


class KeywordRule(_Strict):
    """`{ match = ["precio", "price"], reply = "..." }`: answered at any hour."""

    match: tuple[str, ...] = Field(min_length=1)
    reply: str = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not word.strip() for word in value):
            raise ValueError("every keyword must hold a letter or digit")
        return value

    @field_validator("reply")
    @classmethod
    def _template(cls, value: str) -> str:
        check_template(value)
        return value


RESPONDER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"


class EventsConfig(_Strict):
    """`[brokers.X.events]`: where the broker's CRM takes events, and the signing secret."""

    url: AnyHttpUrl
    secret: SecretStr = Field(min_length=16)


def _api_key(value: SecretStr) -> SecretStr:
    # Keys come from the environment: a short one is guessable. Never quoted back.
    if len(value.get_secret_value()) < 24:
        raise ValueError("an API key must be at least 24 characters")
    return value


ApiKey = Annotated[SecretStr, AfterValidator(_api_key)]


class RateLimitConfig(_Strict):
    messages_per_second: float | None = Field(default=None, gt=0)
    messages_per_minute: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_limit(self) -> RateLimitConfig:
        if self.messages_per_second is None and self.messages_per_minute is None:
            raise ValueError("give messages_per_second or messages_per_minute")
        return self


class BrokerTable(_Strict):
    """A broker's table before its providers are validated by their adapters."""

    name: str = Field(min_length=1)
    timezone: str = "UTC"
    default_provider: str | None = None
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rate_limits: dict[str, RateLimitConfig] = Field(default_factory=dict)
    features: Features = Features()
    templates: Templates = Templates()
    business_hours: BusinessHoursConfig | None = None
    keywords: tuple[KeywordRule, ...] = ()
    # A Python callable ("package.module:function") that may answer a message itself.
    responder: str | None = Field(default=None, pattern=RESPONDER_PATTERN)
    responder_timeout: float = Field(default=10.0, gt=0, le=120)
    api_keys: tuple[ApiKey, ...] = ()  # the CRM's keys for /api/v1; none: the API is off
    events: EventsConfig | None = None

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, value: str) -> str:
        return check_iana_zone(value)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One error in brokers.toml, naming the broker, provider and key it concerns."""

    message: str
    broker: str | None = None
    provider: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = []
        if self.broker is not None:
            where.append(f"broker {self.broker!r}")
        if self.provider is not None:
            where.append(f"provider {self.provider!r}")
        if self.key:
            where.append(f"key {self.key!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    id: str
    name: str
    timezone: str
    default_provider: str | None
    providers: Mapping[str, ProviderConfig]
    # Providers that are configured but do not run, with the reason.
    disabled: Mapping[str, str] = field(default_factory=dict)
    rate_limits: Mapping[str, RateLimitConfig] = field(default_factory=dict)
    features: Features = field(default_factory=Features)
    templates: Templates = field(default_factory=Templates)
    business_hours: BusinessHoursConfig | None = None
    keywords: tuple[KeywordRule, ...] = ()
    responder: str | None = None
    responder_timeout: float = 10.0
    api_keys: tuple[SecretStr, ...] = ()
    events: EventsConfig | None = None
    # When the broker is open: always, without a business_hours table.
    calendar: BusinessCalendar = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "calendar", BusinessCalendar(self.business_hours, self.zone))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class BrokersFile:
    """The outcome of loading brokers.toml: the valid brokers and every issue found."""

    brokers: Mapping[str, BrokerConfig]
    issues: tuple[ConfigIssue, ...]
    # Brokers that could not be loaded at all, by id.
    invalid: frozenset[str]
    # Every value that came from the environment: logs must never show them.
    secrets: frozenset[str] = field(repr=False)

    @property
    def ok(self) -> bool:
        return not self.issues
