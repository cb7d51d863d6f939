"""Tracker actors: a fixed pool of Ray actors, each holding the :class:`StreamTracker` of many streams.

A stream always maps to the same actor (a stable hash of its id), so its state lives in one place.
An actor lets one frame per stream be in flight: a frame's ``plan`` waits until the previous frame
of that stream has ``finish``-ed (or timed out), so frames are applied in order even when a client
sends them concurrently, and a frame that arrives after a later one is refused explicitly.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from posefleet.actors.detector import Detections
from posefleet.actors.tracker import FramePlan, StreamTracker
from posefleet.config import PipelineConfig
from posefleet.serve.schema import Person


class FrameNotInFlight(RuntimeError):
    """A step for a frame the actor is not processing (abandoned after a timeout, or reset)."""


@dataclass
class _Stream:
    tracker: StreamTracker
    frames: int = 0
    created: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    pending: int | None = None
    pending_since: float = 0.0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class TrackerShard:
    """The plain-Python body of a tracker actor (tested without Ray)."""

    def __init__(self, cfg: PipelineConfig, frame_timeout_s: float = 10.0):
        self.cfg = cfg
        self.frame_timeout_s = frame_timeout_s
        self.streams: dict[str, _Stream] = {}

    def _get(self, stream_id: str) -> _Stream:
        if stream_id not in self.streams:
            self.streams[stream_id] = _Stream(StreamTracker(self.cfg))
        return self.streams[stream_id]

    async def plan(self, stream_id: str, frame_index: int | None) -> FramePlan:
        """Start a frame: wait for the stream's previous frame, check order, decide what runs."""
        s = self._get(stream_id)
        while s.pending is not None:
            waited = time.monotonic() - s.pending_since
            try:
                await asyncio.wait_for(s.idle.wait(), timeout=max(0.0, self.frame_timeout_s - waited))
            except TimeoutError:
                self._release(s, failed=True)  # the previous frame's request died or stalled
        index = s.tracker.last_index + 1 if frame_index is None else frame_index
        plan = s.tracker.plan(index)  # raises FrameOrderError on duplicates and late frames
        s.pending, s.pending_since = index, time.monotonic()
        s.idle.clear()
        s.last_seen = time.time()
        return plan

    def _in_flight(self, stream_id: str, frame_index: int) -> _Stream:
        s = self.streams.get(stream_id)
        if s is None or s.pending != frame_index:
            raise FrameNotInFlight(
                f"stream {stream_id!r} frame {frame_index} is not in flight (timed out or reset)"
            )
        return s

    def associate(self, stream_id: str, plan: FramePlan, boxes: np.ndarray, scores: np.ndarray) -> FramePlan:
        s = self._in_flight(stream_id, plan.frame_index)
        return s.tracker.associate(plan, Detections(boxes, scores))

    def finish(
        self,
        stream_id: str,
        plan: FramePlan,
        keypoints: np.ndarray,
        scores: np.ndarray,
        timestamp: float | None,
    ) -> list[Person]:
        s = self._in_flight(stream_id, plan.frame_index)
        try:
            people = s.tracker.finish(plan, keypoints, scores, timestamp)
            s.frames += 1
            return people
        finally:
            self._release(s)

    def abort(self, stream_id: str, frame_index: int) -> None:
        """A frame failed between plan and finish: free the stream and detect on its next frame."""
        s = self.streams.get(stream_id)
        if s is not None and s.pending == frame_index:
            self._release(s, failed=True)

    @staticmethod
    def _release(s: _Stream, failed: bool = False) -> None:
        if failed:
            s.tracker.force_detect = True
        s.pending = None
        s.idle.set()

    # -- management -------------------------------------------------------------------------
    def describe(self, stream_id: str) -> dict[str, Any] | None:
        s = self.streams.get(stream_id)
        if s is None:
            return None
        return {
            "stream_id": stream_id,
            "frames": s.frames,
            "last_frame_index": s.tracker.last_index,
            "active_tracks": [t.track_id for t in s.tracker.tracker.active()],
            "lost_tracks": len(s.tracker.tracker.lost),
            "next_track_id": s.tracker.tracker.next_id,
            "created": s.created,
            "last_seen": s.last_seen,
        }

    def list_streams(self) -> list[dict[str, Any]]:
        return [d for sid in sorted(self.streams) if (d := self.describe(sid)) is not None]

    def reset(self, stream_id: str) -> bool:
        if stream_id not in self.streams:
            return False
        old = self.streams[stream_id]
        self._release(old)
        self.streams[stream_id] = _Stream(StreamTracker(self.cfg))
        return True

    def delete(self, stream_id: str) -> bool:
        s = self.streams.pop(stream_id, None)
        if s is not None:
            self._release(s)
        return s is not None

    def export_state(self, stream_id: str) -> dict[str, Any] | None:
        s = self.streams.get(stream_id)
        return None if s is None else s.tracker.state_dict()

    def import_state(self, stream_id: str, state: dict[str, Any]) -> None:
        self.streams[stream_id] = _Stream(StreamTracker.from_state(self.cfg, state))


TrackerActor = ray.remote(TrackerShard)


def shard_of(stream_id: str, shards: int) -> int:
    """Stable across processes and restarts (unlike ``hash``)."""
    return zlib.crc32(stream_id.encode()) % shards


def actor_name(cfg: PipelineConfig, size: int, i: int) -> str:
    """Named after the config, so a redeploy with other settings never reuses stale actors."""
    digest = zlib.crc32(f"{cfg.model_dump_json()}|{size}".encode())
    return f"posefleet-tracker-{digest:08x}-{i}"


def tracker_pool(
    cfg: PipelineConfig, size: int, namespace: str, num_cpus: float = 0.0, frame_timeout_s: float = 10.0
) -> list[ray.actor.ActorHandle]:
    """Get or create the named tracker actors, so every ingress replica shares the same pool.

    Actor ``i`` prefers the ``i``-th alive node (soft affinity), spreading streams over the cluster.
    """
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))

    def placement(i: int) -> NodeAffinitySchedulingStrategy | str:
        return NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True) if nodes else "DEFAULT"

    return [
        TrackerActor.options(  # type: ignore[attr-defined]
            name=actor_name(cfg, size, i),
            namespace=namespace,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=num_cpus,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=1000,
            scheduling_strategy=placement(i),
        ).remote(cfg, frame_timeout_s)
        for i in range(size)
    ]
