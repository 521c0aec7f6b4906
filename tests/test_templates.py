"""Reply templates: `config/templates.py`, and how brokers.toml checks them on load."""

from __future__ import annotations

import tomllib
from textwrap import dedent

import pytest

from leadline.config.brokers import BrokersFile
from leadline.config.loader import load_brokers
from leadline.config.providers import ProviderConfig
from leadline.config.templates import (
    TEMPLATE_VARIABLES,
    TemplateError,
    check_template,
    render_template,
)


def load(text: str, env: dict[str, str] | None = None) -> BrokersFile:
    return load_brokers(tomllib.loads(dedent(text)), {"webchat": ProviderConfig}, env or {})


# check_template


def test_template_variables_are_name_broker_and_provider() -> None:
    assert frozenset({"name", "broker", "provider"}) <= TEMPLATE_VARIABLES


@pytest.mark.parametrize(
    "template",
    [
        "",
        "Plain text, no variables.",
        "Hello {name}",
        "Hello {name}, this is {broker} on {provider}.",
        "{name}{name}{broker}",
        "Braces: {{ and }} and {{name}}",
        "Price: $500k",
    ],
)
def test_check_template_accepts_known_plain_variables(template: str) -> None:
    assert check_template(template) is None


def test_template_error_is_a_value_error() -> None:
    # Pydantic turns a ValueError raised in a validator into a validation issue.
    assert issubclass(TemplateError, ValueError)


@pytest.mark.parametrize(
    "template",
    ["Hello {nmae}", "{}", "{0}", "{ name }", "{NAME}", "{agent}"],
    ids=["typo", "positional-empty", "positional-index", "spaces", "wrong-case", "unknown"],
)
def test_check_template_refuses_unknown_variable(template: str) -> None:
    with pytest.raises(TemplateError, match="unknown variable"):
        check_template(template)


def test_unknown_variable_error_lists_the_known_ones() -> None:
    with pytest.raises(TemplateError) as caught:
        check_template("Hi {agent}")

    message = str(caught.value)
    assert "{agent}" in message
    assert "{broker}" in message and "{name}" in message and "{provider}" in message


@pytest.mark.parametrize(
    "template",
    ["{name.__class__}", "{name.__class__.__mro__}", "{broker.upper}"],
)
def test_check_template_refuses_attribute_access(template: str) -> None:
    with pytest.raises(TemplateError):
        check_template(template)


@pytest.mark.parametrize("template", ["{name[0]}", "{broker[__class__]}", "{name[0][0]}"])
def test_check_template_refuses_index_access(template: str) -> None:
    with pytest.raises(TemplateError):
        check_template(template)


@pytest.mark.parametrize(
    "template",
    ["{name:>10}", "{name:{broker}}", "{broker:%Y}", "{name:.1000000}"],
    ids=["align", "nested-spec", "date-spec", "huge-precision"],
)
def test_check_template_refuses_format_specs(template: str) -> None:
    with pytest.raises(TemplateError, match="no format or conversion"):
        check_template(template)


def test_check_template_accepts_an_empty_format_spec() -> None:
    # "{name:}" parses to an empty spec, the same as "{name}": it formats nothing.
    check_template("{name:}")
    assert render_template("{name:}", {"name": "Ana"}) == "Ana"


@pytest.mark.parametrize("template", ["{name!r}", "{name!s}", "{name!a}", "{broker!r:>5}"])
def test_check_template_refuses_conversions(template: str) -> None:
    with pytest.raises(TemplateError, match="no format or conversion"):
        check_template(template)


@pytest.mark.parametrize(
    "template",
    ["Hello {name", "Hello name}", "}", "{", "{name!}", "{name!x}", "{{name}"],
)
def test_check_template_refuses_malformed_braces(template: str) -> None:
    with pytest.raises(TemplateError):
        check_template(template)


def test_check_template_uses_the_allowed_set_given() -> None:
    check_template("{listing}", allowed=frozenset({"listing"}))
    with pytest.raises(TemplateError):
        check_template("{name}", allowed=frozenset({"listing"}))


# render_template


def test_render_template_fills_every_variable() -> None:
    rendered = render_template(
        "Hello {name}, this is {broker} on {provider}.",
        {"name": "Ana", "broker": "Acme", "provider": "webchat"},
    )

    assert rendered == "Hello Ana, this is Acme on webchat."


def test_render_template_inserts_values_verbatim_without_re_expansion() -> None:
    values = {"name": "{broker} {{x}} {name.__class__} %s $HOME ${TOKEN}", "broker": "Acme"}

    rendered = render_template("Hi {name}!", values)

    assert rendered == "Hi {broker} {{x}} {name.__class__} %s $HOME ${TOKEN}!"


def test_render_template_missing_values_render_empty() -> None:
    assert render_template("Hi {name}, from {broker}.", {"broker": "Acme"}) == "Hi , from Acme."
    assert render_template("{name}", {}) == ""


def test_render_template_brace_escapes_produce_single_braces() -> None:
    assert render_template("{{name}} is {name}, }} {{", {"name": "Ana"}) == "{name} is Ana, } {"


def test_render_template_without_variables_is_unchanged() -> None:
    assert render_template("Thanks, we will call you back.", {"name": "x"}) == (
        "Thanks, we will call you back."
    )


def test_render_template_repeats_a_variable() -> None:
    assert render_template("{name} {name}", {"name": "Ana"}) == "Ana Ana"


# Templates in brokers.toml


def test_valid_welcome_template_loads() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.templates]
        welcome = "Hello {name}, welcome to {broker} {{ok}}"
        """
    )

    assert loaded.ok
    assert loaded.brokers["demo"].templates.welcome == "Hello {name}, welcome to {broker} {{ok}}"


def test_missing_welcome_template_is_none() -> None:
    loaded = load('[brokers.demo]\nname = "Demo"\n')

    assert loaded.brokers["demo"].templates.welcome is None


def test_unknown_template_variable_is_an_issue_naming_templates_welcome() -> None:
    loaded = load(
        """
        [brokers.demo]
        name = "Demo"

        [brokers.demo.templates]
        welcome = "Hello {agent}"
        """
    )

    assert len(loaded.issues) == 1
    issue = loaded.issues[0]
    assert (issue.broker, issue.provider, issue.key) == ("demo", None, "templates.welcome")
    assert "'templates.welcome'" in str(issue)
    assert "'demo'" in str(issue)
    assert "unknown variable" in str(issue)
    assert loaded.invalid == frozenset({"demo"})
    assert "demo" not in loaded.brokers


@pytest.mark.parametrize(
    "welcome",
    ["Hello {name.__class__}", "Hello {name[0]}", "Hello {name!r}", "Hello {name:>9}", "Hi {"],
    ids=["attribute", "index", "conversion", "format-spec", "malformed"],
)
def test_unsafe_welcome_template_is_an_issue_naming_templates_welcome(welcome: str) -> None:
    loaded = load_brokers(
        {"brokers": {"demo": {"name": "Demo", "templates": {"welcome": welcome}}}},
        {"webchat": ProviderConfig},
        {},
    )

    assert [(i.broker, i.key) for i in loaded.issues] == [("demo", "templates.welcome")]
    assert loaded.invalid == frozenset({"demo"})


def test_welcome_template_from_environment_is_checked_after_substitution() -> None:
    ok = load(
        """
        [brokers.demo]
        name = "Demo"
        templates = { welcome = "${WELCOME}" }
        """,
        {"WELCOME": "Hi {name}"},
    )
    bad = load(
        """
        [brokers.demo]
        name = "Demo"
        templates = { welcome = "${WELCOME}" }
        """,
        {"WELCOME": "Hi {name.__class__}"},
    )

    assert ok.ok
    assert ok.brokers["demo"].templates.welcome == "Hi {name}"
    assert [i.key for i in bad.issues] == ["templates.welcome"]
