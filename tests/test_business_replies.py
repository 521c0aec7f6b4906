"""Replies that respect the business calendar, end to end on the real app with a clock the
test moves: closed replies once per closed period, open replies at the opening (through
a restart), the human-answered rule, keywords, the responder hook, the scheduler.

The broker is in Buenos Aires (UTC-3, no daylight saving): Saturday 2026-12-05 22:00
there is 2026-12-06 01:00 UTC, and it next opens Monday 2026-12-07 09:00 (12:00 UTC).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger

from leadline.runtime.hours import hours_report
from leadline.runtime.scheduler import OpeningScheduler, weekly_triggers
from leadline.runtime.sending import Outgoing
from tests.conftest import TEST_ENV, AppFactory, AppHarness, wait_for
from tests.fakes import responders
from tests.helpers import rows, signed_delivery

SATURDAY_NIGHT = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)  # Sat 22:00 in Buenos Aires
MONDAY_OPENING = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # Mon 09:00 there
MONDAY_MORNING = datetime(2026, 12, 7, 13, 0, tzinfo=UTC)  # Mon 10:00 there
SECRET = TEST_ENV["DEMO_SIGNED_SECRET"]


class Clock:
    """The service's time, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def toml(extra: str = "") -> str:
    return f"""
[brokers.demo]
name = "Demo Realty"
timezone = "America/Argentina/Buenos_Aires"
{extra}
[brokers.demo.providers.signed]
secret = "${{DEMO_SIGNED_SECRET}}"

[brokers.demo.business_hours]
mon = ["09:00-13:00", "14:00-18:00"]
tue = ["09:00-18:00"]
wed = ["09:00-18:00"]
thu = ["09:00-18:00"]
fri = ["09:00-18:00", "20:00-02:00"]
next_open_format = "%A %H:%M"

[brokers.demo.templates]
welcome = "Hi {{name}}! Thanks for writing to {{broker}}."
closed_reply = "We are closed now; we open {{next_open}}."
open_reply = "Good morning {{name}}, we are open now."

[[brokers.demo.keywords]]
match = ["precio", "price"]
reply = "Prices start at 100,000."
"""


async def start(make_app: AppFactory, clock: Clock, extra: str = "") -> AppHarness:
    return await make_app(toml(extra), clock=clock)


async def say(app: AppHarness, message_id: str, text: str, user: str = "u1") -> None:
    message = {"id": message_id, "from": user, "text": text, "name": "Ana"}
    body, headers = signed_delivery(SECRET, {"messages": [message]})
    response = await app.client.post("/webhooks/demo/signed", data=body, headers=headers)
    assert response.status == 200


async def out_rows(app: AppHarness) -> list[dict[str, Any]]:
    sql = "SELECT * FROM chat_messages WHERE direction = 'out' ORDER BY id"
    found = await rows(app.service.engine, sql)
    for row in found:
        metadata = row["provider_metadata"]
        row["meta"] = json.loads(metadata) if isinstance(metadata, str) else metadata
    return found


async def settled(app: AppHarness) -> list[dict[str, Any]]:
    """The outbound rows once every inbound message is handled and nothing due is left."""

    async def quiet() -> bool:
        unhandled = await rows(
            app.service.engine,
            "SELECT id FROM chat_messages WHERE direction = 'in' AND handled_at IS NULL",
        )
        due = [
            r
            for r in await out_rows(app)
            if r["status"] == "pending" and r["meta"].get("rule") != "open_reply"
        ]
        return not unhandled and not due

    await wait_for(quiet)
    return await out_rows(app)


def rules(found: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    return [(r["meta"].get("rule"), r["status"]) for r in found]


def sent_texts(app: AppHarness) -> list[str | None]:
    return [m.text for m in app.adapter("demo", "signed").sent]


async def open_at(app: AppHarness, clock: Clock, when: datetime) -> None:
    clock.now = when
    app.service.dispatcher.wake()  # what the scheduler does at the opening


# --- closed and open replies ------------------------------------------------------------------


async def test_a_closed_period_gets_one_closed_reply_and_one_open_reply_at_the_opening(
    make_app: AppFactory,
) -> None:
    clock = Clock(SATURDAY_NIGHT)
    app = await start(make_app, clock)
    await say(app, "m1", "hola")  # a new lead: the welcome is its auto-reply
    await say(app, "m2", "is anyone there?")
    await say(app, "m3", "hello??")
    found = await settled(app)
    assert rules(found) == [
        ("welcome", "sent"),
        ("open_reply", "pending"),
        ("closed_reply", "sent"),
    ]
    assert found[1]["send_after"] is not None
    assert sent_texts(app) == [
        "Hi Ana! Thanks for writing to Demo Realty.",
        "We are closed now; we open Monday 09:00.",
    ]
    clock.now = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)  # Sunday noon: still closed
    app.service.dispatcher.wake()
    await asyncio.sleep(0.3)
    assert len(sent_texts(app)) == 2
    await open_at(app, clock, MONDAY_OPENING + timedelta(seconds=5))

    async def opened() -> bool:
        return len(sent_texts(app)) == 3

    await wait_for(opened)
    assert sent_texts(app)[-1] == "Good morning Ana, we are open now."


async def test_the_next_closed_period_gets_its_own_closed_reply(make_app: AppFactory) -> None:
    clock = Clock(SATURDAY_NIGHT)
    app = await start(make_app, clock)
    await say(app, "m1", "hola")
    await say(app, "m2", "anyone?")
    await settled(app)
    clock.now = datetime(2026, 12, 8, 0, 0, tzinfo=UTC)  # Monday 21:00: closed again
    await say(app, "m3", "and now?")
    found = await settled(app)
    assert [r for r, _ in rules(found)].count("closed_reply") == 2
    assert [r for r, _ in rules(found)].count("open_reply") == 2  # one per opening


async def test_a_human_answer_stops_closed_replies_and_withdraws_the_open_reply(
    make_app: AppFactory,
) -> None:
    clock = Clock(SATURDAY_NIGHT)
    app = await start(make_app, clock)
    await say(app, "m1", "hola")
    found = await settled(app)
    lead = found[0]["lead_id"]
    await app.service.queue(Outgoing("demo", lead, text="Agent Sam here, how can I help?"))
    await say(app, "m2", "I want to see the flat")
    found = await settled(app)
    assert rules(found) == [
        ("welcome", "sent"),
        ("open_reply", "pending"),
        (None, "sent"),  # the human's answer
    ]
    await open_at(app, clock, MONDAY_OPENING + timedelta(seconds=5))

    async def withdrawn() -> bool:
        return all(r["meta"].get("rule") != "open_reply" for r in await out_rows(app))

    await wait_for(withdrawn)
    assert "Good morning Ana, we are open now." not in sent_texts(app)


async def test_an_open_reply_survives_a_restart_before_the_opening(make_app: AppFactory) -> None:
    night = Clock(SATURDAY_NIGHT)
    first = await start(make_app, night)
    await say(first, "m1", "hola")
    await settled(first)
    await first.client.close()  # the process stops over the weekend
    morning = Clock(MONDAY_OPENING + timedelta(minutes=1))
    second = await start(make_app, morning)

    async def sent() -> bool:
        return rules(await out_rows(second)) == [("welcome", "sent"), ("open_reply", "sent")]

    await wait_for(sent)
    assert sent_texts(second) == ["Good morning Ana, we are open now."]


async def test_while_open_there_is_no_closed_or_open_reply(make_app: AppFactory) -> None:
    app = await start(make_app, Clock(MONDAY_MORNING))
    await say(app, "m1", "hola")
    await say(app, "m2", "second")
    assert rules(await settled(app)) == [("welcome", "sent")]


# --- keywords -------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", [MONDAY_MORNING, SATURDAY_NIGHT], ids=["open", "closed"])
async def test_keywords_answer_at_any_hour_ignoring_case_and_accents(
    make_app: AppFactory, when: datetime
) -> None:
    app = await start(make_app, Clock(when))
    await say(app, "m1", "¿Cuál es el PRÉCIO?")  # first message: the keyword beats the welcome
    await say(app, "m2", "preciosa casa")  # a longer word is no match
    found = await settled(app)
    assert sent_texts(app)[0] == "Prices start at 100,000."
    immediate = [r for r, _ in rules(found) if r != "open_reply"]
    assert immediate[0] == "keyword"
    assert "keyword" not in immediate[1:]


# --- the responder -----------------------------------------------------------------------


async def test_a_responders_answer_replaces_the_rules_and_is_marked_ai(
    make_app: AppFactory,
) -> None:
    app = await start(make_app, Clock(MONDAY_MORNING), 'responder = "tests.fakes.responders:shout"')
    await say(app, "m1", "hola")
    found = await settled(app)
    assert rules(found) == [("responder", "sent")]
    assert found[0]["ai_response_used"] in (1, True)
    assert sent_texts(app) == ["AI for Ana: HOLA"]


async def test_a_plain_function_responder_runs_in_a_thread(make_app: AppFactory) -> None:
    extra = 'responder = "tests.fakes.responders:threaded"'
    app = await start(make_app, Clock(MONDAY_MORNING), extra)
    await say(app, "m1", "hola")
    await settled(app)
    assert sent_texts(app) == ["answered from a thread"]


@pytest.mark.parametrize(
    ("name", "timeout", "logged"),
    [
        ("broken", 10, "responder failed on message"),
        ("slow", 0.3, "responder gave no answer"),
        ("silent", 10, ""),
    ],
)
async def test_a_failing_slow_or_silent_responder_leaves_the_rules_to_answer(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, name: str, timeout: float, logged: str
) -> None:
    caplog.set_level(logging.WARNING)
    extra = f'responder = "tests.fakes.responders:{name}"\nresponder_timeout = {timeout}'
    app = await start(make_app, Clock(MONDAY_MORNING), extra)
    before = len(responders.CALLS)
    await say(app, "m1", "hola")
    assert rules(await settled(app)) == [("welcome", "sent")]
    assert len(responders.CALLS) == before + 1
    assert logged in caplog.text
    stored = await rows(app.service.engine, "SELECT * FROM chat_messages WHERE direction = 'in'")
    assert [r["message_text"] for r in stored] == ["hola"]  # never lost


def test_check_refuses_a_responder_that_cannot_be_found(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from leadline.runtime.cli import main

    brokers = tmp_path / "brokers.toml"
    brokers.write_text(toml('responder = "tests.fakes.responders:nowhere"'))
    for key, value in TEST_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LEADLINE_PLUGINS_DIR", str(tmp_path.parent))
    assert main(["--brokers", str(brokers), "check"]) == 1
    out = capsys.readouterr().out
    assert "broker 'demo', key 'responder'" in out and "nowhere" in out


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("closed_reply = \"We are closed now; we open {{next_open}}.\"",
          "closed_reply = \"Closed until {{opening}}\""), "templates.closed_reply"),
        (("reply = \"Prices start at 100,000.\"", "reply = \"{{cost}}\""), "keywords.0.reply"),
        (("tue = [\"09:00-18:00\"]", "tue = [\"09:00-25:00\"]"), "business_hours.tue.0"),
    ],
    ids=["template-variable", "keyword-variable", "interval"],
)  # fmt: skip
def test_configuration_errors_name_the_key(change: tuple[str, str], key: str) -> None:
    import tomllib

    from leadline.adapters.registry import discover
    from leadline.config.loader import load_brokers

    text = toml().replace("{{", "{").replace("}}", "}")
    old, new = (part.replace("{{", "{").replace("}}", "}") for part in change)
    assert old in text
    models = discover(use_entry_points=False).config_models()
    loaded = load_brokers(tomllib.loads(text.replace(old, new)), models, TEST_ENV)
    assert [(i.broker, i.key) for i in loaded.issues] == [("demo", key)]


# --- the scheduler and `leadline hours` ---------------------------------------------------


async def test_the_scheduler_wakes_the_dispatcher_at_each_opening(make_app: AppFactory) -> None:
    clock = Clock(SATURDAY_NIGHT)
    app = await start(make_app, clock)
    broker = app.brokers.brokers["demo"]
    triggers = weekly_triggers(broker)
    assert len(triggers) == 7  # one per span of the week
    await wait_for(lambda: _true(bool(app.service.scheduler.jobs())), timeout=10)
    jobs = dict(app.service.scheduler.jobs())
    assert jobs["demo:next"] == MONDAY_OPENING
    woken: list[bool] = []
    scheduler = OpeningScheduler({"demo": broker}, lambda: woken.append(True), clock)
    scheduler.start()
    clock.now = MONDAY_OPENING
    await scheduler._opened("demo")  # as APScheduler calls it at the opening
    assert woken == [True]
    # The next dated opening is Monday 14:00 (after the lunch break), Buenos Aires time.
    assert dict(scheduler.jobs())["demo:next"] == datetime(2026, 12, 7, 17, 0, tzinfo=UTC)
    scheduler.stop()


async def test_of_two_services_on_one_database_one_runs_the_scheduler_until_it_stops(
    make_app: AppFactory,
) -> None:
    clock = Clock(SATURDAY_NIGHT)
    first = await make_app(toml(""), clock=clock, cluster_check_seconds=0.1)
    await wait_for(lambda: _true(bool(first.service.scheduler.jobs())), timeout=10)
    second = await make_app(toml(""), clock=clock, cluster_check_seconds=0.1)
    await asyncio.sleep(0.5)  # the second tries to take over several times meanwhile
    assert second.service.scheduler.jobs() == []
    await first.service.stop()
    await wait_for(lambda: _true(bool(second.service.scheduler.jobs())), timeout=10)
    assert dict(second.service.scheduler.jobs())["demo:next"] == MONDAY_OPENING


def test_weekly_triggers_keep_local_time_across_daylight_saving() -> None:
    import tomllib

    from leadline.adapters.registry import discover
    from leadline.config.loader import load_brokers

    text = '[brokers.m]\nname = "M"\ntimezone = "Europe/Madrid"\n[brokers.m.business_hours]\n'
    text += 'mon = ["09:00-18:00"]\n'
    loaded = load_brokers(tomllib.loads(text), discover(use_entry_points=False).config_models(), {})
    [trigger] = weekly_triggers(loaded.brokers["m"])
    assert isinstance(trigger, CronTrigger)
    before = trigger.get_next_fire_time(None, datetime(2026, 3, 20, tzinfo=UTC))
    after = trigger.get_next_fire_time(None, datetime(2026, 3, 27, tzinfo=UTC))
    assert before is not None and after is not None
    assert (before.astimezone(UTC).hour, after.astimezone(UTC).hour) == (8, 7)  # CET, CEST
    assert before.hour == after.hour == 9  # 09:00 on the wall clock, both times


async def test_hours_prints_the_week_and_the_next_opening(make_app: AppFactory) -> None:
    app = await start(make_app, Clock(SATURDAY_NIGHT))
    lines = hours_report(app.brokers.brokers["demo"], SATURDAY_NIGHT)
    assert lines[0] == "Demo Realty (demo), times in America/Argentina/Buenos_Aires"
    assert lines[1] == "Mon 2026-11-30  09:00-13:00, 14:00-18:00"
    assert lines[5] == "Fri 2026-12-04  09:00-18:00, 20:00-24:00"
    assert lines[6] == "Sat 2026-12-05  00:00-02:00  <- today"
    assert lines[7] == "Sun 2026-12-06  closed"
    assert lines[8] == "closed now; next opening Mon 2026-12-07 09:00 (in 35 h 0 min)"


# --- through a real adapter ------------------------------------------------------------------


async def test_closed_and_open_replies_reach_whatsapp_through_pywa(make_app: AppFactory) -> None:
    import time

    from leadline.adapters import meta
    from tests.fakes.graph_api import FakeGraph
    from tests.fakes.serving import running_fake
    from tests.helpers import fixture_json

    fake = FakeGraph()
    number = fake.add_number("106540352242922", "EAAGdemoTokenNOTREAL123")
    async with running_fake(fake) as base:
        whatsapp = f"""
[brokers.demo.providers.whatsapp]
phone_number_id = "106540352242922"
access_token = "EAAGdemoTokenNOTREAL123"
app_secret = "app-secret-NOT-REAL"
verify_token = "verify"
api_base = "{base}"
"""
        clock = Clock(SATURDAY_NIGHT)
        app = await make_app(toml() + whatsapp, clock=clock)
        payload = fixture_json("whatsapp_multi_messages.json")  # three messages, two writers
        for change in payload["entry"][0]["changes"]:
            for message in change["value"].get("messages", []):
                message["timestamp"] = str(int(time.time()))  # within WhatsApp's window
        body = json.dumps(payload).encode()
        headers = {meta.SIGNATURE_HEADER: meta.sign("app-secret-NOT-REAL", body)}
        response = await app.client.post("/webhooks/demo/whatsapp", data=body, headers=headers)
        assert response.status == 200

        async def night_replies() -> bool:
            return len(number.sent) == 3

        await wait_for(night_replies)  # Sheena: welcome, then closed reply; the other: welcome
        texts = sorted((m.to, m.text) for m in number.sent)
        assert ("+16505551234", "We are closed now; we open Monday 09:00.") in texts
        await open_at(app, clock, MONDAY_OPENING + timedelta(seconds=5))

        async def morning() -> bool:
            return len(number.sent) == 5  # one open reply to each writer

        await wait_for(morning)
        assert {m.to for m in number.sent[3:]} == {"+16505551234", "+16505550002"}
        assert all(m.text and m.text.startswith("Good morning") for m in number.sent[3:])


def test_hours_command_reads_an_ical_file_beside_brokers_toml(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from leadline.adapters.registry import discover
    from leadline.config.loader import load_brokers_file
    from leadline.runtime.cli import main

    (tmp_path / "closed.ics").write_text(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n"
        "BEGIN:VEVENT\r\nUID:xmas@test\r\nDTSTAMP:20260101T000000Z\r\n"
        "DTSTART;VALUE=DATE:20261225\r\nRRULE:FREQ=YEARLY\r\nSUMMARY:Christmas\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    brokers = tmp_path / "brokers.toml"
    brokers.write_text(
        '[brokers.demo]\nname = "Demo Realty"\ntimezone = "America/Argentina/Buenos_Aires"\n'
        '[brokers.demo.business_hours]\nalways_open = true\nical = "closed.ics"\n'
    )
    monkeypatch.chdir(tmp_path.parent)  # relative to brokers.toml, not to the working directory
    loaded = load_brokers_file(brokers, discover(use_entry_points=False).config_models(), {})
    calendar = loaded.brokers["demo"].calendar
    noon = {day: datetime(2026, 12, day, 15, 0, tzinfo=UTC) for day in (24, 25, 26)}
    assert [calendar.is_open(t) for t in noon.values()] == [True, False, True]
    assert not calendar.is_open(datetime(2027, 12, 25, 15, 0, tzinfo=UTC))  # every year
    assert main(["--brokers", str(brokers), "hours", "demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Demo Realty (demo), times in America/Argentina/Buenos_Aires"
    assert len(lines) == 9 and lines[-1].startswith(("open now", "closed now"))


async def _true(value: bool) -> bool:
    return value
