"""A stream's frames kept in the order they arrived, from the ingress to the turnstile at their worker.

Two frames of a stream are often in flight at once (a socket's pipelined frames, a batch). On their way
they meet waits that need not end in arrival order (a frame slot, the placement lookup), and Ray runs an
async actor's calls in any order. So an ingress replica lets a stream's frames through those waits one
after another (:class:`Lineup`) and numbers each call (:class:`Sent`); the worker lets a call that arrives
before the one sent just before it wait for that one (:class:`CallOrder`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


class Lineup:
    """An ingress replica's frames of each stream, through its waits in arrival order: a frame goes on once
    the stream's frame before it has gone (its call sent, or it ended before)."""

    def __init__(self) -> None:
        self.last: dict[str, asyncio.Future] = {}  # stream -> its latest frame's "gone" signal

    @contextlib.asynccontextmanager
    async def turn(self, stream_id: str) -> AsyncIterator[Callable[[], None]]:
        """Wait for the frame before; yields ``went``, to call once this frame's call is sent (or, where the
        stream is held in this process, right before the frame goes to its turnstile, awaiting nothing)."""
        before = self.last.get(stream_id)
        mine = self.last[stream_id] = asyncio.get_running_loop().create_future()

        def went() -> None:
            if not mine.done():
                mine.set_result(None)
            if self.last.get(stream_id) is mine:
                del self.last[stream_id]

        waited = before is None
        try:
            if before is not None:
                await asyncio.wait({before})  # not `await before`: a cancelled frame must not cancel it
            waited = True
            yield went
        finally:
            if waited:
                went()
            else:  # given up while waiting (the client went away): the frames behind still wait for the one before
                before.add_done_callback(lambda _: went())


@dataclass(frozen=True)
class Sent:
    """A frame's call as its ingress replica sent it: the replica (``sender``), the frame's number there
    (increasing), and the number of the stream's frame it sent just before, if that one is unanswered."""

    sender: str
    number: int
    after: int | None = None


class CallOrder:
    """A worker's side: frames of a stream in the order each ingress replica sent them. A frame that
    arrives before the one sent just before it waits for that one (``wait_s`` at most, in case it never
    comes), so the turnstile sees them as sent."""

    def __init__(self, wait_s: float, size: int):
        self.wait_s, self.size = wait_s, size
        self.passed: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
        self.waiting: dict[tuple[str, str, int], asyncio.Future] = {}

    async def wait(self, stream_id: str, sent: Sent | None) -> None:
        """Return once the frame sent before this one (if any is still out) has reached the turnstile."""
        if sent is None or sent.after is None or self.passed.get((stream_id, sent.sender), -1) >= sent.after:
            return
        wanted = (stream_id, sent.sender, sent.after)
        fut = self.waiting[wanted] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait({fut}, timeout=self.wait_s)
        finally:
            if self.waiting.get(wanted) is fut:
                del self.waiting[wanted]

    def went(self, stream_id: str, sent: Sent | None) -> None:
        """The frame is at its turnstile (or refused before it): the frame sent after it may go. Call it
        right before entering the turnstile, awaiting nothing between, so that frame's wake-up comes after."""
        if sent is None:
            return
        key = (stream_id, sent.sender)
        if self.passed.get(key, -1) < sent.number:
            self.passed[key] = sent.number
            self.passed.move_to_end(key)
            if len(self.passed) > self.size:  # a forgotten entry costs a later frame at most one wait
                self.passed.popitem(last=False)
        if (next_frame := self.waiting.pop((stream_id, sent.sender, sent.number), None)) is not None:
            next_frame.set_result(None)
