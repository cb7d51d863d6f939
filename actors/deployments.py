"""Serve deployments that hold the ONNX Runtime sessions, behind dynamic batching.

Requests carry ready tensors (detector inputs, pose crops), never frames: cutting and decoding
happen where the frame was decoded. ``@serve.batch`` gathers concurrent requests from many
streams; inference runs in a worker thread so the replica's event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import numpy as np
from ray import serve

from posefleet import metrics
from posefleet.actors.detector import Detector
from posefleet.actors.pose import PoseEstimator
from posefleet.config import DetectorConfig, ModelDeploymentSettings, PoseConfig


class _BatchStats:
    """Recent batch sizes of a replica, for tests and the stats endpoint."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.sizes: collections.deque[int] = collections.deque(maxlen=2000)  # items per inference
        self.requests: collections.deque[int] = collections.deque(maxlen=2000)  # requests per inference
        self.inflight = 0

    def record(self, items: int, requests: int) -> None:
        self.sizes.append(items)
        self.requests.append(requests)
        metrics.get().batch_size.observe(items, tags={"model": self.model})

    def enter(self, n: int = 1) -> None:
        self.inflight += n
        metrics.get().queue.set(self.inflight, tags={"model": self.model})

    def leave(self, n: int = 1) -> None:
        self.enter(-n)

    def summary(self, reset: bool = False) -> dict[str, Any]:
        sizes, reqs = list(self.sizes), list(self.requests)
        if reset:
            self.sizes.clear()
            self.requests.clear()
        return {
            "model": self.model,
            "batches": len(sizes),
            "max_items": max(sizes, default=0),
            "mean_items": round(float(np.mean(sizes)), 3) if sizes else 0.0,
            "max_requests": max(reqs, default=0),
            "mean_requests": round(float(np.mean(reqs)), 3) if reqs else 0.0,
            "recent_items": sizes[-50:],
            "recent_requests": reqs[-50:],
        }


def _count_tensors(items: list[list[np.ndarray]]) -> int:
    return sum(len(x) for x in items)


def _count_crops(items: list[np.ndarray]) -> int:
    return sum(len(x) for x in items)


@serve.deployment(name="Detector")
class DetectorDeployment:
    """Person detector: one request = the input tensors of one frame (one per tile)."""

    def __init__(self, cfg: DetectorConfig, settings: ModelDeploymentSettings):
        self.detector = Detector(cfg)
        self.stats = _BatchStats("detector")
        self.detect.set_max_batch_size(settings.batch.max_batch_size)
        self.detect.set_batch_wait_timeout_s(settings.batch.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005, batch_size_fn=_count_tensors)
    async def detect(self, requests: list[list[np.ndarray]]) -> list[list[list[np.ndarray]]]:
        flat = [t for tensors in requests for t in tensors]
        self.stats.record(len(flat), len(requests))
        self.stats.enter(len(requests))
        try:
            outs = await asyncio.to_thread(self.detector.infer, flat)
        finally:
            self.stats.leave(len(requests))
        result, i = [], 0
        for tensors in requests:
            result.append(outs[i : i + len(tensors)])
            i += len(tensors)
        return result

    async def __call__(self, tensors: list[np.ndarray]) -> list[list[np.ndarray]]:
        return await self.detect(tensors)

    def batch_stats(self, reset: bool = False) -> dict[str, Any]:
        return self.stats.summary(reset) | {"provider": self.detector.model.provider}


@serve.deployment(name="Pose")
class PoseDeployment:
    """Top-down pose: one request = the crops of one frame; a batch = all crops of many frames."""

    def __init__(self, cfg: PoseConfig, settings: ModelDeploymentSettings):
        self.pose = PoseEstimator(cfg)
        self.stats = _BatchStats("pose")
        self.estimate.set_max_batch_size(settings.batch.max_batch_size)
        self.estimate.set_batch_wait_timeout_s(settings.batch.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_count_crops)
    async def estimate(self, crops: list[np.ndarray]) -> list[list[np.ndarray]]:
        batch = np.concatenate(crops)
        self.stats.record(len(batch), len(crops))
        self.stats.enter(len(crops))
        try:
            outs = await asyncio.to_thread(self.pose.infer, batch)
        finally:
            self.stats.leave(len(crops))
        result, i = [], 0
        for c in crops:
            result.append([o[i : i + len(c)] for o in outs])
            i += len(c)
        return result

    async def __call__(self, crops: np.ndarray) -> list[np.ndarray]:
        return await self.estimate(crops)

    def batch_stats(self, reset: bool = False) -> dict[str, Any]:
        return self.stats.summary(reset) | {"provider": self.pose.model.provider}
