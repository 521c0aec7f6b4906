"""The `[brokers.X.providers.telegram]` table, validated by the loader with the real models."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from textwrap import dedent

import pytest

from leadline.adapters.registry import discover
from leadline.adapters.telegram import TelegramConfig
from leadline.config.brokers import BrokersFile, ConfigIssue
from leadline.config.loader import load_brokers

MODELS = discover(use_entry_points=False).config_models()

# Distinctive values, so that a leak into an issue or a repr is unmistakable.
TOKEN = "987654321:AAE-unit-test-token_Zq8x"
SECRET = "hook-secret_Unit-42"


def load(table: str, env: Mapping[str, str] | None = None) -> BrokersFile:
    text = '[brokers.x]\nname = "X Realty"\n[brokers.x.providers.telegram]\n' + dedent(table)
    return load_brokers(tomllib.loads(text), MODELS, {} if env is None else env)


def only_issue(loaded: BrokersFile) -> ConfigIssue:
    assert len(loaded.issues) == 1, [str(i) for i in loaded.issues]
    return loaded.issues[0]


def assert_telegram_issue(loaded: BrokersFile, key: str) -> ConfigIssue:
    issue = only_issue(loaded)
    assert (issue.broker, issue.provider, issue.key) == ("x", "telegram", key)
    assert str(issue).startswith(f"broker 'x', provider 'telegram', key '{key}': ")
    # The broker itself still loads; only its Telegram channel is disabled, with the key.
    broker = loaded.brokers["x"]
    assert "telegram" not in broker.providers
    assert key in broker.disabled["telegram"]
    return issue


def test_telegram_is_a_builtin_provider_with_its_own_model():
    assert MODELS["telegram"] is TelegramConfig


def test_webhook_mode_without_a_secret_names_the_webhook_secret_key():
    loaded = load(f'bot_token = "{TOKEN}"\nmode = "webhook"\n')
    issue = assert_telegram_issue(loaded, "webhook_secret")
    assert "webhook" in issue.message
    assert TOKEN not in f"{issue} {issue!r}"


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        "555000111",
        ":AAE-no-digits",
        "abc:AAE-letters-first",
        "555000111:",
        "555000111:has space",
        "555000111:slash/inside",
        "555000111:AAE\n",
        " 555000111:AAE-leading-space",
        "555000111:AAE:two-colons",
        "1" * 21 + ":AAE-too-many-digits",
    ],
)
def test_token_of_the_wrong_shape_names_bot_token_without_quoting_it(token: str):
    for loaded in (
        load("bot_token = '''" + token + "'''\n"),  # written in the file
        load('bot_token = "${TG_TOKEN}"\n', {"TG_TOKEN": token}),  # from the environment
    ):
        issue = assert_telegram_issue(loaded, "bot_token")
        if token.strip():
            assert token.strip() not in f"{issue} {issue!r}"
        assert token not in repr(loaded)


def test_token_that_is_not_a_string_names_bot_token():
    assert_telegram_issue(load("bot_token = 123456789\n"), "bot_token")


def test_missing_token_names_bot_token():
    assert_telegram_issue(load('mode = "polling"\n'), "bot_token")


@pytest.mark.parametrize(
    "secret",
    ["has space", "semi;colon", "dots.not.allowed", "slash/x", "ñandú", "", "a" * 257],
)
def test_webhook_secret_outside_the_allowed_alphabet_or_length_is_an_issue(secret: str):
    loaded = load(f'bot_token = "{TOKEN}"\nmode = "webhook"\nwebhook_secret = "{secret}"\n')
    issue = assert_telegram_issue(loaded, "webhook_secret")
    if secret:
        assert secret not in f"{issue} {issue!r}"


def test_webhook_secret_of_256_allowed_characters_is_accepted():
    secret = ("Ab9_-" * 60)[:256]
    loaded = load(f'bot_token = "{TOKEN}"\nmode = "webhook"\nwebhook_secret = "{secret}"\n')
    assert loaded.ok, [str(i) for i in loaded.issues]
    config = loaded.brokers["x"].providers["telegram"]
    assert isinstance(config, TelegramConfig)
    assert config.webhook_secret is not None
    assert config.webhook_secret.get_secret_value() == secret


@pytest.mark.parametrize("timeout", [0, -1, 51, 1000])
def test_poll_timeout_outside_1_to_50_is_an_issue(timeout: int):
    assert_telegram_issue(
        load(f'bot_token = "{TOKEN}"\npoll_timeout = {timeout}\n'), "poll_timeout"
    )


@pytest.mark.parametrize("timeout", [1, 50])
def test_poll_timeout_bounds_are_accepted(timeout: int):
    loaded = load(f'bot_token = "{TOKEN}"\npoll_timeout = {timeout}\n')
    assert loaded.ok, [str(i) for i in loaded.issues]
    assert loaded.brokers["x"].providers["telegram"].poll_timeout == timeout


def test_unknown_mode_is_an_issue():
    assert_telegram_issue(load(f'bot_token = "{TOKEN}"\nmode = "push"\n'), "mode")


def test_unknown_key_is_an_issue():
    assert_telegram_issue(load(f'bot_token = "{TOKEN}"\npoll_intervall = 5\n'), "poll_intervall")


def test_valid_polling_table_loads():
    loaded = load(
        """
        bot_token = "${TG_TOKEN}"
        api_base = "http://127.0.0.1:8081"
        poll_timeout = 7
        """,
        {"TG_TOKEN": TOKEN},
    )
    assert loaded.ok, [str(i) for i in loaded.issues]
    config = loaded.brokers["x"].providers["telegram"]
    assert isinstance(config, TelegramConfig)
    assert config.bot_token.get_secret_value() == TOKEN
    assert (config.mode, config.poll_timeout, config.webhook_secret) == ("polling", 7, None)
    assert str(config.api_base).rstrip("/") == "http://127.0.0.1:8081"
    assert loaded.brokers["x"].disabled == {}


def test_polling_is_the_default_mode_and_30_the_default_timeout():
    config = load(f'bot_token = "{TOKEN}"\n').brokers["x"].providers["telegram"]
    assert (config.mode, config.poll_timeout, config.api_base) == ("polling", 30, None)


def test_valid_webhook_table_loads():
    loaded = load(
        """
        bot_token = "${TG_TOKEN}"
        mode = "webhook"
        webhook_secret = "${TG_SECRET}"
        """,
        {"TG_TOKEN": TOKEN, "TG_SECRET": SECRET},
    )
    assert loaded.ok, [str(i) for i in loaded.issues]
    config = loaded.brokers["x"].providers["telegram"]
    assert isinstance(config, TelegramConfig)
    assert config.mode == "webhook"
    assert config.webhook_secret is not None
    assert config.webhook_secret.get_secret_value() == SECRET
    assert {TOKEN, SECRET} <= loaded.secrets


def test_disabled_table_is_not_validated():
    loaded = load('enabled = false\nmode = "push"\n')
    assert loaded.ok
    assert loaded.brokers["x"].disabled == {"telegram": "enabled = false"}


def test_token_written_literally_is_still_a_secret_to_mask():
    loaded = load(f'bot_token = "{TOKEN}"\nmode = "webhook"\nwebhook_secret = "{SECRET}"\n')
    assert loaded.ok, [str(i) for i in loaded.issues]
    assert TOKEN in loaded.secrets
    assert SECRET in loaded.secrets


def test_token_from_the_environment_is_a_secret_to_mask():
    loaded = load('bot_token = "${TG_TOKEN}"\n', {"TG_TOKEN": TOKEN})
    assert TOKEN in loaded.secrets


def test_repr_of_the_loaded_config_never_shows_the_token_or_the_secret():
    loaded = load(f'bot_token = "{TOKEN}"\nmode = "webhook"\nwebhook_secret = "{SECRET}"\n')
    broker = loaded.brokers["x"]
    config = broker.providers["telegram"]
    for text in (
        repr(loaded),
        str(loaded),
        repr(broker),
        repr(config),
        str(config),
        repr(config.model_dump()),
        config.model_dump_json(),
    ):
        assert TOKEN not in text
        assert SECRET not in text
        assert "987654321" not in text  # not even the bot id half of the token
