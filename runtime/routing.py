"""Which broker each event of a webhook delivery belongs to.

A provider may send one app's events for several accounts to one URL: a Meta app
has one callback URL for every WhatsApp number (and Page) it serves, so an agency
running many brokers' numbers on one app receives them all at one broker's URL.
Adapters tag events with the account they came to (`InboundEvent.account`); an
event for another broker's account is stored under that broker, but only if that
broker's own adapter accepts the request's signature. An account no running
channel owns is never stored under the broker whose URL it came to.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from leadline.adapters.base import InboundEvent
from leadline.runtime.channels import Channel, Channels, ChannelState

log = logging.getLogger(__name__)

ChannelKey = tuple[str, str]


@dataclass(slots=True)
class Routes:
    """A delivery's events by the channel that stores them, and the accounts no one owns."""

    events: dict[ChannelKey, list[InboundEvent]] = field(default_factory=dict)
    unowned: dict[str, int] = field(default_factory=dict)  # account -> events


def route(
    channels: Channels,
    channel: Channel,
    headers: Mapping[str, str],
    body: bytes,
    events: Sequence[InboundEvent],
) -> Routes:
    assert channel.adapter is not None
    own = channel.adapter.account_id
    routes = Routes({channel.key: []})
    foreign: dict[str, list[InboundEvent]] = {}
    for event in events:
        if own is None or event.account is None or event.account == own:
            routes.events[channel.key].append(event)
        else:
            foreign.setdefault(event.account, []).append(event)
    for account, theirs in foreign.items():
        owner = _owner(channels, channel, account, headers, body)
        if owner is None:
            routes.unowned[account] = len(theirs)
        else:
            routes.events.setdefault(owner.key, []).extend(theirs)
    return routes


def _owner(
    channels: Channels,
    channel: Channel,
    account: str,
    headers: Mapping[str, str],
    body: bytes,
) -> Channel | None:
    for other in channels:
        adapter = other.adapter
        if (
            other.provider != channel.provider
            or other.key == channel.key
            or adapter is None
            or other.state != ChannelState.UP
            or adapter.account_id != account
        ):
            continue
        try:
            adapter.verify(headers, body)
        except Exception:
            log.warning(
                "broker %s: a %s delivery for account %s of broker %s is not signed "
                "with that broker's secret; not stored there",
                channel.broker.id, channel.provider, account, other.broker.id,
            )  # fmt: skip
            return None
        return other
    return None
