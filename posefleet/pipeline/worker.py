"""A stream worker's body (plain Python, tested without Ray): the state of many streams, and each
frame of theirs taken from encoded bytes to tracked people in one place.

A frame's whole life is here: admission (``admission.py``: one frame in flight per stream, the
overload policy, order checks), decoding, the frame pipeline with its model calls, checkpoints, a
small picture for the viewer. So a frame reaches its stream's state in one hop and its CPU work runs
where the state is.

A stream's state is checkpointed on its first frame and every ``checkpoints.every`` frames; a
restarted worker restores it (ids kept, next frame re-detected). A stream that has no checkpoint
starts over, and its next answer says its ids restarted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from posefleet.config import AdmissionConfig, CheckpointConfig, PipelineConfig, ViewerConfig
from posefleet.errors import FrameAbandoned, FrameDropped, ImageError
from posefleet.image_io import decode_image, encode_jpeg
from posefleet.pipeline.admission import Policy, Turnstile
from posefleet.pipeline.frames import FrameInput, FramePipeline, ModelCall, run_async
from posefleet.pipeline.schema import FrameResult
from posefleet.pipeline.tracker import StreamState

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


class _Stream:
    """A stream as a worker holds it: its tracking state, its turnstile, its counters."""

    def __init__(self, state: StreamState, admission: AdmissionConfig, policy: Policy):
        self.state = state
        self.gate = Turnstile(admission, self._abandoned, policy)
        self.frames = 0
        self.ids_restarted = self.state_recovered = False
        self.created = self.last_seen = time.time()
        self.last_thumbnail = 0.0

    def _abandoned(self) -> None:
        self.state.force_detect = True  # the frame in flight died or stalled: re-detect


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
        self.loading: dict[str, asyncio.Future] = {}  # streams whose checkpoint is being looked up

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
            stream.gate.leave()
            raise
        try:
            steps = self.pipeline.steps([FrameInput(stream_id, stream.state, image, index, timestamp, decode_ms)])
            [result] = await run_async(steps, self.models, lambda: self._still_held(stream, index))
        except FrameAbandoned:
            raise
        except BaseException:
            if stream.gate.holds(index):
                stream.gate.leave(failed=True)
            raise
        stream.frames += 1
        result.dropped_before = stream.gate.dropped_unreported
        result.ids_restarted, result.state_recovered = stream.ids_restarted, stream.state_recovered
        stream.gate.dropped_unreported, stream.ids_restarted, stream.state_recovered = 0, False, False
        stream.gate.leave()
        if self.checkpoints is not None and (stream.frames == 1 or stream.frames % self.checkpointing.every == 0):
            await self.checkpoints.put(stream_id, stream.state.state_dict())
        return Served(result, await self._thumbnail(stream, image))

    def _still_held(self, stream: _Stream, index: int) -> None:
        """After a model call: if the frame was abandoned meanwhile, stop before it touches the stream's
        state again (the next frame owns it now)."""
        if not stream.gate.holds(index):
            raise FrameAbandoned(f"frame {index} was abandoned after {self.admission.frame_timeout_s} s")

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
        """The stream, created (or restored from its checkpoint) by its first frame. Frames arriving while
        that checkpoint is looked up wait for the one lookup and go on in the order they came."""
        s = self.streams.get(stream_id)
        if s is not None:
            return s
        loading = self.loading.get(stream_id)
        if loading is not None:
            return await asyncio.shield(loading)  # waiters resume in arrival order
        self.loading[stream_id] = loading = asyncio.get_running_loop().create_future()
        try:
            s = _Stream(StreamState(self.cfg), self.admission, self.admission.overload_policy)
            if self.restarted and self.checkpoints is not None:
                state = await self.checkpoints.get(stream_id)
                if state is not None:
                    s.state = StreamState.from_state(self.cfg, state)
                    s.state.force_detect = True
                    s.state_recovered = True
                elif frame_index:
                    s.ids_restarted = True  # frames came before, but their tracks are gone
            self.streams[stream_id] = s
            loading.set_result(s)
            return s
        except BaseException as exc:
            loading.set_exception(exc)
            raise
        finally:
            del self.loading[stream_id]

    async def admit(self, stream_id: str, frame_index: int | None, policy: Policy | None) -> tuple[_Stream, int]:
        """Wait for the stream's turn and check the frame's order; the frame is then the stream's one in
        flight. Raises FrameDropped when the policy drops it, FrameOrderError or StreamBusy."""
        s = await self._get(stream_id, frame_index)
        if policy is not None:
            s.gate.policy = policy
        index = await s.gate.enter(frame_index, s.state.last_index, s.state.check_order)
        s.last_seen = time.time()
        return s, index

    # -- management -------------------------------------------------------------------------
    def describe(self, stream_id: str) -> dict[str, Any] | None:
        s = self.streams.get(stream_id)
        if s is None:
            return None
        tracks = s.state.tracker
        return {
            "stream_id": stream_id,
            "frames": s.frames,
            "dropped": s.gate.dropped,
            "policy": s.gate.policy,
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
        old.gate.close("the stream was reset")
        self.streams[stream_id] = _Stream(StreamState(self.cfg), self.admission, old.gate.policy)
        if self.checkpoints is not None:
            await self.checkpoints.delete(stream_id)
        return True

    async def delete(self, stream_id: str) -> bool:
        s = self.streams.pop(stream_id, None)
        if s is not None:
            s.gate.close("the stream was deleted")
        if self.checkpoints is not None:
            await self.checkpoints.delete(stream_id)
        return s is not None


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
