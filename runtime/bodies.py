"""Request bodies that arrive slowly or with broken framing: bounded, answered, not logged as ours.

A body read is bounded in time (`read_body`, 408 past `LEADLINE_BODY_TIMEOUT_SECONDS`). A
chunked body whose framing breaks after the headers fails the read at once with 400:
aiohttp's C parser queues that parse error as the next request instead of failing the body
being read (`fail_bodies_on_broken_framing`), so without this the handler would wait for
the client to hang up. Malformed requests are the client's fault: aiohttp's server log gets
one INFO line for them, not an ERROR with a traceback (`ClientErrorsQuiet`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request, seconds: float) -> bytes:
    """The whole body within `seconds` of asking, else an HTTP error (408, 400; 413 past
    `client_max_size`) for the route's error handling to answer."""
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the request body did not arrive within {seconds:g} s"
        ) from None
    except (web.RequestPayloadError, HttpProcessingError):  # the latter: pure-Python parser
        raise web.HTTPBadRequest(text="the request body could not be read (bad framing)") from None
    except ConnectionError:
        # The client hung up mid-body: no one reads the answer, but it must not be a 500.
        raise web.HTTPBadRequest(text="the client closed the connection mid-body") from None


@web.middleware
async def close_after_unfinished_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers given before the body was all there (408, 413, a refusal that did not
    read it) close the connection: what is left of the body is no next request."""
    response = await handler(request)
    body = request.content
    if not response.prepared and (not body.is_eof() or body.exception() is not None):
        response.force_close()
    return response


class ClientErrorsQuiet(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger (`handler_args={"logger": ...}`): a request it could not
    parse gets one INFO line; any other exception keeps its ERROR and traceback."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        super().__init__(logger or logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError):
            first_line = (error.message.splitlines() or [""])[0][:200]
            text = str(msg) % args if args else str(msg)
            self.info("%s: malformed request refused (%s: %s)", text, error.code, first_line)
            return
        super().exception(msg, *args, **kwargs)


_installed = False


def fail_bodies_on_broken_framing() -> None:
    """Make a framing error fail the body being read (aiohttp 3.14's C parser does not).

    When the parser fails while the current request's body is still arriving, that body
    gets the error (the handler's read raises RequestPayloadError) and the connection
    closes after the answer, so the queued parse error is never answered as a request of
    its own. Installed once per process; a no-op for aiohttp versions without the hooks."""
    global _installed
    handler_class = web_protocol.RequestHandler
    if _installed or not _has_hooks(handler_class):
        return
    original = handler_class.data_received

    def data_received(self: web_protocol.RequestHandler, data: bytes) -> None:
        queued = len(self._messages)
        original(self, data)
        if len(self._messages) > queued and isinstance(self._messages[-1][0], _ERR_INFO):
            _fail_current_body(self, self._messages[-1][0].exc)

    handler_class.data_received = data_received  # type: ignore[method-assign]
    _installed = True


_ERR_INFO: type = getattr(web_protocol, "_ErrInfo", type(None))


def _has_hooks(handler_class: type) -> bool:
    slots = set(getattr(handler_class, "__slots__", ()))
    return _ERR_INFO is not type(None) and {"_messages", "_current_request"} <= slots


def _fail_current_body(protocol: web_protocol.RequestHandler, error: BaseException) -> None:
    request = protocol._current_request
    if request is None:
        return  # between requests (lingering after an answer): the connection just ends
    body = request.content
    if body.is_eof():
        return  # the error is in a later pipelined request: aiohttp answers it itself
    if body.exception() is None:  # aiohttp's pure-Python parser sets one itself
        body.set_exception(web.RequestPayloadError(f"bad framing: {error}"))
    # At "end" so aiohttp does not linger reading a body that can no longer be parsed.
    body.feed_eof()
    protocol.close()
