"""Process settings: `config/settings.py`, from `LEADLINE_*` variables and a `.env` file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from leadline.config.settings import LogFormat, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real `LEADLINE_*` variable or `.env` file may reach these tests."""
    for name in list(os.environ):
        if name.upper().startswith("LEADLINE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_without_environment_or_env_file() -> None:
    settings = Settings()

    assert settings.database_url == "sqlite+aiosqlite:///leadline.db"
    assert settings.brokers_file == Path("brokers.toml")
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.log_format is LogFormat.TEXT
    assert settings.log_format == "text"
    assert settings.log_level == "INFO"
    assert settings.public_url is None
    assert settings.plugins_dir is None
    assert settings.max_body_bytes == 1024 * 1024


def test_leadline_environment_variables_override_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEADLINE_DATABASE_URL", "postgresql+asyncpg://u@db/leadline")
    monkeypatch.setenv("LEADLINE_BROKERS_FILE", "/etc/leadline/brokers.toml")
    monkeypatch.setenv("LEADLINE_HOST", "192.0.2.10")
    monkeypatch.setenv("LEADLINE_PORT", "9090")
    monkeypatch.setenv("LEADLINE_PUBLIC_URL", "https://chat.example.com")
    monkeypatch.setenv("LEADLINE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("LEADLINE_LOG_FORMAT", "json")
    monkeypatch.setenv("LEADLINE_PLUGINS_DIR", "/opt/plugins")
    monkeypatch.setenv("LEADLINE_MAX_BODY_BYTES", "2048")

    settings = Settings()

    assert settings.database_url == "postgresql+asyncpg://u@db/leadline"
    assert settings.brokers_file == Path("/etc/leadline/brokers.toml")
    assert settings.host == "192.0.2.10"
    assert settings.port == 9090
    assert str(settings.public_url) == "https://chat.example.com/"
    assert settings.log_level == "DEBUG"
    assert settings.log_format is LogFormat.JSON
    assert settings.plugins_dir == Path("/opt/plugins")
    assert settings.max_body_bytes == 2048


def test_variables_without_the_leadline_prefix_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORT", "1234")
    monkeypatch.setenv("HOST", "10.0.0.1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")

    settings = Settings()

    assert settings.port == 8080
    assert settings.host == "127.0.0.1"
    assert settings.database_url == "sqlite+aiosqlite:///leadline.db"


def test_env_file_in_working_directory_is_read(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text(
        "LEADLINE_PORT=7070\nLEADLINE_LOG_FORMAT=json\nLEADLINE_HOST=192.0.2.5\n",
        encoding="utf-8",
    )

    settings = Settings()

    assert settings.port == 7070
    assert settings.log_format is LogFormat.JSON
    assert settings.host == "192.0.2.5"


def test_environment_variable_beats_env_file(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_environment / ".env").write_text("LEADLINE_PORT=7070\n", encoding="utf-8")
    monkeypatch.setenv("LEADLINE_PORT", "6060")

    assert Settings().port == 6060


def test_env_file_with_unrelated_keys_is_accepted(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text(
        "OTHER_APP_SECRET=x\nLEADLINE_NOT_A_SETTING=y\nLEADLINE_PORT=7071\n", encoding="utf-8"
    )

    settings = Settings()

    assert settings.port == 7071
    assert not hasattr(settings, "not_a_setting")


def test_env_file_outside_working_directory_is_not_read(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_environment / ".env").write_text("LEADLINE_PORT=7070\n", encoding="utf-8")
    elsewhere = clean_environment / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert Settings().port == 8080


def test_invalid_log_format_raises_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADLINE_LOG_FORMAT", "xml")

    with pytest.raises(ValidationError) as caught:
        Settings()

    assert [error["loc"] for error in caught.value.errors()] == [("log_format",)]


def test_invalid_log_format_in_env_file_raises_validation_error(
    clean_environment: Path,
) -> None:
    (clean_environment / ".env").write_text("LEADLINE_LOG_FORMAT=yaml\n", encoding="utf-8")

    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("port", ["-1", "65536", "eighty"])
def test_invalid_port_raises_validation_error(monkeypatch: pytest.MonkeyPatch, port: str) -> None:
    monkeypatch.setenv("LEADLINE_PORT", port)

    with pytest.raises(ValidationError):
        Settings()


def test_invalid_public_url_raises_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADLINE_PUBLIC_URL", "not a url")

    with pytest.raises(ValidationError):
        Settings()


def test_an_empty_plugins_dir_means_no_plugins_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADLINE_PLUGINS_DIR", "")
    assert Settings(_env_file=None).plugins_dir is None  # type: ignore[call-arg]
