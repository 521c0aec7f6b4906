"""The few words every layer shares: message directions and delivery statuses.

They live at the bottom of the dependency graph so that adapters and storage
can both use them without importing each other.
"""

from __future__ import annotations

import enum


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"


class MessageStatus(enum.StrEnum):
    """Delivery states, in the order they may advance; `failed` is terminal."""

    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {
    MessageStatus.PENDING: 0,
    MessageStatus.SENT: 1,
    MessageStatus.DELIVERED: 2,
    MessageStatus.READ: 3,
    MessageStatus.FAILED: 4,
}


def status_advances(current: MessageStatus, new: MessageStatus) -> bool:
    """Whether `new` may replace `current`: only forward, and never out of `failed`.

    `failed` may replace any state but `read` (a read message was delivered,
    whatever a late failure report says).
    """
    if current == MessageStatus.FAILED:
        return False
    if new == MessageStatus.FAILED:
        return current != MessageStatus.READ
    return new.rank > current.rank
