"""Who holds what on an ingress replica: long-lived connections and uploads counted per client and in
total, apart from frame slots, so viewers and slow uploads never take the capacity frames need.

A client is the bearer token it presented (several may be configured), or its address with auth off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator

from posefleet.errors import OverCap


def client_key(token: str | None, address: str | None) -> str:
    """A short stable name for a client: a digest of its token (never the token), else its address."""
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]
    return f"addr:{address or '?'}"


class Caps:
    """Holds of one kind (viewers, sockets, uploads): at most ``total`` at once, ``per_client`` each."""

    def __init__(self, kind: str, total: int, per_client: int):
        self.kind, self.total, self.per_client = kind, total, per_client
        self.held: dict[str, int] = {}
        self.count = 0
        self.refused = 0

    def enter(self, client: str) -> None:
        mine = self.held.get(client, 0)
        if self.count >= self.total or mine >= self.per_client:
            self.refused += 1
            which = f"{self.count} of {self.total} in all" if self.count >= self.total else f"{mine} for this client"
            raise OverCap(f"too many {self.kind} open ({which}; serving.limits)")
        self.held[client] = mine + 1
        self.count += 1

    def leave(self, client: str) -> None:
        self.count -= 1
        left = self.held[client] - 1
        if left:
            self.held[client] = left
        else:
            del self.held[client]

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        self.enter(client)
        try:
            yield
        finally:
            self.leave(client)

    def stats(self) -> dict[str, int]:
        return {"open": self.count, "clients": len(self.held), "refused": self.refused}


class Shares:
    """The frames of many-frame requests one client has in flight at once, at most ``per_client``; the rest
    wait their turn (they are never refused for it). Without it a POST of 32 new streams puts 32 full scans
    in the model queue at once, ahead of every other client's next frame."""

    def __init__(self, per_client: int):
        self.per_client = per_client
        self.gates: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, client: str) -> AsyncIterator[None]:
        gate, users = self.gates.get(client) or (asyncio.Semaphore(self.per_client), 0)
        self.gates[client] = (gate, users + 1)
        try:
            async with gate:
                yield
        finally:
            gate, users = self.gates[client]
            if users > 1:
                self.gates[client] = (gate, users - 1)
            else:
                del self.gates[client]  # nothing kept for a client with nothing in flight
