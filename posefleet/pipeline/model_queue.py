"""Models for a process that serves many streams at once: concurrent model calls of different
frames wait while the model is busy and then run together, one inference for all of them.

There is no timer: a call that finds the model idle runs at once, and whatever arrives meanwhile
forms the next batch, so batching adds no latency and grows with load (as ``@serve.batch`` does in
Serve replicas; this is its counterpart for a plain Ray actor, where ``serve.batch`` cannot run).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posefleet.pipeline.frames import ModelCall


@dataclass
class QueueStats:
    """Recent batches of one model: items (tiles or crops) and calls (frames) per inference."""

    items: collections.deque = field(default_factory=lambda: collections.deque(maxlen=2000))
    calls: collections.deque = field(default_factory=lambda: collections.deque(maxlen=2000))
    infer_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=2000))

    def summary(self, reset: bool = False) -> dict[str, Any]:
        items, calls, infer = list(self.items), list(self.calls), list(self.infer_ms)
        if reset:
            self.items.clear()
            self.calls.clear()
            self.infer_ms.clear()
        return {
            "batches": len(items),
            "max_items": max(items, default=0),
            "mean_items": round(float(np.mean(items)), 3) if items else 0.0,
            "max_requests": max(calls, default=0),
            "mean_requests": round(float(np.mean(calls)), 3) if calls else 0.0,
            "mean_infer_ms": round(float(np.mean(infer)), 3) if infer else 0.0,
        }


def merge_inputs(calls: list[ModelCall]) -> ModelCall:
    """Several frames' calls to one model as one call (lists of tiles joined, crop batches stacked)."""
    if calls[0].model == "detector":
        return ModelCall("detector", [x for c in calls for x in c.inputs])
    return ModelCall("pose", np.concatenate([c.inputs for c in calls]))


def split_outputs(calls: list[ModelCall], outputs: list) -> list[list]:
    """The joined call's outputs back to each call, in order."""
    parts, k = [], 0
    for c in calls:
        n = len(c.inputs)
        parts.append(outputs[k : k + n] if c.model == "detector" else [o[k : k + n] for o in outputs])
        k += n
    return parts


class _Queue:
    def __init__(self, run: Callable[[ModelCall], list], max_items: int, stats: QueueStats,
                 on_batch: Callable[[int], None] | None):  # fmt: skip
        self.run, self.max_items, self.stats, self.on_batch = run, max_items, stats, on_batch
        self.waiting: collections.deque[tuple[ModelCall, asyncio.Future]] = collections.deque()
        self.busy = False
        self.drainer: asyncio.Task | None = None  # kept referenced while it runs

    async def __call__(self, call: ModelCall) -> list:
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append((call, fut))
        if not self.busy:
            self.busy = True
            self.drainer = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch, items = [], 0
                while self.waiting and (not batch or items + len(self.waiting[0][0].inputs) <= self.max_items):
                    call, fut = self.waiting.popleft()
                    if not fut.done():  # its frame may have been given up meanwhile
                        batch.append((call, fut))
                        items += len(call.inputs)
                if not batch:
                    continue
                calls = [c for c, _ in batch]
                t0 = time.perf_counter()
                try:
                    outs = await asyncio.to_thread(self.run, merge_inputs(calls))
                except Exception as exc:  # every frame of the batch gets the error
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.stats.infer_ms.append((time.perf_counter() - t0) * 1000.0)
                self.stats.items.append(items)
                self.stats.calls.append(len(batch))
                if self.on_batch is not None:
                    self.on_batch(items)
                for (_, fut), part in zip(batch, split_outputs(calls, outs), strict=True):
                    if not fut.done():
                        fut.set_result(part)
        finally:
            self.busy = False


class QueuedModels:
    """Async model calls over in-process models (:class:`~posefleet.pipeline.frames.LocalModels`),
    one queue per model, inference in a worker thread so the event loop keeps taking frames."""

    def __init__(
        self,
        run: Callable[[ModelCall], list],
        max_items: dict[str, int],
        on_batch: Callable[[str, int], None] | None = None,
    ):
        self.stats = {name: QueueStats() for name in ("detector", "pose")}
        self.queues = {
            name: _Queue(run, max_items[name], self.stats[name],
                         None if on_batch is None else lambda n, name=name: on_batch(name, n))
            for name in ("detector", "pose")
        }  # fmt: skip

    async def __call__(self, call: ModelCall) -> list:
        return await self.queues[call.model](call)
