"""A stream's door: one frame in flight at a time; frames arriving meanwhile wait their turn or are
dropped, by the stream's overload policy.

Under ``drop_oldest`` (default) only the newest waiting frame is kept and older ones are dropped;
under ``wait`` up to ``max_waiting_per_stream`` queue and more are refused. A frame older than one
already applied is dropped (``drop_oldest``) or refused (``wait``); a repeated index is always refused.
A frame in flight longer than ``frame_timeout_s`` is abandoned: the next frame takes over, and the
``on_abandon`` callback lets the stream's state re-detect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from posefleet.config import Policy
from posefleet.errors import FrameDropped, StreamBusy, Unavailable
from posefleet.serving_config import AdmissionConfig


class Ordered(Protocol):
    """A stream's frame order (``StreamState``)."""

    last_index: int

    def restarts_at(self, frame_index: int) -> bool: ...
    def check_order(self, frame_index: int) -> None: ...


@dataclass
class Turnstile:
    cfg: AdmissionConfig
    on_abandon: Callable[[], None]
    policy: Policy = "drop_oldest"
    pending: int | None = None  # index of the frame in flight (-1: handed over, not yet admitted)
    pending_since: float = 0.0
    waiting: collections.deque = field(default_factory=collections.deque)  # (index, future)
    dropped: int = 0
    dropped_unreported: int = 0  # told to the client with the stream's next answer

    async def enter(self, frame_index: int | None, order: Ordered, policy: Policy | None = None) -> int:
        """Wait for the stream's turn; the frame (its index returned) is then the one in flight.
        Raises FrameDropped when the policy drops it, StreamBusy, or what ``order.check_order`` raises.
        ``policy`` applies to this frame and, once it is admitted, becomes the stream's."""
        policy = policy or self.policy
        if self.pending is not None or self.waiting:
            await self._wait_turn(frame_index, policy)
        else:
            self.pending, self.pending_since = -1, time.monotonic()  # reserved for this frame
        last_index = order.last_index
        index = last_index + 1 if frame_index is None else frame_index
        if index < last_index and policy == "drop_oldest" and not order.restarts_at(index):  # late: stale
            self.leave()
            self.dropped += 1
            raise FrameDropped(f"frame {index} dropped: frame {last_index} came before it")
        try:
            order.check_order(index)  # duplicates, and late frames under wait
        except BaseException:
            self.leave()
            raise
        self.pending, self.pending_since = index, time.monotonic()
        self.policy = policy
        return index

    def holds(self, index: int) -> bool:
        """Whether ``index`` is still the frame in flight (not abandoned meanwhile)."""
        return self.pending == index

    async def _wait_turn(self, frame_index: int | None, policy: Policy) -> None:
        newer = [i for i, _ in self.waiting if i is not None and frame_index is not None and i > frame_index]
        if policy == "drop_oldest" and newer:  # a later frame already waits: this one is the stale one
            self._count_drop()
            raise FrameDropped(f"frame {frame_index} dropped: frame {max(newer)} is already waiting")
        if policy == "drop_oldest":
            while self.waiting:
                idx, fut = self.waiting.popleft()
                if not fut.done():
                    fut.set_exception(FrameDropped(f"frame {idx} dropped: frame {frame_index} superseded it"))
                    self._count_drop()
        elif len(self.waiting) >= self.cfg.max_waiting_per_stream:
            raise StreamBusy(f"{len(self.waiting)} frames of this stream are already waiting")
        fut = asyncio.get_running_loop().create_future()
        entry = (frame_index, fut)
        self.waiting.append(entry)
        try:
            while True:
                stalled = self.pending
                remaining = self.cfg.frame_timeout_s - (time.monotonic() - self.pending_since)
                done, _ = await asyncio.wait({fut}, timeout=max(0.0, remaining))
                if done:
                    fut.result()  # raises FrameDropped when superseded
                    return
                if self.pending == stalled:  # the frame in flight died or stalled: take over
                    self.leave(failed=True)
        except asyncio.CancelledError:  # the client went away while this frame waited
            if entry in self.waiting:
                self.waiting.remove(entry)
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                self.leave()  # the turn was handed to this frame: pass it on
            fut.cancel()
            raise

    def _count_drop(self) -> None:
        self.dropped += 1
        self.dropped_unreported += 1

    def leave(self, failed: bool = False) -> None:
        """End the frame in flight and hand the stream to the next waiting frame, if any."""
        if failed:
            self.on_abandon()
        self.pending = None
        while self.waiting:
            _, fut = self.waiting.popleft()
            if not fut.done():
                self.pending, self.pending_since = -1, time.monotonic()  # handed over, not yet admitted
                fut.set_result(None)
                return

    def close(self, why: str) -> None:
        """The stream is reset or deleted: every waiting frame is answered as dropped."""
        self.pending = None
        while self.waiting:
            _, fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(FrameDropped(f"frame dropped: {why}"))


class Budget:
    """Units in flight in one process (decoded pixels, frames): a frame waits (in arrival order, at most
    ``timeout_s``, then Unavailable) until its share fits, so what is held stays bounded whatever arrives;
    one that may not wait is refused at once when it does not fit."""

    def __init__(self, limit: int, timeout_s: float, unit: str = "decoded pixels"):
        self.limit, self.timeout_s, self.unit = limit, timeout_s, unit
        self.used = 0
        self.waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, amount: int, wait: bool = True) -> AsyncIterator[None]:
        amount = min(amount, self.limit)  # one frame alone always fits
        if self.waiting or self.used + amount > self.limit:
            if not wait:
                raise Unavailable(f"{self.used} {self.unit} are in flight here (limit {self.limit})")
            fut = asyncio.get_running_loop().create_future()
            self.waiting.append((amount, fut))
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
            except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
                if fut.done():  # granted just as it gave up: give it back
                    self.used -= amount
                else:
                    fut.cancel()
                    self.waiting.remove((amount, fut))
                self._wake()  # a frame behind may fit now
                if isinstance(exc, asyncio.CancelledError):
                    raise
                full = f"{self.used} {self.unit} are in flight here (limit {self.limit})"
                raise Unavailable(f"{full}; no room within {self.timeout_s} s") from None
        else:
            self.used += amount
        try:
            yield
        finally:
            self.used -= amount
            self._wake()

    def _wake(self) -> None:
        while self.waiting and self.used + self.waiting[0][0] <= self.limit:
            amount, fut = self.waiting.popleft()
            if not fut.done():
                self.used += amount
                fut.set_result(None)
