"""A stream's frames kept in the order they arrived, from their sender to the turnstile at their holder.

One mechanism with two ends. Two frames of a stream are often in flight at once (a socket's pipelined
frames, a batch). On their way they meet waits that need not end in arrival order (a frame slot, the
placement lookup), and Ray runs an async actor's calls in any order. So the sending end (an ingress
replica, a camera source) lets a stream's frames through its waits one after another and stamps each with
its number and the number of the stream's frame still out before it (:class:`Lineup`, which hands out
:class:`Ticket` s carrying the :class:`Sent` stamp); the holder's end lets a frame that arrives before the
one sent just before it wait for that one (:class:`CallOrder`), so its turnstile sees them as sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Sent:
    """A frame's call as its sender sent it: the sender (an ingress replica, a source), the frame's number
    there (increasing), and the number of the stream's frame it sent just before, if that one is unanswered."""

    sender: str
    number: int
    after: int | None = None


@dataclass(frozen=True)
class Ticket:
    """A frame's turn: its stamp, and ``went``, to call once its call is sent (or, where the stream is held in
    this process, right before the frame goes to its turnstile, awaiting nothing): the next frame may go."""

    sent: Sent
    went: Callable[[], None]


class Lineup:
    """The sending end: a sender's frames of each stream through its waits in arrival order (a frame goes
    on once the stream's frame before it has gone: its call sent, or it ended before), each stamped."""

    def __init__(self) -> None:
        self.last: dict[str, asyncio.Future] = {}  # stream -> its latest frame's "gone" signal
        self.sender, self.numbers = uuid.uuid4().hex, itertools.count()
        self.unanswered: dict[str, int] = {}  # stream -> the number of its frame still out, the latest

    @contextlib.asynccontextmanager
    async def turn(self, stream_id: str) -> AsyncIterator[Ticket]:
        """Wait for the frame before, then hold this frame's :class:`Ticket` until it is answered."""
        before = self.last.get(stream_id)
        mine = self.last[stream_id] = asyncio.get_running_loop().create_future()

        def went() -> None:
            if not mine.done():
                mine.set_result(None)
            if self.last.get(stream_id) is mine:
                del self.last[stream_id]

        waited, sent = before is None, None
        try:
            if before is not None:
                await asyncio.wait({before})  # not `await before`: a cancelled frame must not cancel it
            waited = True
            sent = Sent(self.sender, next(self.numbers), self.unanswered.get(stream_id))
            self.unanswered[stream_id] = sent.number
            yield Ticket(sent, went)
        finally:
            if sent is not None and self.unanswered.get(stream_id) == sent.number:
                del self.unanswered[stream_id]  # answered (or never sent): the next frame waits for none
            if waited:
                went()
            else:  # given up while waiting (the client went away): the frames behind still wait for the one before
                before.add_done_callback(lambda _: went())


class CallOrder:
    """The holder's end: frames of a stream in the order each sender sent them. A frame that
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
