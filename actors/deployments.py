"""Serve deployments that hold the ONNX Runtime sessions, behind dynamic batching.

Requests carry ready tensors (detector inputs, pose crops), never frames: cutting and decoding
happen where the frame was decoded. ``@serve.batch`` gathers concurrent requests from many
streams; inference runs in a worker thread so the replica's event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from ray import serve

from posefleet import metrics
from posefleet.config import DetectorConfig, PoseConfig
from posefleet.pipeline.detector import Detector
from posefleet.pipeline.model_queue import QueueStats
from posefleet.pipeline.pose import PoseEstimator
from posefleet.serving_config import ModelDeploymentSettings

T = TypeVar("T")


class _BatchStats:
    """Recent batch sizes of a replica, for tests and the stats endpoint."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.stats = QueueStats()  # the same figures a stream worker keeps of its local models
        self.inflight = 0

    def record(self, items: int, requests: int) -> None:
        self.stats.items.append(items)
        self.stats.calls.append(requests)
        metrics.get().batch_size.observe(items, tags={"model": self.model})

    def enter(self, n: int = 1) -> None:
        self.inflight += n
        metrics.get().queue.set(self.inflight, tags={"model": self.model})

    def leave(self, n: int = 1) -> None:
        self.enter(-n)

    async def infer(self, fn: Callable[[Any], T], batch: Any, items: int, requests: int) -> T:
        """Run one inference off the event loop, counting it."""
        self.record(items, requests)
        self.enter(requests)
        try:
            return await asyncio.to_thread(self._timed, fn, batch)
        finally:
            self.leave(requests)

    def _timed(self, fn: Callable[[Any], T], batch: Any) -> T:
        t0 = time.perf_counter()
        try:
            return fn(batch)
        finally:
            self.stats.infer_ms.append((time.perf_counter() - t0) * 1000.0)

    def summary(self, reset: bool = False) -> dict[str, Any]:
        return {"model": self.model} | self.stats.summary(reset)


def _items(requests: list) -> int:
    """Batch size in items (tiles or crops), not requests."""
    return sum(len(x) for x in requests)


class _Batched:
    """What both model deployments share: batch settings from config, stats."""

    stats: _BatchStats
    provider: str

    def _configure(self, method: Any, model: str, provider: str, settings: ModelDeploymentSettings) -> None:
        self.stats, self.provider = _BatchStats(model), provider
        method.set_max_batch_size(settings.batch.max_batch_size)
        method.set_batch_wait_timeout_s(settings.batch.batch_wait_timeout_s)

    def batch_stats(self, reset: bool = False) -> dict[str, Any]:
        return self.stats.summary(reset) | {"provider": self.provider}


@serve.deployment(name="DetectorModel")
class DetectorDeployment(_Batched):
    """Person detector: one request = the input tensors of one frame (one per tile)."""

    def __init__(self, cfg: DetectorConfig, settings: ModelDeploymentSettings):
        self.detector = Detector(cfg)
        self._configure(self.detect, "detector", self.detector.model.provider, settings)

    @serve.batch(batch_size_fn=_items)  # sizes and wait: set from the config in _configure
    async def detect(self, requests: list[list[np.ndarray]]) -> list[list[list[np.ndarray]]]:
        flat = [t for tensors in requests for t in tensors]
        outs = await self.stats.infer(self.detector.infer, flat, len(flat), len(requests))
        result, i = [], 0
        for tensors in requests:
            result.append(outs[i : i + len(tensors)])
            i += len(tensors)
        return result

    async def __call__(self, tensors: list[np.ndarray]) -> list[list[np.ndarray]]:
        return await self.detect(tensors)


@serve.deployment(name="PoseModel")
class PoseDeployment(_Batched):
    """Top-down pose: one request = the crops of one frame; a batch = all crops of many frames."""

    def __init__(self, cfg: PoseConfig, settings: ModelDeploymentSettings):
        self.pose = PoseEstimator(cfg)
        self._configure(self.estimate, "pose", self.pose.model.provider, settings)

    @serve.batch(batch_size_fn=_items)  # sizes and wait: set from the config in _configure
    async def estimate(self, crops: list[np.ndarray]) -> list[list[np.ndarray]]:
        batch = np.concatenate(crops)
        outs = await self.stats.infer(self.pose.infer, batch, len(batch), len(crops))
        result, i = [], 0
        for c in crops:
            result.append([o[i : i + len(c)] for o in outs])
            i += len(c)
        return result

    async def __call__(self, crops: np.ndarray) -> list[np.ndarray]:
        return await self.estimate(crops)
