"""The brokers.toml loader: `config/loader.py` over the schema in `config/brokers.py`."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from textwrap import dedent
from typing import Literal
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from leadline.config.brokers import BrokerConfig, BrokersFile, ConfigIssue, RateLimitConfig
from leadline.config.loader import load_brokers, load_brokers_file
from leadline.config.providers import ProviderConfig


class TokenConfig(ProviderConfig):
    """A provider with a secret, as a real adapter would declare it."""

    bot_token: SecretStr
    mode: Literal["polling", "webhook"] = "polling"


MODELS: Mapping[str, type[ProviderConfig]] = {"webchat": ProviderConfig, "tok": TokenConfig}

# Distinctive values, so that a leak into an issue or a repr is unmistakable.
TOKEN = "tok-SECRET-4f1c9a"
OTHER_TOKEN = "tok-SECRET-77b2e0"
HOST = "chat.secret-host.example"


def load(
    text: str,
    env: Mapping[str, str] | None = None,
    models: Mapping[str, type[ProviderConfig]] = MODELS,
) -> BrokersFile:
    return load_brokers(tomllib.loads(dedent(text)), models, {} if env is None else env)


def issues_for(loaded: BrokersFile, broker: str) -> list[ConfigIssue]:
    return [issue for issue in loaded.issues if issue.broker == broker]


def only_issue(loaded: BrokersFile) -> ConfigIssue:
    assert len(loaded.issues) == 1, [str(i) for i in loaded.issues]
    return loaded.issues[0]


def assert_no_value_in_issues(loaded: BrokersFile, values: Mapping[str, str]) -> None:
    for issue in loaded.issues:
        text = f"{issue} {issue!r}"
        for value in values.values():
            assert value not in text, f"issue quotes an environment value: {issue}"


VALID = """
    [brokers.acme]
    name = "Acme Realty"
    timezone = "Europe/Paris"
    default_provider = "tok"

    [brokers.acme.providers.tok]
    bot_token = "${ACME_TOKEN}"
    mode = "webhook"

    [brokers.acme.providers.webchat]
    api_base = "https://${CHAT_HOST}/x"

    [brokers.acme.rate_limits.tok]
    messages_per_second = 2.5

    [brokers.acme.features]
    typing_indicator = true

    [brokers.acme.templates]
    welcome = "Hello {name}, this is {broker}"

    [brokers.beta-2]
    name = "Beta"

    [brokers.beta-2.providers.tok]
    bot_token = "${BETA_TOKEN}"
"""
VALID_ENV = {"ACME_TOKEN": TOKEN, "BETA_TOKEN": OTHER_TOKEN, "CHAT_HOST": HOST}


# 1. A valid file loads, and `${NAME}` resolves from the env mapping.


def test_valid_file_with_two_brokers_loads_every_table(tmp_path: Path) -> None:
    path = tmp_path / "brokers.toml"
    path.write_text(dedent(VALID), encoding="utf-8")

    loaded = load_brokers_file(path, MODELS, VALID_ENV)

    assert loaded.ok and loaded.issues == ()
    assert loaded.invalid == frozenset()
    assert set(loaded.brokers) == {"acme", "beta-2"}
    acme = loaded.brokers["acme"]
    assert isinstance(acme, BrokerConfig)
    assert acme.id == "acme"
    assert acme.name == "Acme Realty"
    assert acme.timezone == "Europe/Paris"
    assert acme.zone == ZoneInfo("Europe/Paris")
    assert acme.default_provider == "tok"
    assert set(acme.providers) == {"tok", "webchat"}
    assert acme.disabled == {}
    assert isinstance(acme.providers["tok"], TokenConfig)
    assert acme.providers["tok"].mode == "webhook"
    assert acme.rate_limits == {"tok": RateLimitConfig(messages_per_second=2.5)}
    assert acme.features.typing_indicator is True
    assert acme.features.auto_reply is True  # default kept
    assert acme.templates.welcome == "Hello {name}, this is {broker}"

    beta = loaded.brokers["beta-2"]
    assert beta.timezone == "UTC"
    assert beta.default_provider is None
    assert set(beta.providers) == {"tok"}
    assert beta.rate_limits == {}


def test_full_string_placeholder_resolves_from_env_mapping() -> None:
    loaded = load(VALID, VALID_ENV)

    assert loaded.brokers["acme"].providers["tok"].bot_token.get_secret_value() == TOKEN
    assert loaded.brokers["beta-2"].providers["tok"].bot_token.get_secret_value() == OTHER_TOKEN


def test_embedded_placeholder_resolves_inside_a_longer_string() -> None:
    loaded = load(VALID, VALID_ENV)

    assert str(loaded.brokers["acme"].providers["webchat"].api_base) == f"https://{HOST}/x"


def test_several_placeholders_in_one_string_all_resolve() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "${FIRST} & ${SECOND}"
        """,
        {"FIRST": "Alpha", "SECOND": "Omega"},
    )

    assert loaded.ok
    assert loaded.brokers["demo"].name == "Alpha & Omega"


def test_placeholders_read_the_env_mapping_never_os_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LL_TEST_ONLY_IN_OS_ENVIRON", "from-os-environ")
    monkeypatch.setenv("LL_TEST_IN_BOTH", "from-os-environ")
    text = """
        [brokers.demo]
        name = "${LL_TEST_IN_BOTH}"

        [brokers.demo.providers.tok]
        bot_token = "${LL_TEST_ONLY_IN_OS_ENVIRON}"
    """

    loaded = load(text, {"LL_TEST_IN_BOTH": "from-mapping"})

    demo = loaded.brokers["demo"]
    assert demo.name == "from-mapping"
    assert "tok" not in demo.providers
    issue = only_issue(loaded)
    assert "LL_TEST_ONLY_IN_OS_ENVIRON" in str(issue)
    assert "from-os-environ" not in loaded.secrets


def test_environment_values_are_inserted_once_never_re_expanded() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "${OUTER}"
        """,
        {"OUTER": "${INNER}", "INNER": "should-not-appear"},
    )

    assert loaded.ok
    assert loaded.brokers["demo"].name == "${INNER}"
    assert "should-not-appear" not in loaded.secrets


def test_text_without_braces_after_dollar_is_left_alone() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Homes from $500k, $HOME stays"
        """
    )

    assert loaded.ok
    assert loaded.brokers["demo"].name == "Homes from $500k, $HOME stays"


# 2. Unresolved `${X}`: named precisely, never quoting a value; provider vs broker level.


def test_unresolved_secret_names_broker_provider_and_key() -> None:
    env = {"MODE": "webhook", "CHAT_HOST": HOST}
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.tok]
        bot_token = "${MISSING_TOKEN}"
        mode = "${MODE}"
        """,
        env,
    )

    issue = only_issue(loaded)
    assert (issue.broker, issue.provider, issue.key) == ("demo", "tok", "bot_token")
    text = str(issue)
    assert "'demo'" in text
    assert "'tok'" in text
    assert "'bot_token'" in text
    assert "MISSING_TOKEN" in text
    assert_no_value_in_issues(loaded, env)


def test_unresolved_secret_in_nested_provider_value_names_the_full_key() -> None:
    class Nested(ProviderConfig):
        headers: dict[str, str] = {}
        hosts: list[str] = []

    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.nested]
        headers = { authorization = "Bearer ${MISSING_A}" }
        hosts = ["ok", "${MISSING_B}"]
        """,
        models={"nested": Nested},
    )

    keys = {(i.provider, i.key) for i in loaded.issues}
    assert keys == {("nested", "headers.authorization"), ("nested", "hosts[1]")}


def test_unresolved_secret_disables_only_that_provider() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.tok]
        bot_token = "${MISSING_TOKEN}"

        [brokers.demo.providers.webchat]
        api_base = "https://${CHAT_HOST}/chat"
        """,
        {"CHAT_HOST": HOST},
    )

    assert not loaded.ok
    assert "demo" in loaded.brokers
    assert "demo" not in loaded.invalid
    demo = loaded.brokers["demo"]
    assert set(demo.providers) == {"webchat"}
    assert set(demo.disabled) == {"tok"}
    assert "bot_token" in demo.disabled["tok"]


def test_issue_text_never_quotes_an_environment_value() -> None:
    # Values that fail validation after substitution: the issue must name the key only.
    env = {
        "GOOD_TOKEN": TOKEN,
        "BAD_MODE": "mode-SECRET-91ad",
        "BAD_URL": "not a url SECRET-03fe",
    }
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.tok]
        bot_token = "${GOOD_TOKEN}"
        mode = "${BAD_MODE}"

        [brokers.demo.providers.webchat]
        api_base = "${BAD_URL}"
        """,
        env,
    )

    assert {(i.provider, i.key) for i in loaded.issues} == {
        ("tok", "mode"),
        ("webchat", "api_base"),
    }
    assert_no_value_in_issues(loaded, env)
    demo = loaded.brokers["demo"]
    assert set(demo.disabled) == {"tok", "webchat"}
    for reason in demo.disabled.values():
        assert all(value not in reason for value in env.values())


def test_bad_timezone_from_environment_is_not_quoted_in_the_issue() -> None:
    env = {"BROKER_TZ": "Zone/SECRET-5be7"}
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"
        timezone = "${BROKER_TZ}"
        """,
        env,
    )

    assert only_issue(loaded).key == "timezone"
    assert_no_value_in_issues(loaded, env)


def test_unresolved_variable_at_broker_level_makes_broker_invalid() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.templates]
        welcome = "Hello {name}, ${MISSING_GREETING}"

        [brokers.demo.providers.webchat]
        """
    )

    assert "demo" not in loaded.brokers
    assert loaded.invalid == frozenset({"demo"})
    issue = only_issue(loaded)
    assert (issue.broker, issue.provider, issue.key) == ("demo", None, "templates.welcome")
    assert "MISSING_GREETING" in str(issue)
    assert "'demo'" in str(issue) and "'templates.welcome'" in str(issue)


def test_unresolved_broker_name_makes_broker_invalid() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "${MISSING_NAME}"
        """
    )

    assert loaded.invalid == frozenset({"demo"})
    assert loaded.brokers == {}
    assert any(i.key == "name" and "MISSING_NAME" in i.message for i in issues_for(loaded, "demo"))


def test_unresolved_broker_variable_is_reported_once_without_follow_on_errors() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"
        timezone = "${MISSING_TZ}"
        """
    )

    issue = only_issue(loaded)
    assert issue.key == "timezone"
    assert "MISSING_TZ" in issue.message


# 3. Unknown keys and bad values.


def test_unknown_broker_key_names_broker_and_key() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"
        colour = "red"
        """
    )

    issue = only_issue(loaded)
    assert (issue.broker, issue.provider, issue.key) == ("demo", None, "colour")
    assert "'demo'" in str(issue) and "'colour'" in str(issue)
    assert "red" not in str(issue)
    assert loaded.invalid == frozenset({"demo"})


def test_unknown_feature_key_names_broker_and_key() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.features]
        auto_replies = true
        """
    )

    issue = only_issue(loaded)
    assert (issue.broker, issue.key) == ("demo", "features.auto_replies")
    assert "'features.auto_replies'" in str(issue)
    assert loaded.invalid == frozenset({"demo"})


def test_unknown_provider_key_names_broker_provider_and_key() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.tok]
        bot_token = "x"
        pollling_interval = 5

        [brokers.demo.providers.webchat]
        """
    )

    issue = only_issue(loaded)
    assert (issue.broker, issue.provider, issue.key) == ("demo", "tok", "pollling_interval")
    text = str(issue)
    assert "'demo'" in text and "'tok'" in text and "'pollling_interval'" in text
    demo = loaded.brokers["demo"]
    assert set(demo.providers) == {"webchat"}
    assert "pollling_interval" in demo.disabled["tok"]


def test_missing_required_provider_key_is_an_issue_naming_the_key() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.tok]
        mode = "polling"
        """
    )

    issue = only_issue(loaded)
    assert (issue.broker, issue.provider, issue.key) == ("demo", "tok", "bot_token")
    assert set(loaded.brokers["demo"].disabled) == {"tok"}


@pytest.mark.parametrize(
    ("table", "key"),
    [
        pytest.param('timezone = "Mars/Olympus_Mons"', "timezone", id="bad-timezone"),
        pytest.param('timezone = ""', "timezone", id="empty-timezone"),
        pytest.param('timezone = "/etc/localtime"', "timezone", id="absolute-path-timezone"),
        pytest.param('timezone = "../../etc/passwd"', "timezone", id="escaping-timezone"),
        pytest.param("timezone = 2", "timezone", id="non-string-timezone"),
        pytest.param(
            'features = { auto_reply = "sometimes" }', "features.auto_reply", id="non-bool-feature"
        ),
        pytest.param(
            "features = { read_receipts = 2.5 }", "features.read_receipts", id="float-feature"
        ),
        pytest.param(
            "rate_limits = { webchat = { messages_per_minute = -5 } }",
            "rate_limits.webchat.messages_per_minute",
            id="negative-rate-limit",
        ),
        pytest.param(
            "rate_limits = { webchat = { messages_per_second = 0 } }",
            "rate_limits.webchat.messages_per_second",
            id="zero-rate-limit",
        ),
        pytest.param(
            "rate_limits = { webchat = {} }", "rate_limits.webchat", id="rate-limit-without-limit"
        ),
        pytest.param(
            "rate_limits = { webchat = { burst = 3, messages_per_second = 1 } }",
            "rate_limits.webchat.burst",
            id="unknown-rate-limit-key",
        ),
        pytest.param('name = ""', "name", id="empty-name"),
        pytest.param('templates = { goodbye = "Bye" }', "templates.goodbye", id="unknown-template"),
    ],
)
def test_bad_broker_value_is_an_issue_naming_broker_and_key(table: str, key: str) -> None:
    lines = [] if table.startswith("name") else ['name = "Demo"']
    text = "\n".join(["[brokers.demo]", *lines, table, "[brokers.demo.providers.webchat]"])

    loaded = load(text)

    issue = only_issue(loaded)
    assert (issue.broker, issue.key) == ("demo", key)
    assert f"'{key}'" in str(issue)
    assert loaded.invalid == frozenset({"demo"})
    assert not loaded.ok


def test_missing_broker_name_is_an_issue() -> None:
    loaded = load(
        """
        [brokers.demo]
        timezone = "UTC"
        """
    )

    assert only_issue(loaded).key == "name"
    assert loaded.invalid == frozenset({"demo"})


def test_broker_table_that_is_not_a_table_is_an_issue() -> None:
    loaded = load(
        """
        [brokers]
        demo = "yes"
        """
    )

    issue = only_issue(loaded)
    assert issue.broker == "demo"
    assert loaded.invalid == frozenset({"demo"})


@pytest.mark.parametrize(
    ("providers", "key"),
    [
        pytest.param('providers = "webchat"', "providers", id="providers-not-a-table"),
        pytest.param(
            'providers = { webchat = "on" }', "providers.webchat", id="provider-not-a-table"
        ),
    ],
)
def test_malformed_providers_table_is_an_issue(providers: str, key: str) -> None:
    loaded = load(f'[brokers.demo]\nname = "Demo"\n{providers}\n')

    issue = only_issue(loaded)
    assert (issue.broker, issue.key) == ("demo", key)
    assert loaded.invalid == frozenset({"demo"})


# 4. Broker ids.


@pytest.mark.parametrize(
    "broker_id",
    ["Demo_1", "Demo", "demo_1", "demo 1", "demo.1", "démo", "demo\n", ""],
)
def test_broker_id_outside_lowercase_digits_and_dash_is_refused(broker_id: str) -> None:
    loaded = load_brokers({"brokers": {broker_id: {"name": "Demo"}}}, MODELS, {})

    assert loaded.brokers == {}
    assert loaded.invalid == frozenset({broker_id})
    issue = only_issue(loaded)
    assert issue.broker == broker_id
    assert "a-z" in issue.message


def test_refused_broker_id_is_named_in_the_issue() -> None:
    loaded = load(
        """
        [brokers.Demo_1]
        name = "Demo"
        """
    )

    assert "'Demo_1'" in str(only_issue(loaded))


@pytest.mark.parametrize("broker_id", ["demo", "demo-1", "42", "a", "x-y-z-2024"])
def test_broker_id_of_lowercase_digits_and_dash_is_accepted(broker_id: str) -> None:
    loaded = load_brokers({"brokers": {broker_id: {"name": "Demo"}}}, MODELS, {})

    assert loaded.ok
    assert set(loaded.brokers) == {broker_id}


# 5. enabled = false.


def test_disabled_provider_is_not_validated() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.tok]
        enabled = false
        bot_token = "${UNSET_TOKEN}"
        mode = "carrier-pigeon"
        not_a_key = 1

        [brokers.demo.providers.webchat]
        """
    )

    assert loaded.ok, [str(i) for i in loaded.issues]
    demo = loaded.brokers["demo"]
    assert set(demo.providers) == {"webchat"}
    assert demo.disabled == {"tok": "enabled = false"}
    assert loaded.secrets == frozenset()


def test_disabled_provider_does_not_resolve_its_secrets() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.tok]
        enabled = false
        bot_token = "${TOKEN}"
        """,
        {"TOKEN": TOKEN},
    )

    assert loaded.ok
    assert TOKEN not in loaded.secrets


def test_explicitly_enabled_provider_is_validated() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.tok]
        enabled = true
        bot_token = "${UNSET_TOKEN}"
        """
    )

    assert only_issue(loaded).key == "bot_token"
    assert set(loaded.brokers["demo"].disabled) == {"tok"}


def test_provider_disabled_through_an_environment_flag_does_not_run() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.tok]
        enabled = "${TOK_ENABLED}"
        bot_token = "x"
        """,
        {"TOK_ENABLED": "false"},
    )

    demo = loaded.brokers["demo"]
    assert "tok" not in demo.providers
    assert "tok" in demo.disabled


# 6. Unknown providers, default_provider, rate_limits.


def test_unknown_provider_is_an_issue_naming_it() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.smoke_signals]
        token = "x"

        [brokers.demo.providers.webchat]
        """
    )

    issue = only_issue(loaded)
    assert (issue.broker, issue.provider) == ("demo", "smoke_signals")
    assert "'smoke_signals'" in str(issue)
    assert "tok" in issue.message and "webchat" in issue.message  # lists the known ones
    demo = loaded.brokers["demo"]
    assert set(demo.providers) == {"webchat"}
    assert demo.disabled == {"smoke_signals": "unknown provider"}


def test_unknown_provider_is_an_issue_even_when_disabled() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.smoke_signals]
        enabled = false
        """
    )

    assert only_issue(loaded).provider == "smoke_signals"


def test_unknown_provider_with_no_known_providers_says_none() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.webchat]
        """,
        models={},
    )

    assert "none" in only_issue(loaded).message


def test_default_provider_not_configured_is_an_issue() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"
        default_provider = "tok"

        [brokers.demo.providers.webchat]
        """
    )

    issue = only_issue(loaded)
    assert (issue.broker, issue.provider, issue.key) == ("demo", "tok", "default_provider")
    assert "'default_provider'" in str(issue)
    assert loaded.invalid == frozenset({"demo"})


def test_rate_limits_for_unknown_provider_is_an_issue() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.rate_limits.fax]
        messages_per_minute = 10

        [brokers.demo.providers.webchat]
        """
    )

    issue = only_issue(loaded)
    assert (issue.broker, issue.provider, issue.key) == ("demo", "fax", "rate_limits")
    assert "'fax'" in str(issue)
    assert loaded.invalid == frozenset({"demo"})


# 7. One broker's errors never stop another.

BROKEN_BROKERS = {
    "bad-id": '[brokers.Bad_Id]\nname = "x"\n',
    "not-a-table": "[brokers]\nbroken = 3\n",
    "unknown-key": '[brokers.broken]\nname = "x"\nhue = 1\n',
    "bad-timezone": '[brokers.broken]\nname = "x"\ntimezone = "Nowhere/Here"\n',
    "missing-var": '[brokers.broken]\nname = "${NOPE}"\n',
    "bad-template": '[brokers.broken]\nname = "x"\ntemplates = { welcome = "{oops" }\n',
    "bad-default": '[brokers.broken]\nname = "x"\ndefault_provider = "tok"\n',
    "bad-rate-limit": '[brokers.broken]\nname = "x"\nrate_limits = { fax = {} }\n',
    "bad-provider": '[brokers.broken]\nname = "x"\nproviders = { tok = { mode = "y" } }\n',
}


@pytest.mark.parametrize("broken", BROKEN_BROKERS.values(), ids=BROKEN_BROKERS.keys())
def test_broken_broker_never_stops_a_valid_broker(broken: str) -> None:
    valid = """
        [brokers.good]
        name = "Good"
        default_provider = "tok"

        [brokers.good.providers.tok]
        bot_token = "${TOKEN}"

        [brokers.good.providers.webchat]
    """
    for text in (broken + dedent(valid), dedent(valid) + broken):
        loaded = load(text, {"TOKEN": TOKEN})

        assert not loaded.ok
        assert "good" in loaded.brokers
        assert "good" not in loaded.invalid
        assert issues_for(loaded, "good") == []
        good = loaded.brokers["good"]
        assert set(good.providers) == {"tok", "webchat"}
        assert good.providers["tok"].bot_token.get_secret_value() == TOKEN


def test_pathological_timezone_never_stops_a_valid_broker() -> None:
    raw = {
        "brokers": {
            "broken": {"name": "x", "timezone": "a/" * 1000 + "b"},
            "good": {"name": "Good"},
        }
    }

    loaded = load_brokers(raw, MODELS, {})

    assert "good" in loaded.brokers
    assert loaded.invalid == frozenset({"broken"})


def test_all_broken_brokers_are_reported_together() -> None:
    loaded = load(
        """
        [brokers.one]
        name = "One"
        hue = 1

        [brokers.two]
        name = "Two"
        timezone = "Nowhere/Here"
        """
    )

    assert loaded.brokers == {}
    assert loaded.invalid == frozenset({"one", "two"})
    assert {i.broker for i in loaded.issues} == {"one", "two"}


# 8. secrets and ok.


def test_secrets_hold_every_substituted_value() -> None:
    env = {**VALID_ENV, "UNUSED": "never-referenced"}

    loaded = load(VALID, env)

    assert loaded.secrets == frozenset({TOKEN, OTHER_TOKEN, HOST})


def test_secrets_include_values_from_brokers_and_providers_with_issues() -> None:
    loaded = load(
        """
        [brokers.invalid]
        name = "${INVALID_NAME}"
        hue = 1

        [brokers.partial]
        name = "Partial"

        [brokers.partial.providers.tok]
        bot_token = "${PARTIAL_TOKEN}"
        mode = "${MISSING_MODE}"
        """,
        {"INVALID_NAME": "name-SECRET-1", "PARTIAL_TOKEN": "token-SECRET-2"},
    )

    assert loaded.invalid == frozenset({"invalid"})
    assert loaded.secrets == frozenset({"name-SECRET-1", "token-SECRET-2"})


def test_empty_environment_value_resolves_but_is_not_a_secret() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo${SUFFIX}"
        """,
        {"SUFFIX": ""},
    )

    assert loaded.ok
    assert loaded.brokers["demo"].name == "Demo"
    assert "" not in loaded.secrets


def test_ok_is_false_when_there_are_issues_and_true_otherwise() -> None:
    assert load(VALID, VALID_ENV).ok is True
    assert load("", {}).ok is True

    # A disabled provider is an issue too, even though its broker loads.
    partial = load(VALID, {k: v for k, v in VALID_ENV.items() if k != "BETA_TOKEN"})
    assert set(partial.brokers) == {"acme", "beta-2"}
    assert partial.ok is False


# 9. load_brokers_file and the top level.


def test_missing_file_is_an_issue(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"

    loaded = load_brokers_file(path, MODELS, {})

    issue = only_issue(loaded)
    assert "not found" in str(issue)
    assert "nope.toml" in str(issue)
    assert loaded.brokers == {}
    assert not loaded.ok


def test_invalid_toml_is_an_issue_mentioning_toml(tmp_path: Path) -> None:
    path = tmp_path / "brokers.toml"
    path.write_text('[brokers.demo]\nname = "Demo\n', encoding="utf-8")

    loaded = load_brokers_file(path, MODELS, {})

    issue = only_issue(loaded)
    assert "invalid TOML" in str(issue)
    assert loaded.brokers == {}
    assert not loaded.ok


def test_file_that_is_not_utf8_is_an_issue(tmp_path: Path) -> None:
    path = tmp_path / "brokers.toml"
    path.write_bytes(b'[brokers.demo]\nname = "D\xe9mo"\n')

    loaded = load_brokers_file(path, MODELS, {})

    assert "cannot read" in str(only_issue(loaded))
    assert loaded.brokers == {}


def test_directory_instead_of_file_is_an_issue(tmp_path: Path) -> None:
    loaded = load_brokers_file(tmp_path, MODELS, {})

    assert "cannot read" in str(only_issue(loaded))
    assert loaded.brokers == {}


def test_empty_file_loads_no_brokers_and_no_issues(tmp_path: Path) -> None:
    path = tmp_path / "brokers.toml"
    path.write_text("", encoding="utf-8")

    loaded = load_brokers_file(path, MODELS, {})

    assert loaded.ok
    assert loaded.brokers == {}


def test_brokers_value_that_is_not_a_table_is_an_issue(tmp_path: Path) -> None:
    path = tmp_path / "brokers.toml"
    path.write_text('brokers = ["demo"]\n', encoding="utf-8")

    loaded = load_brokers_file(path, MODELS, {})

    issue = only_issue(loaded)
    assert "brokers" in str(issue) and "table" in str(issue)
    assert loaded.brokers == {}
    assert not loaded.ok


def test_unknown_top_level_table_is_an_issue_and_brokers_still_load(tmp_path: Path) -> None:
    path = tmp_path / "brokers.toml"
    path.write_text(
        dedent(
            """
            [server]
            port = 80

            [brokers.demo]
            name = "Demo"
            """
        ),
        encoding="utf-8",
    )

    loaded = load_brokers_file(path, MODELS, {})

    issue = only_issue(loaded)
    assert issue.key == "server"
    assert issue.broker is None
    assert "'server'" in str(issue)
    assert set(loaded.brokers) == {"demo"}


# 10. SecretStr values never show in repr/str.


def test_secret_str_provider_values_never_show_in_repr_or_str() -> None:
    loaded = load(VALID, VALID_ENV)
    acme = loaded.brokers["acme"]
    token_config = acme.providers["tok"]

    assert isinstance(token_config, TokenConfig)
    assert token_config.bot_token.get_secret_value() == TOKEN
    for shown in (
        repr(token_config),
        str(token_config),
        repr(acme),
        str(acme),
        repr(loaded.brokers),
        repr(loaded.issues),
        repr(token_config.model_dump()),
    ):
        assert TOKEN not in shown
        assert OTHER_TOKEN not in shown
    assert "**********" in repr(token_config)


def test_secret_str_values_never_show_in_a_disabled_providers_reason() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.providers.tok]
        bot_token = "${TOKEN}"
        mode = "sms"
        """,
        {"TOKEN": TOKEN},
    )

    demo = loaded.brokers["demo"]
    assert TOKEN not in repr(demo)
    assert TOKEN not in repr(loaded.issues)


def test_brokers_file_repr_never_shows_secrets() -> None:
    loaded = load(VALID, VALID_ENV)

    assert TOKEN not in repr(loaded)
    assert OTHER_TOKEN not in repr(loaded)
