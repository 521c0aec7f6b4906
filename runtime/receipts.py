"""Read receipts: the lead sees that the broker read their message (WhatsApp's blue ticks).

For brokers with `read_receipts = true`, on providers that have receipts, the
latest message of each chat is marked read once it is stored and handled. A
receipt is a nicety: one that fails is logged, not retried, and a burst of
messages from one chat costs one call (a receipt covers the earlier messages).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from leadline.runtime.channels import Channels
from leadline.storage.conversation import Unhandled

log = logging.getLogger(__name__)

Chat = tuple[str, str, str]  # broker, provider, channel user
AT_ONCE = 16  # receipts under way together


class ReadReceipts:
    def __init__(self, channels: Channels) -> None:
        self._channels = channels
        self._pending: dict[Chat, str] = {}  # the latest message id of each chat
        self._wake = asyncio.Event()

    def handled(self, messages: Sequence[Unhandled]) -> None:
        """Messages the reply worker has handled: their chats' latest get a receipt."""
        for message in messages:
            adapter = self._channels.up(message.broker_id, message.provider)
            channel = self._channels.get(message.broker_id, message.provider)
            if (
                adapter is not None
                and channel is not None
                and channel.broker.features.read_receipts
                and adapter.capabilities.mark_read
                and message.channel_message_id
            ):
                chat = (message.broker_id, message.provider, message.channel_user_id)
                self._pending[chat] = message.channel_message_id
                self._wake.set()

    async def run(self) -> None:
        """Until cancelled: send the receipts handed over, a few at a time."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            chats = list(pending.items())
            for start in range(0, len(chats), AT_ONCE):
                await asyncio.gather(*(self._send(c, m) for c, m in chats[start : start + AT_ONCE]))

    async def _send(self, chat: Chat, message_id: str) -> None:
        broker_id, provider, user = chat
        adapter = self._channels.up(broker_id, provider)
        if adapter is None:
            return
        try:
            await adapter.mark_read(user, message_id)
        except Exception as exc:
            log.info(
                "broker %s: %s read receipt not sent: %s",
                broker_id, provider, exc.__class__.__name__,
            )  # fmt: skip
