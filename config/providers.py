"""The base of every provider's settings table in brokers.toml.

Adapters subclass `ProviderConfig` with their own keys; the loader validates
each `[brokers.X.providers.NAME]` table against the model its adapter declares.
Secret values are `SecretStr`: they print as `**********` and never reach a log.
"""

from __future__ import annotations

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, SecretStr


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Another API server: a local Bot API server, a proxy, a test fake.
    api_base: AnyHttpUrl | None = None


def not_empty(value: SecretStr) -> SecretStr:
    """A field validator for a token or a signing secret: `${VAR}` set to nothing is an
    error, not a blank secret (a blank signing key would let anyone sign)."""
    if not value.get_secret_value():
        raise ValueError("must not be empty")
    return value
