"""`leadline` as a real process: the CLI, a clean SIGTERM, a SIGKILL amid traffic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from leadline.storage.migrate import head_revision
from tests.conftest import DEMO_TOML, PLUGINS, REPO, TEST_ENV
from tests.fakes.plugins.signed import sign
from tests.helpers import rows

LEADLINE = str(Path(sys.executable).parent / "leadline")


def child_env(tmp_path: Path, database_url: str, port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLINE_")}
    env.update(TEST_ENV)
    env.update(
        LEADLINE_DATABASE_URL=database_url,
        LEADLINE_BROKERS_FILE=str(tmp_path / "brokers.toml"),
        LEADLINE_PLUGINS_DIR=str(PLUGINS),
        LEADLINE_PORT=str(port),
        LEADLINE_LOG_LEVEL="INFO",
        # A row in flight at a kill goes out again once its lease ends: keep that short.
        LEADLINE_SEND_LEASE_SECONDS="2",
    )
    return env


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [LEADLINE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


# --- the CLI -------------------------------------------------------------------


def test_check_accepts_the_repository_brokers_file():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLINE_")}
    result = run_cli("check", env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broker demo (Demo Realty): providers webchat" in result.stdout


def test_check_fails_naming_broker_provider_and_key_without_printing_secrets(tmp_path: Path):
    (tmp_path / "brokers.toml").write_text(
        DEMO_TOML + '\n[brokers.acme.providers.webchat]\ncolour = "${ACME_SIGNED_SECRET}"\n'
    )
    env = child_env(tmp_path, "sqlite+aiosqlite:///unused.db")
    del env["DEMO_SIGNED_SECRET"]
    result = run_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert (
        "broker 'demo', provider 'signed', key 'secret': "
        "environment variable DEMO_SIGNED_SECRET is not set"
    ) in result.stdout
    assert "broker 'acme', provider 'webchat', key 'colour'" in result.stdout
    assert TEST_ENV["ACME_SIGNED_SECRET"] not in result.stdout + result.stderr


def test_db_upgrade_migrates_a_new_database(tmp_path: Path, database_url: str):
    (tmp_path / "brokers.toml").write_text(DEMO_TOML)
    result = run_cli("db", "upgrade", env=child_env(tmp_path, database_url), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"at revision {head_revision()}" in result.stdout


def test_bad_setting_is_a_clear_error_naming_the_variable(tmp_path: Path):
    env = child_env(tmp_path, "sqlite+aiosqlite:///x.db")
    env["LEADLINE_LOG_FORMAT"] = "xml"
    result = run_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "LEADLINE_LOG_FORMAT" in result.stderr


def test_adapters_lists_builtins_and_plugins(tmp_path: Path):
    result = run_cli("adapters", env=child_env(tmp_path, "sqlite://"), cwd=tmp_path)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["webchat", "builtin"] for line in lines)
    assert any(line.split()[:2] == ["signed", "plugin"] for line in lines)


def test_run_on_a_taken_port_exits_with_a_clear_error(tmp_path: Path, unused_tcp_port: int):
    (tmp_path / "brokers.toml").write_text(DEMO_TOML)
    env = child_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", unused_tcp_port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", unused_tcp_port))
        taken.listen()
        result = run_cli("run", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{unused_tcp_port}" in result.stderr


def test_run_with_no_valid_broker_exits_with_a_clear_error(tmp_path: Path):
    (tmp_path / "brokers.toml").write_text('[brokers.x]\nname = "X"\ntimezone = "Nowhere/Land"\n')
    result = run_cli("run", env=child_env(tmp_path, "sqlite+aiosqlite:///x.db"), cwd=tmp_path)
    assert result.returncode == 2
    assert "broker 'x', key 'timezone'" in result.stderr
    assert "no valid broker" in result.stderr


# --- the running process ---------------------------------------------------------


@dataclass
class Running:
    process: subprocess.Popen[str]
    base: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


STARTUP_SECONDS = 60.0  # importing aiogram alone takes seconds on a busy 2-core machine


async def start(
    tmp_path: Path,
    database_url: str,
    port: int,
    name: str = "run",
    extra_env: dict[str, str] | None = None,
) -> Running:
    """`leadline run` as a child process, returned once /healthz answers."""
    env = child_env(tmp_path, database_url, port)
    env.update(extra_env or {})
    log_path = tmp_path / f"{name}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(  # noqa: S603
            [LEADLINE, "run"],
            env=env,
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    running = Running(process, f"http://127.0.0.1:{port}", log_path)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_SECONDS
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"leadline exited early:\n{running.log()}")
            try:
                async with http.get(running.base + "/healthz") as response:
                    if response.status == 200:
                        return running
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError(f"leadline did not become healthy:\n{running.log()}")


@dataclass
class Launcher:
    """Starts `leadline run` children for one test and kills what is left at the end."""

    tmp_path: Path
    database_url: str
    extra_env: dict[str, str] | None = None
    started: list[Running] = field(default_factory=list)

    async def __call__(self, port: int, name: str = "run") -> Running:
        running = await start(self.tmp_path, self.database_url, port, name, self.extra_env)
        self.started.append(running)
        return running

    def kill_all(self) -> None:
        for running in self.started:
            if running.process.poll() is None:
                running.process.kill()
                running.process.wait()


@pytest.fixture
async def launch(tmp_path: Path, database_url: str) -> AsyncIterator:
    (tmp_path / "brokers.toml").write_text(DEMO_TOML)
    launcher = Launcher(tmp_path, database_url)
    yield launcher
    launcher.kill_all()


async def test_run_serves_health_and_web_chat_then_stops_cleanly_on_sigterm(
    launch, unused_tcp_port: int
):
    running = await launch(unused_tcp_port)
    async with aiohttp.ClientSession() as http:
        async with http.get(running.base + "/healthz") as response:
            health = await response.json()
        assert health["brokers"]["demo"]["providers"]["webchat"]["state"] == "up"
        async with http.ws_connect(running.base + "/webchat/demo/ws?visitor=proc-visitor-01") as ws:
            assert (await ws.receive_json())["type"] == "history"
            await ws.send_json({"type": "message", "id": "proc-msg-0001", "text": "hola"})
            assert (await ws.receive_json(timeout=10)) == {"type": "ack", "id": "proc-msg-0001"}
            reply = await ws.receive_json(timeout=10)
            assert reply["text"] == "Hi there! Thanks for writing to Demo Realty."
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=20) == 0
    log = running.log()
    assert f"broker demo: open {running.base}/webchat/demo" in log
    for secret in TEST_ENV.values():
        assert secret not in log


async def test_sigterm_with_an_open_web_chat_socket_still_exits_promptly(
    launch, unused_tcp_port: int
):
    running = await launch(unused_tcp_port)
    url = running.base + "/webchat/demo/ws?visitor=proc-visitor-02"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        assert (await ws.receive_json())["type"] == "history"
        started = asyncio.get_running_loop().time()
        running.process.send_signal(signal.SIGTERM)
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert running.process.wait(timeout=10) == 0
    assert asyncio.get_running_loop().time() - started < 10


async def test_process_resumes_replies_a_crash_left_unhandled(
    launch, unused_tcp_port: int, engine: AsyncEngine
):
    """Messages stored and acknowledged but not yet answered when the process died are
    answered at the next start, once."""
    running = await launch(unused_tcp_port)
    running.process.kill()  # dies at once: whatever it stored next stays unanswered
    running.process.wait()
    # What a delivery committed just before the death leaves behind: stored, not handled.
    async with engine.begin() as conn:
        for i in range(3):
            await _raw_inbound(conn, f"unanswered-{i}", f"user-{i}")
    await launch(unused_tcp_port, "second")
    await _until(lambda: _out_statuses(engine), lambda s: s == ["sent"] * 3)
    handled = await rows(engine, "SELECT handled_at FROM chat_messages WHERE direction = 'in'")
    assert all(r["handled_at"] is not None for r in handled)


async def test_sigkill_under_load_loses_no_acknowledged_message_and_answers_each_once(
    launch, unused_tcp_port: int, engine: AsyncEngine
):
    """Deliveries race a SIGKILL. The 'provider' then redelivers everything it did not see
    acknowledged (and, to be harsh, everything else too). Every message ends stored once,
    every lead welcomed once, every reply sent."""
    running = await launch(unused_tcp_port)
    secret = TEST_ENV["DEMO_SIGNED_SECRET"]
    payloads = [
        json.dumps({"messages": [{"id": f"k{i}", "from": f"lead-{i % 40}", "text": f"#{i}"}]})
        for i in range(400)
    ]
    acknowledged: set[int] = set()

    async def deliver(http: aiohttp.ClientSession, base: str, i: int) -> None:
        body = payloads[i].encode()
        headers = {"X-Signature": sign(secret, body)}
        try:
            async with http.post(f"{base}/webhooks/demo/signed", data=body, headers=headers) as r:
                if r.status == 200:
                    acknowledged.add(i)
        except aiohttp.ClientError:
            pass

    async with aiohttp.ClientSession() as http:

        async def kill_midway() -> None:
            while len(acknowledged) < 100:
                await asyncio.sleep(0.005)
            running.process.send_signal(signal.SIGKILL)

        limiter = asyncio.Semaphore(16)

        async def bounded(i: int) -> None:
            async with limiter:
                await deliver(http, running.base, i)

        await asyncio.gather(kill_midway(), *(bounded(i) for i in range(400)))
        running.process.wait()
        assert 100 <= len(acknowledged) < 400, "the kill should land in the middle of the load"
        stored = {r["channel_message_id"] for r in await _inbound(engine)}
        assert {f"k{i}" for i in acknowledged} <= stored  # nothing acknowledged was lost

        second = await launch(unused_tcp_port, "second")
        await asyncio.gather(*(deliver(http, second.base, i) for i in range(400)))
    inbound = await _inbound(engine)
    assert sorted(r["channel_message_id"] for r in inbound) == sorted(f"k{i}" for i in range(400))
    await _until(lambda: _out_statuses(engine), lambda s: s == ["sent"] * 40)
    welcomed = await rows(
        engine, "SELECT channel_user_id FROM chat_messages WHERE direction = 'out'"
    )
    assert sorted(r["channel_user_id"] for r in welcomed) == sorted(f"lead-{i}" for i in range(40))


async def _inbound(engine: AsyncEngine) -> list[dict]:
    return await rows(engine, "SELECT * FROM chat_messages WHERE direction = 'in'")


async def _out_statuses(engine: AsyncEngine) -> list[str]:
    found = await rows(engine, "SELECT status FROM chat_messages WHERE direction = 'out'")
    return [r["status"] for r in found]


async def _until(read, holds, timeout: float = 20.0) -> None:
    value = None
    for _ in range(int(timeout / 0.1)):
        value = await read()
        if holds(value):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never held; last value: {value!r}")


async def _raw_inbound(conn, message_id: str, user: str) -> None:
    from sqlalchemy import text

    lead = await conn.execute(
        text("INSERT INTO leads (broker_id, tags) VALUES ('demo', '[]') RETURNING id")
    )
    lead_id = lead.scalar_one()
    await conn.execute(
        text(
            "INSERT INTO lead_channels (lead_id, broker_id, provider, channel_user_id) "
            "VALUES (:lead, 'demo', 'signed', :user)"
        ),
        {"lead": lead_id, "user": user},
    )
    await conn.execute(
        text(
            "INSERT INTO chat_messages (lead_id, broker_id, provider, channel_user_id, "
            "channel_message_id, message_text, direction, status) "
            "VALUES (:lead, 'demo', 'signed', :user, :mid, 'hi', 'in', 'delivered')"
        ),
        {"lead": lead_id, "user": user, "mid": message_id},
    )
