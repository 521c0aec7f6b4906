"""The `[brokers.X.providers.whatsapp]` table, validated by the loader with the real models."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from textwrap import dedent

import pytest

from leadline.adapters.registry import discover
from leadline.adapters.whatsapp.config import WhatsAppConfig
from leadline.config.brokers import BrokersFile, ConfigIssue
from leadline.config.loader import load_brokers

MODELS = discover(use_entry_points=False).config_models()

# Distinctive values, so that a leak into an issue or a repr is unmistakable.
TOKEN = "EAAGunitTestTokenZq8xNOTREAL"
SECRET = "app-secret-Unit-42"
VERIFY = "verify-Unit-77"
ENV = {"WA_TOKEN": TOKEN, "WA_SECRET": SECRET, "WA_VERIFY": VERIFY}
BASE = """
phone_number_id = "106540352242922"
access_token = "${WA_TOKEN}"
verify_token = "${WA_VERIFY}"
"""


def load(table: str, env: Mapping[str, str] | None = None) -> BrokersFile:
    text = '[brokers.x]\nname = "X Realty"\n[brokers.x.providers.whatsapp]\n' + dedent(table)
    return load_brokers(tomllib.loads(text), MODELS, ENV if env is None else env)


def assert_whatsapp_issue(loaded: BrokersFile, key: str) -> ConfigIssue:
    assert len(loaded.issues) == 1, [str(i) for i in loaded.issues]
    issue = loaded.issues[0]
    assert (issue.broker, issue.provider, issue.key) == ("x", "whatsapp", key)
    assert "whatsapp" not in loaded.brokers["x"].providers
    assert key in loaded.brokers["x"].disabled["whatsapp"]
    for secret in (TOKEN, SECRET, VERIFY):
        assert secret not in f"{issue} {issue!r}"
    return issue


def test_whatsapp_is_a_builtin_provider_with_its_own_model() -> None:
    assert MODELS["whatsapp"] is WhatsAppConfig


def test_a_complete_table_loads_and_its_secrets_are_masked() -> None:
    loaded = load(BASE + 'app_secret = "${WA_SECRET}"\napi_version = "v23.0"\n')
    assert loaded.ok, [str(i) for i in loaded.issues]
    config = loaded.brokers["x"].providers["whatsapp"]
    assert isinstance(config, WhatsAppConfig)
    assert config.api_version == "23.0"  # "v23.0" and "23.0" mean the same
    assert {TOKEN, SECRET, VERIFY} <= loaded.secrets
    assert all(s not in repr(config) for s in (TOKEN, SECRET, VERIFY))


def test_without_app_secret_the_provider_does_not_start_and_the_key_is_named() -> None:
    issue = assert_whatsapp_issue(load(BASE), "app_secret")
    assert "allow_unsigned" in issue.message


def test_allow_unsigned_lets_a_local_test_number_go_without_app_secret() -> None:
    loaded = load(BASE + "allow_unsigned = true\n")
    assert loaded.ok
    config = loaded.brokers["x"].providers["whatsapp"]
    assert isinstance(config, WhatsAppConfig) and config.app_secret is None


def test_an_unset_secret_variable_names_the_key() -> None:
    loaded = load(BASE + 'app_secret = "${WA_SECRET}"\n', env={"WA_TOKEN": TOKEN})
    keys = sorted(i.key or "" for i in loaded.issues)
    assert keys == ["app_secret", "verify_token"]
    assert all(i.provider == "whatsapp" for i in loaded.issues)


TEMPLATE = 'window_template = {{ name = "{name}", language = "{language}"{more} }}\n'


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('phone_number_id = "+1 555 0100"\n', "phone_number_id"),
        ('api_version = "latest"\n', "api_version"),
        (TEMPLATE.format(name="Follow Up!", language="en_US", more=""), "window_template.name"),
        (TEMPLATE.format(name="f", language="english", more=""), "window_template.language"),
        (TEMPLATE.format(name="f", language="xx_XX", more=""), "window_template.language"),
        (TEMPLATE.format(name="f", language="es", more=', body = "x"'), "window_template.body"),
        ("allow_unsigned = true\nunknown_key = 1\n", "unknown_key"),
    ],
    ids=["number", "version", "name", "language-shape", "language-unknown", "extra", "unknown"],
)
def test_bad_values_name_their_key(extra: str, key: str) -> None:
    table = BASE + 'app_secret = "${WA_SECRET}"\n'
    if extra.startswith("phone_number_id"):
        table = table.replace('phone_number_id = "106540352242922"\n', "")
    assert_whatsapp_issue(load(table + extra), key)


def test_a_token_that_is_not_one_is_refused_without_quoting_it() -> None:
    loaded = load(
        BASE + 'app_secret = "${WA_SECRET}"\n', env={**ENV, "WA_TOKEN": "has spaces in it"}
    )
    issue = assert_whatsapp_issue(loaded, "access_token")
    assert "has spaces" not in str(issue)


def test_the_issue_reads_as_our_words_not_pydantics() -> None:
    issue = assert_whatsapp_issue(load(BASE), "app_secret")
    assert issue.message.startswith("required: webhooks are checked with the app secret")
