"""`BusOutbox`: the agent's messages onto a session's streams.

Every message gets a producer id `"{producer}:{seq}"`, the bus's idempotency key. The producer
name carries a random run id, so an agent that restarts does not reuse keys that the bus still
remembers from its previous run (which would silently drop the new messages).
"""

from __future__ import annotations

import secrets

from flowact.bus import typed
from flowact.bus.base import Bus
from flowact.schemas.messages import Message


class BusOutbox:
    """Publishes on `session`'s streams through the typed bus layer."""

    def __init__(self, bus: Bus, session: str, producer: str = "agent") -> None:
        self.bus = bus
        self.session = session
        self.producer = f"{producer}-{secrets.token_hex(4)}"
        self._seq = 0

    async def send(self, message: Message) -> None:
        if message.producer_id is None:
            message = message.model_copy(update={"producer_id": f"{self.producer}:{self._seq}"})
            self._seq += 1
        await typed.publish(self.bus, self.session, message)

    def owns(self, message: Message) -> bool:
        """Whether this outbox sent `message` (the agent reads streams it also writes)."""
        return (message.producer_id or "").startswith(f"{self.producer}:")
