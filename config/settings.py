"""Process settings: the environment (`LEADLINE_*`) and an optional `.env` file."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import AnyHttpUrl, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADLINE_", env_file=".env", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///leadline.db"
    brokers_file: Path = Path("brokers.toml")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: AnyHttpUrl | None = None
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    # A folder of drop-in adapter modules, besides `adapters/` and entry points.
    plugins_dir: Path | None = None
    # Largest request body a webhook may send.
    max_body_bytes: int = 1024 * 1024
    # How long a request body may take to arrive once asked for: a slower (or stalled)
    # one is answered 408 and its connection closed, so it cannot hold a handler.
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Delivery: how long a sender holds a row it took (longer than any provider
    # call may last); how often and how long a failing send is retried.
    send_lease_seconds: float = Field(default=90.0, ge=1.0)
    send_max_attempts: int = Field(default=12, ge=1)
    send_max_age_hours: float = Field(default=24.0, gt=0)
    # Several processes on one database: how often a standby process tries to take
    # over a poller, and its owner checks it still owns it.
    cluster_check_seconds: float = Field(default=5.0, gt=0, le=300)

    @field_validator("plugins_dir", mode="before")
    @classmethod
    def _no_folder_when_empty(cls, value: object) -> object:
        # `LEADLINE_PLUGINS_DIR=` means no plugins folder, not the working directory.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level
