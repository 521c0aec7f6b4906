"""Secrets never reach a log line, in text or JSON, in messages or tracebacks."""

from __future__ import annotations

import io
import json
import logging

import pytest

from leadline.runtime.logs import JsonFormatter, Redactor, configure_logging

SECRET = "123456:AAAA-very-secret-token"


@pytest.fixture
def capture() -> tuple[logging.Logger, io.StringIO, Redactor]:
    stream = io.StringIO()
    redactor = Redactor([SECRET])
    handler = logging.StreamHandler(stream)
    handler.addFilter(redactor)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream, redactor


def test_secret_in_a_message_argument_is_masked(capture):
    logger, stream, _ = capture
    logger.info("calling https://api.example/bot%s/getMe", SECRET)
    assert SECRET not in stream.getvalue()
    assert "bot***/getMe" in stream.getvalue()


def test_secret_in_a_traceback_is_masked(capture):
    logger, stream, _ = capture
    try:
        raise RuntimeError(f"bad token {SECRET}")
    except RuntimeError:
        logger.exception("failed")
    assert SECRET not in stream.getvalue()
    assert "bad token ***" in stream.getvalue()


def test_secrets_learned_later_are_masked_too(capture):
    logger, stream, redactor = capture
    redactor.update(["late-secret-value"])
    logger.warning("value: late-secret-value")
    assert "late-secret-value" not in stream.getvalue()


def test_json_lines_carry_level_logger_and_masked_message():
    record = logging.LogRecord(
        "leadline.x", logging.ERROR, __file__, 1, "token %s", (SECRET,), None
    )
    Redactor([SECRET]).filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "ERROR" and entry["logger"] == "leadline.x"
    assert entry["message"] == "token ***"


def test_configure_logging_installs_one_redacting_handler():
    redactor = Redactor([SECRET])
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    configure_logging("INFO", "json", redactor)
    try:
        assert len(root.handlers) == 1
        assert redactor in root.handlers[0].filters
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
