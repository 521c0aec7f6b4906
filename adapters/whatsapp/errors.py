"""What a Cloud API error means for a send: wait and retry, or give up.

Meta's error codes (PROVIDERS.md §3, developers.facebook.com .../support/error-codes)
in one table. Meta sends no Retry-After: the waits below are ours. A throttle of the
whole number or app pauses the broker's channel; the pair limit (one user) backs off
exponentially, as Meta advises ("retry after 4^X seconds").
"""

from __future__ import annotations

import httpx
from pywa.errors import WhatsAppError

from leadline.adapters.base import (
    PauseScope,
    PermanentSendError,
    RetryableSendError,
    SendError,
)

WINDOW_CLOSED = 131047  # re-engagement: more than 24 hours since the user last wrote
PAIR_RATE_LIMIT = 131056  # too many messages to one user: back off that user
# Throttles of the whole number, app or account, with how long the channel waits.
CHANNEL_THROTTLES: dict[int, float] = {
    130429: 1.0,  # the number's throughput (80 msg/s by default) was exceeded
    4: 60.0,  # the app's call limit
    80007: 60.0,  # the WhatsApp Business Account's rate limit
}
# Meta's side failed or is busy: retried with backoff like any 5xx.
TRANSIENT = frozenset({1, 2, 131000, 131016, 133004})


def describe(exc: WhatsAppError) -> str:
    """`message (details)`: Meta's own words, which hold no secret."""
    text = exc.message or exc.__class__.__name__
    return f"{text} ({exc.details})" if exc.details else text


def send_error(exc: WhatsAppError) -> SendError:
    """The typed error a failed Cloud API call becomes."""
    code, text = exc.code, describe(exc)
    if code in CHANNEL_THROTTLES:
        return RetryableSendError(
            text, code=str(code), retry_after=CHANNEL_THROTTLES[code], scope=PauseScope.CHANNEL
        )
    status = exc.status_code or 0
    if code == PAIR_RATE_LIMIT or code in TRANSIENT or status >= 500 or status == 429:
        return RetryableSendError(text, code=str(code))
    # 131047 window closed, 131026 undeliverable, 131050 opted out, 190 and other token
    # or permission errors, bad requests: trying again cannot help.
    return PermanentSendError(text, code=str(code))


def network_error(exc: httpx.HTTPError) -> RetryableSendError:
    """A timeout or a dropped connection: the message may or may not have gone."""
    return RetryableSendError(f"WhatsApp unreachable: {exc.__class__.__name__}", code="network")
