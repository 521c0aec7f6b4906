"""Read brokers.toml: parse, resolve `${ENV}` secrets, validate every table.

Errors never stop the other brokers: a broker whose own table is wrong is left
out, a provider whose table is wrong is disabled with the reason, and every
issue names the broker, provider and key. Values are never quoted in an issue,
since they may be secrets.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from leadline.config.brokers import (
    BROKER_ID_PATTERN,
    BrokerConfig,
    BrokersFile,
    BrokerTable,
    ConfigIssue,
)
from leadline.config.providers import ProviderConfig

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Resolver:
    """Substitutes `${NAME}` in every string, recording what was missing and what was used."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.missing: list[tuple[str, str]] = []  # (key path, variable)
        self.secrets: set[str] = set()

    def resolve(self, value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str):
            return _ENV_REF.sub(lambda m: self._lookup(m.group(1), path), value)
        return value

    def _lookup(self, name: str, path: str) -> str:
        if name not in self.env:
            self.missing.append((path, name))
            return ""
        secret = self.env[name]
        if secret:
            self.secrets.add(secret)
        return secret


def _issues_from(error: ValidationError, broker: str, provider: str | None) -> list[ConfigIssue]:
    issues = []
    for item in error.errors(include_input=False, include_url=False):
        key = ".".join(str(part) for part in item["loc"]) or None
        # pydantic prefixes our validators' own words with "Value error, ".
        message = item["msg"].removeprefix("Value error, ")
        issues.append(ConfigIssue(message, broker=broker, provider=provider, key=key))
    return issues


def load_brokers_file(
    path: Path, provider_models: Mapping[str, type[ProviderConfig]], env: Mapping[str, str]
) -> BrokersFile:
    """Load `path`; `provider_models` maps each known provider to its settings model."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _failed(f"brokers file {str(path)!r} not found")
    except (OSError, UnicodeDecodeError) as exc:
        return _failed(f"cannot read {str(path)!r}: {exc.__class__.__name__}")
    except tomllib.TOMLDecodeError as exc:
        return _failed(f"{path}: invalid TOML: {exc}")
    return load_brokers(raw, provider_models, env, config_dir=path.parent)


def _failed(message: str) -> BrokersFile:
    return BrokersFile({}, (ConfigIssue(message),), frozenset(), frozenset())


def load_brokers(
    raw: Mapping[str, Any],
    provider_models: Mapping[str, type[ProviderConfig]],
    env: Mapping[str, str],
    config_dir: Path | None = None,
) -> BrokersFile:
    """`config_dir`: where relative paths in the file (an `ical` calendar) start from."""
    issues: list[ConfigIssue] = [
        ConfigIssue("unknown top-level table; only [brokers.ID] tables belong here", key=key)
        for key in raw
        if key != "brokers"
    ]
    tables = raw.get("brokers", {})
    if not isinstance(tables, dict):
        return _failed("`brokers` must be a table of [brokers.ID] tables")
    brokers: dict[str, BrokerConfig] = {}
    invalid: set[str] = set()
    secrets: set[str] = set()
    for broker_id, table in tables.items():
        broker, broker_issues, used = _load_broker(
            broker_id, table, provider_models, env, config_dir
        )
        issues.extend(broker_issues)
        secrets |= used
        if broker is None:
            invalid.add(broker_id)
        else:
            brokers[broker_id] = broker
    return BrokersFile(brokers, tuple(issues), frozenset(invalid), frozenset(secrets))


def _load_broker(
    broker_id: str,
    table: Any,
    provider_models: Mapping[str, type[ProviderConfig]],
    env: Mapping[str, str],
    config_dir: Path | None = None,
) -> tuple[BrokerConfig | None, list[ConfigIssue], set[str]]:
    if not re.fullmatch(BROKER_ID_PATTERN, broker_id):
        return None, [ConfigIssue("broker ids use only a-z, 0-9 and '-'", broker=broker_id)], set()
    if not isinstance(table, dict):
        return None, [ConfigIssue("must be a table", broker=broker_id)], set()
    general = {k: v for k, v in table.items() if k != "providers"}
    resolver = _Resolver(env)
    resolved = resolver.resolve(general, "")
    issues = [
        ConfigIssue(f"environment variable {name} is not set", broker=broker_id, key=key)
        for key, name in resolver.missing
    ]
    if issues:  # validating around the gaps would only add confusing follow-on errors
        return None, issues, resolver.secrets
    providers_raw = table.get("providers", {})
    if not isinstance(providers_raw, dict):
        issue = ConfigIssue("must be a table", broker=broker_id, key="providers")
        return None, [issue], resolver.secrets
    try:
        parsed = BrokerTable.model_validate(
            {**resolved, "providers": providers_raw},
            context={"config_dir": config_dir} if config_dir is not None else None,
        )
    except ValidationError as exc:
        return None, _issues_from(exc, broker_id, None), resolver.secrets
    # Keys written in the file itself must be masked in logs too.
    resolver.secrets |= {key.get_secret_value() for key in parsed.api_keys}
    if parsed.events is not None:
        resolver.secrets.add(parsed.events.secret.get_secret_value())
    issues = _cross_checks(broker_id, parsed, provider_models)
    if issues:
        return None, issues, resolver.secrets

    providers: dict[str, ProviderConfig] = {}
    disabled: dict[str, str] = {}
    for name, provider_table in parsed.providers.items():
        config, reason, provider_issues = _load_provider(
            broker_id, name, provider_table, provider_models, resolver
        )
        issues.extend(provider_issues)
        if config is not None:
            providers[name] = config
        else:
            disabled[name] = reason
    broker = BrokerConfig(
        id=broker_id,
        name=parsed.name,
        timezone=parsed.timezone,
        default_provider=parsed.default_provider,
        providers=providers,
        disabled=disabled,
        rate_limits=parsed.rate_limits,
        features=parsed.features,
        templates=parsed.templates,
        business_hours=parsed.business_hours,
        keywords=parsed.keywords,
        responder=parsed.responder,
        responder_timeout=parsed.responder_timeout,
        api_keys=parsed.api_keys,
        events=parsed.events,
    )
    return broker, issues, resolver.secrets


def _load_provider(
    broker_id: str,
    name: str,
    table: dict[str, Any],
    provider_models: Mapping[str, type[ProviderConfig]],
    resolver: _Resolver,
) -> tuple[ProviderConfig | None, str, list[ConfigIssue]]:
    model = provider_models.get(name)
    if model is None:
        known = ", ".join(sorted(provider_models)) or "none"
        issue = ConfigIssue(f"unknown provider; known: {known}", broker=broker_id, provider=name)
        return None, "unknown provider", [issue]
    enabled, issues = _enabled(broker_id, name, table, resolver)
    if issues:
        return None, "configuration error at enabled", issues
    if not enabled:
        return None, "enabled = false", []
    before = len(resolver.missing)
    resolved = resolver.resolve(table, "")
    issues = [
        ConfigIssue(f"environment variable {var} is not set", broker_id, name, key)
        for key, var in resolver.missing[before:]
    ]
    if not issues:
        try:
            config = model.model_validate(resolved)
        except ValidationError as exc:
            issues = _issues_from(exc, broker_id, name)
        else:
            # Secrets written in the file itself must be masked in logs too.
            resolver.secrets |= _secret_values(config)
            return config, "", []
    keys = ", ".join(sorted({i.key or "?" for i in issues}))
    return None, f"configuration error at {keys}", issues


def _enabled(
    broker_id: str, name: str, table: dict[str, Any], resolver: _Resolver
) -> tuple[bool, list[ConfigIssue]]:
    """Read `enabled` first: a disabled provider's other keys are not checked at all."""
    before = len(resolver.missing)
    value = resolver.resolve(table.get("enabled", True), "enabled")
    if len(resolver.missing) > before:
        var = resolver.missing[-1][1]
        return False, [
            ConfigIssue(f"environment variable {var} is not set", broker_id, name, "enabled")
        ]
    try:
        return TypeAdapter(bool).validate_python(value), []
    except ValidationError:
        return False, [ConfigIssue("must be true or false", broker_id, name, "enabled")]


def _secret_values(config: BaseModel) -> set[str]:
    values = (getattr(config, name) for name in type(config).model_fields)
    return {v.get_secret_value() for v in values if isinstance(v, SecretStr) and v}


def _cross_checks(
    broker_id: str, parsed: BrokerTable, provider_models: Mapping[str, type[BaseModel]]
) -> list[ConfigIssue]:
    issues = []
    if parsed.default_provider is not None and parsed.default_provider not in parsed.providers:
        issues.append(
            ConfigIssue(
                "names no provider configured for this broker",
                broker=broker_id,
                provider=parsed.default_provider,
                key="default_provider",
            )
        )
    for name in parsed.rate_limits:
        if name not in provider_models:
            issues.append(
                ConfigIssue("unknown provider", broker=broker_id, provider=name, key="rate_limits")
            )
    return issues
