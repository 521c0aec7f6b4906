"""A small Graph API client for one Page or Instagram account, on one pooled aiohttp session.

No maintained Python library covers the Messenger Platform (STACK.md): these are
plain JSON calls. The token rides in the Authorization header, which Graph accepts
on every endpoint, so no URL ever holds it, and no error text quotes a URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from leadline.adapters.base import AdapterError

CALL_TIMEOUT = 30.0  # seconds per call; the outbox lease (90 s) is longer


@dataclass(frozen=True)
class GraphError(Exception):
    """An error answer in Graph's envelope `{"error": {message, code, error_subcode}}`."""

    status: int
    code: int | None
    subcode: int | None
    message: str

    def __str__(self) -> str:
        return self.message


class GraphClient:
    def __init__(self, base_url: str, version: str, token: str) -> None:
        self._base = f"{base_url.rstrip('/')}/v{version}"
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return await self._call("GET", path, params=params)

    async def post(
        self,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        return await self._call("POST", path, json=body, params=params)

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if self._session is None:
            raise AdapterError("the Graph API client is not started")
        url = f"{self._base}/{path.lstrip('/')}"
        async with self._session.request(method, url, **kwargs) as response:
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = None
            if response.status >= 400 or not isinstance(answer, dict):
                raise _error(response.status, answer)
            return answer


def _error(status: int, answer: Any) -> GraphError:
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return GraphError(status, None, None, f"HTTP {status} without a Graph error")
    code, subcode = error.get("code"), error.get("error_subcode")
    message = error.get("message")
    return GraphError(
        status,
        code if isinstance(code, int) else None,
        subcode if isinstance(subcode, int) else None,
        message if isinstance(message, str) and message else f"HTTP {status}",
    )
