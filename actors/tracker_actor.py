"""Tracker actors: a fixed pool of Ray actors, each holding the :class:`StreamTracker` of many streams.

A stream always maps to the same actor (a stable hash of its id), so its state lives in one place.

Per stream, one frame is in flight at a time; frames that arrive meanwhile wait their turn, so a
stream's frames are applied in order even when a client sends them concurrently. Under overload
the stream's policy decides what waits: ``drop_oldest`` (default) keeps only the newest waiting
frame and answers the older ones as dropped; ``wait`` queues up to a bound and refuses beyond it.
Either way one stream can hold at most a bounded number of requests, so a flooding camera cannot
starve the others. A frame that arrives after a newer one was applied (a client sending
concurrently) is likewise answered as dropped under ``drop_oldest``, and refused under ``wait``;
a repeated frame index is always refused. A frame in flight longer than ``frame_timeout_s`` is abandoned.

Every ``checkpoint_every`` frames a stream's state is copied to a checkpoint actor. A restarted
tracker actor restores its streams from there (ids kept, next frame re-detected); a stream with
no checkpoint starts over and its next response says its ids restarted.
"""

from __future__ import annotations

import asyncio
import collections
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from posefleet import __version__
from posefleet.config import PipelineConfig
from posefleet.pipeline.detector import Detections
from posefleet.pipeline.schema import Person
from posefleet.pipeline.tracker import FramePlan, StreamTracker

Policy = Literal["drop_oldest", "wait"]


class FrameNotInFlight(RuntimeError):
    """A step for a frame the actor is not processing (abandoned after a timeout, or reset)."""


class FrameDropped(RuntimeError):
    """The frame was not processed: a newer frame of the same stream superseded it."""


class StreamBusy(RuntimeError):
    """The stream already has as many frames waiting as its ``wait`` policy allows."""


class Checkpoints(Protocol):
    async def put(self, stream_id: str, state: dict[str, Any]) -> None: ...
    async def get(self, stream_id: str) -> dict[str, Any] | None: ...
    async def delete(self, stream_id: str) -> None: ...


@dataclass
class FrameOutcome:
    """What ``finish`` hands back beside the people: what happened to the stream on the way."""

    people: list[Person]
    dropped_before: int = 0  # frames of this stream dropped since its previous answered frame
    ids_restarted: bool = False
    state_recovered: bool = False


@dataclass
class _Stream:
    tracker: StreamTracker
    policy: Policy = "drop_oldest"
    frames: int = 0
    dropped: int = 0
    dropped_unreported: int = 0
    ids_restarted: bool = False
    state_recovered: bool = False
    created: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    pending: int | None = None
    pending_since: float = 0.0
    waiting: collections.deque = field(default_factory=collections.deque)  # (index, future)


class TrackerShard:
    """The plain-Python body of a tracker actor (tested without Ray)."""

    def __init__(
        self,
        cfg: PipelineConfig,
        frame_timeout_s: float = 10.0,
        policy: Policy = "drop_oldest",
        max_waiting: int = 4,
        checkpoints: Checkpoints | None = None,
        checkpoint_every: int = 10,
        restarted: bool = False,
    ):
        self.cfg = cfg
        self.frame_timeout_s = frame_timeout_s
        self.default_policy: Policy = policy
        self.max_waiting = max_waiting
        self.checkpoints = checkpoints
        self.checkpoint_every = checkpoint_every
        self.restarted = restarted
        self.streams: dict[str, _Stream] = {}

    async def _get(self, stream_id: str, frame_index: int | None) -> _Stream:
        s = self.streams.get(stream_id)
        if s is not None:
            return s
        s = _Stream(StreamTracker(self.cfg), policy=self.default_policy)
        if self.restarted and self.checkpoints is not None:
            state = await self.checkpoints.get(stream_id)
            if stream_id in self.streams:  # another frame restored it meanwhile
                return self.streams[stream_id]
            if state is not None:
                s.tracker = StreamTracker.from_state(self.cfg, state)
                s.tracker.force_detect = True
                s.state_recovered = True
            elif frame_index:
                s.ids_restarted = True  # frames came before, but their tracks are gone
        self.streams[stream_id] = s
        return s

    # -- the three steps of a frame ---------------------------------------------------------
    async def plan(self, stream_id: str, frame_index: int | None, policy: Policy | None = None) -> FramePlan:
        """Start a frame: wait for the stream's turn, check order, decide what runs."""
        s = await self._get(stream_id, frame_index)
        if policy is not None:
            s.policy = policy
        if s.pending is not None or s.waiting:
            await self._wait_turn(s, frame_index)
        else:
            s.pending, s.pending_since = -1, time.monotonic()  # reserved for this frame
        index = s.tracker.last_index + 1 if frame_index is None else frame_index
        if index < s.tracker.last_index and s.policy == "drop_oldest":  # late: stale by the stream's policy
            self._release(s)
            s.dropped += 1
            raise FrameDropped(f"frame {index} dropped: frame {s.tracker.last_index} came before it")
        try:
            plan = s.tracker.plan(index)  # raises FrameOrderError on duplicates (and late frames under wait)
        except BaseException:
            self._release(s)
            raise
        s.pending, s.pending_since = index, time.monotonic()
        s.last_seen = time.time()
        return plan

    async def _wait_turn(self, s: _Stream, frame_index: int | None) -> None:
        newer = [i for i, _ in s.waiting if i is not None and frame_index is not None and i > frame_index]
        if s.policy == "drop_oldest" and newer:  # a later frame already waits: this one is the stale one
            s.dropped += 1
            s.dropped_unreported += 1
            raise FrameDropped(f"frame {frame_index} dropped: frame {max(newer)} is already waiting")
        if s.policy == "drop_oldest":
            while s.waiting:
                idx, fut = s.waiting.popleft()
                if not fut.done():
                    fut.set_exception(FrameDropped(f"frame {idx} dropped: frame {frame_index} superseded it"))
                    s.dropped += 1
                    s.dropped_unreported += 1
        elif len(s.waiting) >= self.max_waiting:
            raise StreamBusy(f"{len(s.waiting)} frames of this stream are already waiting")
        fut = asyncio.get_running_loop().create_future()
        s.waiting.append((frame_index, fut))
        while True:
            stalled = s.pending
            remaining = self.frame_timeout_s - (time.monotonic() - s.pending_since)
            done, _ = await asyncio.wait({fut}, timeout=max(0.0, remaining))
            if done:
                fut.result()  # raises FrameDropped when superseded
                return
            if s.pending == stalled:  # the frame in flight died or stalled: take over
                self._release(s, failed=True)

    def _in_flight(self, stream_id: str, frame_index: int) -> _Stream:
        s = self.streams.get(stream_id)
        if s is None or s.pending != frame_index:
            raise FrameNotInFlight(f"stream {stream_id!r} frame {frame_index} is not in flight (timed out or reset)")
        return s

    def associate(self, stream_id: str, plan: FramePlan, boxes: np.ndarray, scores: np.ndarray) -> FramePlan:
        s = self._in_flight(stream_id, plan.frame_index)
        return s.tracker.associate(plan, Detections(boxes, scores))

    async def finish(
        self,
        stream_id: str,
        plan: FramePlan,
        keypoints: np.ndarray,
        scores: np.ndarray,
        timestamp: float | None,
    ) -> FrameOutcome:
        s = self._in_flight(stream_id, plan.frame_index)
        try:
            people = s.tracker.finish(plan, keypoints, scores, timestamp)
            s.frames += 1
            outcome = FrameOutcome(people, s.dropped_unreported, s.ids_restarted, s.state_recovered)
            s.dropped_unreported, s.ids_restarted, s.state_recovered = 0, False, False
        finally:
            self._release(s)
        if self.checkpoints is not None and s.frames % self.checkpoint_every == 0:
            await self.checkpoints.put(stream_id, s.tracker.state_dict())
        return outcome

    def abort(self, stream_id: str, frame_index: int, failed: bool = True) -> None:
        """A frame failed between plan and finish: free the stream (and re-detect if ``failed``)."""
        s = self.streams.get(stream_id)
        if s is not None and s.pending == frame_index:
            self._release(s, failed=failed)

    @staticmethod
    def _release(s: _Stream, failed: bool = False) -> None:
        """End the frame in flight and hand the stream to the next waiting frame, if any."""
        if failed:
            s.tracker.force_detect = True
        s.pending = None
        while s.waiting:
            _, fut = s.waiting.popleft()
            if not fut.done():
                s.pending, s.pending_since = -1, time.monotonic()  # handed over, not yet planned
                fut.set_result(None)
                return

    # -- management -------------------------------------------------------------------------
    def describe(self, stream_id: str) -> dict[str, Any] | None:
        s = self.streams.get(stream_id)
        if s is None:
            return None
        return {
            "stream_id": stream_id,
            "frames": s.frames,
            "dropped": s.dropped,
            "policy": s.policy,
            "last_frame_index": s.tracker.last_index,
            "active_tracks": [t.track_id for t in s.tracker.tracker.active()],
            "lost_tracks": len(s.tracker.tracker.lost),
            "next_track_id": s.tracker.tracker.next_id,
            "created": s.created,
            "last_seen": s.last_seen,
        }

    def list_streams(self) -> list[dict[str, Any]]:
        return [d for sid in sorted(self.streams) if (d := self.describe(sid)) is not None]

    async def reset(self, stream_id: str) -> bool:
        old = self.streams.get(stream_id)
        if old is None:
            return False
        self._drop_all(old, "the stream was reset")
        self.streams[stream_id] = _Stream(StreamTracker(self.cfg), policy=old.policy)
        if self.checkpoints is not None:
            await self.checkpoints.delete(stream_id)
        return True

    async def delete(self, stream_id: str) -> bool:
        s = self.streams.pop(stream_id, None)
        if s is not None:
            self._drop_all(s, "the stream was deleted")
        if self.checkpoints is not None:
            await self.checkpoints.delete(stream_id)
        return s is not None

    @staticmethod
    def _drop_all(s: _Stream, why: str) -> None:
        s.pending = None
        while s.waiting:
            _, fut = s.waiting.popleft()
            if not fut.done():
                fut.set_exception(FrameDropped(f"frame dropped: {why}"))

    def export_state(self, stream_id: str) -> dict[str, Any] | None:
        s = self.streams.get(stream_id)
        return None if s is None else s.tracker.state_dict()

    def import_state(self, stream_id: str, state: dict[str, Any]) -> None:
        self.streams[stream_id] = _Stream(StreamTracker.from_state(self.cfg, state), policy=self.default_policy)


class CheckpointStore:
    """Latest state of every stream, kept apart from the tracker actors so it outlives them."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}

    async def put(self, stream_id: str, state: dict[str, Any]) -> None:
        self.states[stream_id] = state

    async def get(self, stream_id: str) -> dict[str, Any] | None:
        return self.states.get(stream_id)

    async def delete(self, stream_id: str) -> None:
        self.states.pop(stream_id, None)


class _RemoteCheckpoints:
    """:class:`Checkpoints` over a :class:`CheckpointStore` actor handle."""

    def __init__(self, handle: ray.actor.ActorHandle):
        self.handle = handle

    async def put(self, stream_id: str, state: dict[str, Any]) -> None:
        self.handle.put.remote(stream_id, state)  # fire and forget: never slows a frame

    async def get(self, stream_id: str) -> dict[str, Any] | None:
        try:
            return await self.handle.get.remote(stream_id)
        except ray.exceptions.RayActorError:
            return None

    async def delete(self, stream_id: str) -> None:
        self.handle.delete.remote(stream_id)


@ray.remote
class TrackerActor(TrackerShard):
    """A :class:`TrackerShard` as a Ray actor; knows when Ray restarted it."""

    def __init__(self, cfg: PipelineConfig, store: ray.actor.ActorHandle | None, **kwargs: Any):
        with warnings.catch_warnings():  # Ray's own body of this public call uses a deprecated property
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        checkpoints = _RemoteCheckpoints(store) if store is not None else None
        super().__init__(cfg, checkpoints=checkpoints, restarted=restarted, **kwargs)


CheckpointActor = ray.remote(CheckpointStore)


def shard_of(stream_id: str, shards: int) -> int:
    """Stable across processes and restarts (unlike ``hash``)."""
    return zlib.crc32(stream_id.encode()) % shards


def _pool_id(cfg: PipelineConfig, size: int) -> str:
    """Named after the version and config: the actors are detached, so a redeploy with other code or
    settings must not reuse the ones still running from before."""
    return f"{zlib.crc32(f'{__version__}|{cfg.model_dump_json()}|{size}'.encode()):08x}"


def tracker_pool(
    cfg: PipelineConfig,
    size: int,
    namespace: str,
    num_cpus: float = 0.0,
    **shard_kwargs: Any,
) -> list[ray.actor.ActorHandle]:
    """Get or create the named tracker actors, so every ingress replica shares the same pool.

    Actor ``i`` prefers the ``i``-th alive node (soft affinity), spreading streams over the cluster.
    Ray restarts a dead tracker actor (``max_restarts=-1``); it restores its streams from the
    checkpoint actor.
    """
    pool = _pool_id(cfg, size)
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))

    def placement(i: int) -> NodeAffinitySchedulingStrategy | str:
        return NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True) if nodes else "DEFAULT"

    store = CheckpointActor.options(  # type: ignore[attr-defined]
        name=f"posefleet-checkpoints-{pool}", namespace=namespace, get_if_exists=True, lifetime="detached",
        num_cpus=0, max_restarts=-1,
    ).remote()  # fmt: skip
    return [
        TrackerActor.options(  # type: ignore[attr-defined]
            name=f"posefleet-tracker-{pool}-{i}",
            namespace=namespace,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=num_cpus,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=1000,
            scheduling_strategy=placement(i),
        ).remote(cfg, store, **shard_kwargs)
        for i in range(size)
    ]
