"""A stream worker's body (plain Python, tested without Ray): the state of many streams, and each
frame of theirs taken from encoded bytes to tracked people in one place.

A frame's whole life is here: admission (one frame in flight per stream, the overload policy, order
checks), decoding, the frame pipeline with its model calls, checkpoints, a small picture for the
viewer. So a frame reaches its stream's state in one hop and its CPU work runs where the state is.

Per stream, frames that arrive while one is in flight wait their turn, so its frames apply in
order even when a client sends them concurrently. Under ``drop_oldest`` (default) only the newest
waiting frame is kept and older ones are answered as dropped; under ``wait`` up to
``max_waiting_per_stream`` queue and more are refused. A frame older than one already applied is
dropped (``drop_oldest``) or refused (``wait``); a repeated index is always refused. A frame in flight
longer than ``frame_timeout_s`` is abandoned: the next frame takes over and re-detects.

A stream's state is checkpointed on its first frame and every ``checkpoints.every`` frames; a
restarted worker restores it (ids kept, next frame re-detected). A stream that has no checkpoint
starts over, and its next answer says its ids restarted.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from posefleet.config import AdmissionConfig, CheckpointConfig, PipelineConfig, ViewerConfig
from posefleet.errors import FrameAbandoned, FrameDropped, FrameOrderError, ImageError, StreamBusy
from posefleet.image_io import decode_image, encode_jpeg
from posefleet.pipeline.frames import FrameInput, FramePipeline, ModelCall, Steps
from posefleet.pipeline.schema import FrameResult
from posefleet.pipeline.tracker import StreamState

Policy = Literal["drop_oldest", "wait"]
AsyncModels = Callable[[ModelCall], Awaitable[list]]


class Checkpoints(Protocol):
    async def put(self, stream_id: str, state: dict[str, Any]) -> None: ...
    async def get(self, stream_id: str) -> dict[str, Any] | None: ...
    async def delete(self, stream_id: str) -> None: ...


@dataclass
class Served:
    """A frame's answer, and now and then a small JPEG of it for the viewer."""

    result: FrameResult
    thumbnail: bytes | None = None


@dataclass
class _Stream:
    state: StreamState
    policy: Policy = "drop_oldest"
    frames: int = 0
    dropped: int = 0
    dropped_unreported: int = 0
    ids_restarted: bool = False
    state_recovered: bool = False
    created: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    last_thumbnail: float = 0.0
    pending: int | None = None  # index of the frame in flight (-1: handed over, not yet admitted)
    pending_since: float = 0.0
    waiting: collections.deque = field(default_factory=collections.deque)  # (index, future)


class StreamWorker:
    """Streams' state plus the frame pipeline; ``models`` runs model calls (local queues or Serve handles)."""

    def __init__(
        self,
        cfg: PipelineConfig,
        admission: AdmissionConfig,
        models: AsyncModels,
        checkpoints: Checkpoints | None = None,
        restarted: bool = False,
        checkpointing: CheckpointConfig | None = None,
        thumbnails: ViewerConfig | None = None,
    ):
        self.cfg = cfg
        self.admission = admission
        self.checkpointing = checkpointing or CheckpointConfig()
        self.thumbnails = thumbnails if thumbnails is not None and thumbnails.enabled else None
        self.models = models
        self.pipeline = FramePipeline(cfg)
        self.checkpoints = checkpoints
        self.restarted = restarted
        self.streams: dict[str, _Stream] = {}

    # -- a frame ------------------------------------------------------------------------------
    async def process(
        self,
        stream_id: str,
        body: bytes,
        frame_index: int | None = None,
        timestamp: float | None = None,
        policy: Policy | None = None,
    ) -> Served:
        """Encoded frame in, its result out (``dropped`` when superseded).

        Raises FrameOrderError, StreamBusy, ImageError or FrameAbandoned; the stream's state changes
        only for a frame that was admitted and decoded.
        """
        try:
            stream, index = await self.admit(stream_id, frame_index, policy)
        except FrameDropped as exc:  # by the stream's policy: an answer, not an error
            dropped = FrameResult(
                stream_id=stream_id, frame_index=frame_index if frame_index is not None else -1, timestamp=timestamp,
                width=0, height=0, dropped=True, note=str(exc),
            )  # fmt: skip
            return Served(dropped)
        try:
            t0 = time.perf_counter()
            limits = (self.cfg.max_image_pixels, self.cfg.max_image_side)
            image = await asyncio.to_thread(decode_image, body, *limits)
            decode_ms = round((time.perf_counter() - t0) * 1000.0, 3)
        except ImageError:
            self._release(stream)
            raise
        try:
            steps = self.pipeline.steps([FrameInput(stream_id, stream.state, image, index, timestamp, decode_ms)])
            [result] = await self._drive(steps, stream, index)
        except FrameAbandoned:
            raise
        except BaseException:
            if stream.pending == index:
                self._release(stream, failed=True)
            raise
        stream.frames += 1
        result.dropped_before = stream.dropped_unreported
        result.ids_restarted, result.state_recovered = stream.ids_restarted, stream.state_recovered
        stream.dropped_unreported, stream.ids_restarted, stream.state_recovered = 0, False, False
        self._release(stream)
        if self.checkpoints is not None and (stream.frames == 1 or stream.frames % self.checkpointing.every == 0):
            await self.checkpoints.put(stream_id, stream.state.state_dict())
        return Served(result, await self._thumbnail(stream, image))

    async def _drive(self, steps: Steps, stream: _Stream, index: int) -> list[FrameResult]:
        """Run the pipeline's steps; if the frame was abandoned during a model call, stop before it
        touches the stream's state again (the next frame owns it now)."""
        try:
            call = next(steps)
            while True:
                outputs = await self.models(call)
                if stream.pending != index:
                    steps.close()
                    raise FrameAbandoned(f"frame {index} was abandoned after {self.admission.frame_timeout_s} s")
                call = steps.send(outputs)
        except StopIteration as done:
            return done.value

    async def _thumbnail(self, stream: _Stream, image: np.ndarray) -> bytes | None:
        if self.thumbnails is None:
            return None
        now = time.monotonic()
        if now - stream.last_thumbnail < self.thumbnails.thumbnail_interval_s:
            return None
        stream.last_thumbnail = now
        return await asyncio.to_thread(self._small_jpeg, image)

    def _small_jpeg(self, image: np.ndarray) -> bytes:
        h, w = image.shape[:2]
        width = min(w, self.thumbnails.thumbnail_width)  # type: ignore[union-attr]
        small = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        return encode_jpeg(small, 70)

    # -- admission ----------------------------------------------------------------------------
    async def _get(self, stream_id: str, frame_index: int | None) -> _Stream:
        s = self.streams.get(stream_id)
        if s is not None:
            return s
        s = _Stream(StreamState(self.cfg), policy=self.admission.overload_policy)
        if self.restarted and self.checkpoints is not None:
            state = await self.checkpoints.get(stream_id)
            if stream_id in self.streams:  # another frame restored it meanwhile
                return self.streams[stream_id]
            if state is not None:
                s.state = StreamState.from_state(self.cfg, state)
                s.state.force_detect = True
                s.state_recovered = True
            elif frame_index:
                s.ids_restarted = True  # frames came before, but their tracks are gone
        self.streams[stream_id] = s
        return s

    async def admit(self, stream_id: str, frame_index: int | None, policy: Policy | None) -> tuple[_Stream, int]:
        """Wait for the stream's turn and check the frame's order; the frame is then the stream's one in
        flight. Raises FrameDropped when the policy drops it, FrameOrderError or StreamBusy."""
        s = await self._get(stream_id, frame_index)
        if policy is not None:
            s.policy = policy
        if s.pending is not None or s.waiting:
            await self._wait_turn(s, frame_index)
        else:
            s.pending, s.pending_since = -1, time.monotonic()  # reserved for this frame
        index = s.state.last_index + 1 if frame_index is None else frame_index
        if index < s.state.last_index and s.policy == "drop_oldest":  # late: stale by the stream's policy
            self._release(s)
            s.dropped += 1
            raise FrameDropped(f"frame {index} dropped: frame {s.state.last_index} came before it")
        try:
            s.state.check_order(index)  # duplicates, and late frames under wait
        except FrameOrderError:
            self._release(s)
            raise
        s.pending, s.pending_since = index, time.monotonic()
        s.last_seen = time.time()
        return s, index

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
        elif len(s.waiting) >= self.admission.max_waiting_per_stream:
            raise StreamBusy(f"{len(s.waiting)} frames of this stream are already waiting")
        fut = asyncio.get_running_loop().create_future()
        s.waiting.append((frame_index, fut))
        while True:
            stalled = s.pending
            remaining = self.admission.frame_timeout_s - (time.monotonic() - s.pending_since)
            done, _ = await asyncio.wait({fut}, timeout=max(0.0, remaining))
            if done:
                fut.result()  # raises FrameDropped when superseded
                return
            if s.pending == stalled:  # the frame in flight died or stalled: take over
                self._release(s, failed=True)

    @staticmethod
    def _release(s: _Stream, failed: bool = False) -> None:
        """End the frame in flight and hand the stream to the next waiting frame, if any."""
        if failed:
            s.state.force_detect = True
        s.pending = None
        while s.waiting:
            _, fut = s.waiting.popleft()
            if not fut.done():
                s.pending, s.pending_since = -1, time.monotonic()  # handed over, not yet admitted
                fut.set_result(None)
                return

    # -- management -------------------------------------------------------------------------
    def describe(self, stream_id: str) -> dict[str, Any] | None:
        s = self.streams.get(stream_id)
        if s is None:
            return None
        tracks = s.state.tracker
        return {
            "stream_id": stream_id,
            "frames": s.frames,
            "dropped": s.dropped,
            "policy": s.policy,
            "last_frame_index": s.state.last_index,
            "active_tracks": [t.track_id for t in tracks.active()],
            "lost_tracks": len(tracks.lost),
            "next_track_id": tracks.next_id,
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
        self.streams[stream_id] = _Stream(StreamState(self.cfg), policy=old.policy)
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


class CheckpointStore:
    """Latest state of every stream, kept apart from the workers so it outlives them."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}

    async def put(self, stream_id: str, state: dict[str, Any]) -> None:
        self.states[stream_id] = state

    def put_many(self, states: dict[str, dict[str, Any]]) -> None:
        """Several streams' states in one call (workers send theirs together, once a flush period)."""
        self.states.update(states)

    def holds_any(self) -> bool:
        return bool(self.states)

    async def get(self, stream_id: str) -> dict[str, Any] | None:
        return self.states.get(stream_id)

    async def delete(self, stream_id: str) -> None:
        self.states.pop(stream_id, None)
