"""The example provider of docs/adapters.md (examples/postbox_adapter.py): it passes the
conformance suite, it is found as a dropped-in plugin and as an installed package, the
real app runs a broker on it end to end, and `leadline adapters check` runs the suite."""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from leadline.adapters.conformance import run
from leadline.adapters.registry import discover
from tests.conftest import REPO, AppFactory, AppHarness, wait_for
from tests.fakes.serving import running_fake
from tests.helpers import rows

EXAMPLES = REPO / "examples"
EXAMPLE = EXAMPLES / "postbox_adapter.py"
PACKAGE = EXAMPLES / "postbox-package"
LEADLINE = str(Path(sys.executable).parent / "leadline")
# The contract, its payload helpers, the base of provider settings, and the suite (for the
# kit only).
ALLOWED_IMPORTS = {
    "leadline.adapters.base",
    "leadline.adapters.payload",
    "leadline.config.providers",
    "leadline.adapters.conformance",
}
CHECK_NAMES = (
    "signatures_fail_closed",
    "secrets_must_not_be_blank",
    "duplicates_give_the_same_keys",
    "batches_lose_nothing",
    "garbage_never_raises",
    "statuses_are_monotonic",
    "sends_and_throttles",
    "secrets_never_leak",
    "start_only_looks",
)


@pytest.fixture(scope="module")
def postbox() -> Iterator[ModuleType]:
    """The example module, imported from its file as a plugins folder would."""
    name = "postbox_example_under_test"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the config's annotations through it
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The real `leadline` in a child process, with only the LEADLINE_* settings given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEADLINE_")}
    return subprocess.run(  # noqa: S603
        [LEADLINE, *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def listed(output: str, name: str) -> list[str]:
    """The words of `leadline adapters`' line for one adapter."""
    return next((line.split() for line in output.splitlines() if line.split()[:1] == [name]), [])


# --- the conformance suite -------------------------------------------------------------------


async def test_example_passes_the_whole_conformance_suite(postbox: ModuleType) -> None:
    assert await run(postbox.conformance_kit()) == []


def test_example_imports_only_the_adapter_contract_never_runtime_or_storage() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("leadline")
    }
    imported |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.startswith("leadline")
    }
    assert imported == ALLOWED_IMPORTS


# --- a plugins folder ------------------------------------------------------------------------


def test_example_dropped_into_a_plugins_folder_is_discovered_and_listed(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    dropped = Path(shutil.copy(EXAMPLE, plugins))  # the one file, alone
    entry = discover(plugins, use_entry_points=False).entries["postbox"]
    assert (entry.source, entry.origin) == ("plugin", str(dropped))
    result = cli("adapters", cwd=tmp_path, LEADLINE_PLUGINS_DIR=str(plugins))
    assert result.returncode == 0, result.stderr
    assert listed(result.stdout, "postbox") == ["postbox", "plugin", str(dropped)]


# --- an installed package --------------------------------------------------------------------


def install(package: Path, target: Path, workdir: Path) -> None:
    """Install the example's distribution into `target` with pip itself, offline: the dev
    extras bring a setuptools that builds wheels (`--no-build-isolation --no-index`)."""
    source = workdir / "src"
    shutil.copytree(package, source)  # the symlinked module is copied as a file
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*command, "--target", str(target), str(source)], check=True)  # noqa: S603


def test_example_installed_as_a_package_is_found_through_its_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install(PACKAGE, site, tmp_path)
    result = cli("adapters", cwd=tmp_path, PYTHONPATH=str(site))
    assert result.returncode == 0, result.stderr
    assert listed(result.stdout, "postbox") == [
        "postbox",
        "entry",
        "point",
        "leadline-postbox",
        "(leadline_postbox)",
    ]
    check = cli("adapters", "check", "postbox", cwd=tmp_path, PYTHONPATH=str(site))
    assert check.returncode == 0, check.stdout + check.stderr


# --- leadline adapters check -----------------------------------------------------------------


def test_adapters_check_prints_every_check_ok_and_exits_0(tmp_path: Path) -> None:
    result = cli("adapters", "check", "postbox", cwd=tmp_path, LEADLINE_PLUGINS_DIR=str(EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split() for line in result.stdout.splitlines()] == [
        [name, "ok"] for name in CHECK_NAMES
    ]


LEAKY = """
import dataclasses
import importlib.util
import sys

spec = importlib.util.spec_from_file_location("postbox_under_leaky", {example!r})
postbox = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = postbox
spec.loader.exec_module(postbox)


class LeakyAdapter(postbox.PostboxAdapter):
    name = "leaky"

    def verify(self, headers, body):
        pass  # accepts anything


def conformance_kit():
    return dataclasses.replace(postbox.conformance_kit(), adapter=LeakyAdapter)
"""


def test_adapters_check_names_the_failed_check_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "leaky.py").write_text(LEAKY.format(example=str(EXAMPLE)))
    result = cli("adapters", "check", "leaky", cwd=tmp_path, LEADLINE_PLUGINS_DIR=str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert list(lines) == list(CHECK_NAMES)
    assert (
        "FAILED: ConformanceError: a request without a signature was accepted"
        in (lines["signatures_fail_closed"])
    )
    assert lines["sends_and_throttles"].split()[1:] == ["ok"]


def test_adapters_check_of_an_adapter_without_a_kit_is_a_clear_error(tmp_path: Path) -> None:
    result = cli("adapters", "check", "webchat", cwd=tmp_path)
    assert result.returncode == 2
    assert "adapter 'webchat' has no conformance kit" in result.stderr
    assert "defines no conformance_kit()" in result.stderr
    assert result.stdout == ""


def test_adapters_check_of_an_unknown_adapter_is_a_clear_error(tmp_path: Path) -> None:
    result = cli("adapters", "check", "carrier-pigeon", cwd=tmp_path)
    assert result.returncode == 2
    assert "no adapter 'carrier-pigeon' found" in result.stderr


# --- a broker on Postbox, end to end -----------------------------------------------------------

ACCOUNT = "acct_demo1"
TOKEN = "pbx_demo_token_NOT_REAL_9"
SECRET = "whsec_demo_NOT_REAL_8"
BROKERS = """
[brokers.demo]
name = "Demo Realty"

[brokers.demo.providers.postbox]
account_id = "{account}"
api_token = "${{POSTBOX_TOKEN}}"
signing_secret = "${{POSTBOX_SECRET}}"
api_base = "{base}"

[brokers.demo.templates]
welcome = "Hi {{name}}! Thanks for writing to {{broker}}."
"""


async def post(app: AppHarness, postbox: ModuleType, body: bytes) -> int:
    headers = {
        postbox.SIGNATURE_HEADER: postbox.sign(SECRET, body, time.time()),
        "Content-Type": "application/json",
    }
    response = await app.client.post("/webhooks/demo/postbox", data=body, headers=headers)
    return response.status


async def test_broker_on_postbox_stores_a_signed_delivery_and_sends_the_welcome(
    make_app: AppFactory, postbox: ModuleType
) -> None:
    fake = postbox.FakePostbox(account=ACCOUNT, token=TOKEN)
    async with running_fake(fake) as base:
        toml = BROKERS.format(account=ACCOUNT, base=base)
        env = {"POSTBOX_TOKEN": TOKEN, "POSTBOX_SECRET": SECRET}
        app = await make_app(toml, env=env, plugins_dir=EXAMPLES)
        app.adapter("demo", "postbox")  # up: the fake accepted the account and token
        text = postbox.text_event("msg_1", "Is the flat on Elm Street free?")
        assert await post(app, postbox, postbox.delivery(text, account=ACCOUNT)) == 200

        engine = app.service.engine
        stored = await rows(engine, "SELECT * FROM chat_messages WHERE direction = 'in'")
        assert [(r["provider"], r["channel_user_id"], r["message_text"]) for r in stored] == [
            ("postbox", "usr_42", "Is the flat on Elm Street free?")
        ]

        async def sent() -> bool:
            out = await rows(engine, "SELECT * FROM chat_messages WHERE direction = 'out'")
            return [r["status"] for r in out] == ["sent"]

        await wait_for(sent)
        [welcome] = fake.sent
        assert (welcome["to"], welcome["text"]) == (
            "usr_42",
            "Hi Ana! Thanks for writing to Demo Realty.",
        )

        read = postbox.status_event(welcome["id"], "read", int(time.time()))
        assert await post(app, postbox, postbox.delivery(read, account=ACCOUNT)) == 200
        out = await rows(engine, "SELECT * FROM chat_messages WHERE direction = 'out'")
        assert [(r["channel_message_id"], r["status"]) for r in out] == [(welcome["id"], "read")]
