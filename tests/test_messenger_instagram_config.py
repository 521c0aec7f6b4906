"""The `messenger` and `instagram` provider tables, validated by the loader with the real models."""

from __future__ import annotations

import tomllib
from textwrap import dedent

import pytest

from leadline.adapters.instagram import InstagramConfig
from leadline.adapters.registry import discover
from leadline.config.brokers import BrokersFile
from leadline.config.loader import load_brokers

MODELS = discover(use_entry_points=False).config_models()
ENV = {"TOKEN": "EAAGunitTokenNOTREAL", "SECRET": "app-secret-Unit-1", "VERIFY": "verify-Unit"}
META = 'app_secret = "${SECRET}"\nverify_token = "${VERIFY}"\n'


def load(provider: str, table: str) -> BrokersFile:
    text = f'[brokers.x]\nname = "X"\n[brokers.x.providers.{provider}]\n' + dedent(table)
    return load_brokers(tomllib.loads(text), MODELS, ENV)


def keys(loaded: BrokersFile) -> list[str]:
    return sorted(issue.key or "" for issue in loaded.issues)


def test_a_messenger_page_loads_and_without_app_secret_does_not() -> None:
    page = 'page_id = "102030405060708"\npage_access_token = "${TOKEN}"\n'
    assert load("messenger", page + META).ok
    unsigned = load("messenger", page + 'verify_token = "${VERIFY}"\n')
    assert keys(unsigned) == ["app_secret"]
    assert all(s not in str(i) for i in unsigned.issues for s in ENV.values())


@pytest.mark.parametrize(
    ("table", "page_linked"),
    [
        ('page_id = "102030405060708"\npage_access_token = "${TOKEN}"\n', True),
        ('ig_account_id = "17841400000000001"\naccess_token = "${TOKEN}"\n', False),
    ],
    ids=["page-linked", "instagram-login"],
)
def test_instagram_takes_either_form(table: str, page_linked: bool) -> None:
    loaded = load("instagram", table + META)
    assert loaded.ok, [str(i) for i in loaded.issues]
    config = loaded.brokers["x"].providers["instagram"]
    assert isinstance(config, InstagramConfig) and config.page_linked is page_linked


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("", "access_token"),  # neither form
        ('page_id = "1"\n', "page_access_token"),
        ('ig_account_id = "1"\n', "access_token"),
        ('access_token = "${TOKEN}"\n', "access_token"),  # a token without its account
        ('page_id = "1"\npage_access_token = "${TOKEN}"\nig_account_id = "2"\n'
         'access_token = "${TOKEN}"\n', "access_token"),  # both forms
    ],
    ids=["neither", "page-without-token", "account-without-token", "token-alone", "both"],
)  # fmt: skip
def test_an_incomplete_or_doubled_instagram_form_names_the_key(table: str, key: str) -> None:
    assert keys(load("instagram", table + META)) == [key]
