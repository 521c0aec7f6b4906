"""What a Send API error means for Messenger and Instagram: wait and retry, or give up.

Meta's codes (PROVIDERS.md §4, the messenger_*_error fixtures) in one table. Meta
sends no Retry-After: the waits below are ours.
"""

from __future__ import annotations

import aiohttp

from leadline.adapters.base import PauseScope, PermanentSendError, RetryableSendError, SendError
from leadline.adapters.graph_messaging.client import GraphError

# Outside the messaging window: the send-messages page lists 1545041; observed answers
# are code 10 with subcode 2018278 (and 2534022). None can succeed later.
WINDOW_CODES = frozenset({1545041})
WINDOW_SUBCODES = frozenset({2018278, 2534022})
# Throttles of the whole Page or app, with how long the channel waits.
CHANNEL_THROTTLES: dict[int, float] = {613: 10.0, 4: 60.0}
TRANSIENT = frozenset({1, 2})  # "unknown" and "service temporarily unavailable"
TOKEN_INVALID = 190


def send_error(exc: GraphError) -> SendError:
    code = exc.code
    text = exc.message
    if code in WINDOW_CODES or exc.subcode in WINDOW_SUBCODES:
        return PermanentSendError(f"the messaging window is closed: {text}", code="window_closed")
    if code in CHANNEL_THROTTLES:
        wait = CHANNEL_THROTTLES[code]
        return RetryableSendError(text, code=str(code), retry_after=wait, scope=PauseScope.CHANNEL)
    if code in TRANSIENT or exc.status >= 500 or exc.status == 429:
        return RetryableSendError(text, code=str(code or exc.status))
    # 551 unavailable, 100 bad parameter, 10/200 permissions, 190 token: permanent.
    return PermanentSendError(text, code=str(code or exc.status))


def network_error(exc: aiohttp.ClientError | TimeoutError) -> RetryableSendError:
    """A timeout or a dropped connection: the message may or may not have gone."""
    return RetryableSendError(f"Graph API unreachable: {exc.__class__.__name__}", code="network")


def profile_unavailable(exc: GraphError) -> bool:
    """The User Profile API has no profile to give, and asking again will not help:
    a 4xx other than a throttle. Meta names 2018218 ("No profile available for this
    user": accounts made with a phone number) and "User consent is required"; an app
    without the Business Asset User Profile Access feature gets a permission error."""
    throttled = exc.code in CHANNEL_THROTTLES or exc.code in TRANSIENT or exc.status == 429
    token = exc.code == TOKEN_INVALID  # the channel's trouble, not the user's
    return 400 <= exc.status < 500 and not throttled and not token
