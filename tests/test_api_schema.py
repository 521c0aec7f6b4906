"""The API against its own OpenAPI document: schemathesis generates requests from
`/api/v1/openapi.json` (valid and invalid ones) and sends them to a real `leadline run`
process, on SQLite and on PostgreSQL. No answer may be a server error, have a status
code or content the document does not declare, or break its response schema.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import PLUGINS, TEST_ENV
from tests.helpers import signed_delivery
from tests.test_api import ACME_KEY, DEMO_KEY, ENV, message, toml
from tests.test_process import LEADLINE

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`leadline run` with two brokers' leads and messages, for the whole module."""
    folder = tmp_path_factory.mktemp("api")
    if request.param == "sqlite":
        database = f"sqlite+aiosqlite:///{folder / 'leadline.db'}"
    else:
        database = request.getfixturevalue("postgres_url")
    (folder / "brokers.toml").write_text(toml())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLINE_")}
    env.update(
        ENV,
        LEADLINE_DATABASE_URL=database,
        LEADLINE_BROKERS_FILE=str(folder / "brokers.toml"),
        LEADLINE_PLUGINS_DIR=str(PLUGINS),
        LEADLINE_PORT=str(port),
    )
    log = (folder / "run.log").open("w")
    process = subprocess.Popen([LEADLINE, "run"], env=env, cwd=folder, stdout=log, stderr=log)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, process, folder)
        _seed(base)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    # Hundreds of requests, good keys and bad: none of the keys reached a log line.
    logged = (folder / "run.log").read_text()
    assert DEMO_KEY not in logged and ACME_KEY not in logged


def _wait_healthy(base: str, process: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError((folder / "run.log").read_text())
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError("leadline did not become healthy")


def _seed(base: str) -> None:
    for broker, secret in (("demo", "DEMO_SIGNED_SECRET"), ("acme", "ACME_SIGNED_SECRET")):
        messages = [
            message(f"{broker}-{n}", f"{broker}-user-{n}", f"hello {n}", "Ana") for n in range(3)
        ]
        body, headers = signed_delivery(TEST_ENV[secret], {"messages": messages})
        answer = requests.post(
            f"{base}/webhooks/{broker}/signed", data=body, headers=headers, timeout=10
        )
        assert answer.status_code == 200


@pytest.fixture(scope="module")
def api_schema(server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server}/api/v1/openapi.json")


def test_no_request_the_document_allows_gets_a_server_error_or_an_off_schema_answer(
    api_schema: schemathesis.BaseSchema,
) -> None:
    # schemathesis's own pytest plugin does not run under pytest 9: its strategies do.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 7
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=100,
            deadline=None,
            derandomize=True,  # the same cases on every run: CI stays stable
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {DEMO_KEY}"}, checks=CHECKS)

        call()


def test_another_brokers_key_sees_none_of_demos_leads(server: str) -> None:
    demo = requests.get(
        f"{server}/api/v1/leads", headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=10
    )
    acme = requests.get(
        f"{server}/api/v1/leads", headers={"Authorization": f"Bearer {ACME_KEY}"}, timeout=10
    )
    demo_ids = {lead["id"] for lead in demo.json()["items"]}
    acme_ids = {lead["id"] for lead in acme.json()["items"]}
    assert demo_ids and acme_ids and not demo_ids & acme_ids
