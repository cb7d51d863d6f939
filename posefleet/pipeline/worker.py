"""A stream worker's body (plain Python, tested without Ray): the state of many streams, and each
frame of theirs taken from encoded bytes to tracked people in one place.

A frame's whole life is here: admission (``admission.py``: one frame in flight per stream, the
overload policy, order checks), decoding, the frame pipeline with its model calls, checkpoints, a
small picture for the viewer. So a frame reaches its stream's state in one hop and its CPU work runs
where the state is.

With several workers, the checkpoint store (:mod:`posefleet.pipeline.checkpoints`) also says which worker
holds each stream; a new stream is claimed by its worker before its first frame touches any state.

A stream's state is checkpointed on its first frame and every ``checkpoints.every`` frames; a
restarted worker restores every stream of its share at start (listed at once, ids kept, next frame
re-detected). A stream that has no checkpoint starts over, and its next answer says its ids restarted.

State is bounded: image headers are checked before a frame touches its stream, decoded pixels in
flight fit a budget, streams are capped (in all and per client) and forgotten after ``stream_idle_s``
without a frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
from pydantic import ValidationError

from posefleet.config import PipelineConfig, StreamSettings
from posefleet.errors import FrameAbandoned, FrameDropped, HeldElsewhere, InvalidRequest, OverCap, problems
from posefleet.image_io import Picture, as_bgr, check_image, check_size, encode_jpeg
from posefleet.pipeline.admission import Budget, Policy, Turnstile
from posefleet.pipeline.frames import FrameInput, FramePipeline, ModelCall, run_async
from posefleet.pipeline.ordering import CallOrder, Sent
from posefleet.pipeline.schema import FrameResult
from posefleet.pipeline.tracker import StreamState
from posefleet.serving_config import AdmissionConfig, CheckpointConfig, ViewerConfig

AsyncModels = Callable[[ModelCall], Awaitable[list]]


class Checkpoints(Protocol):
    async def put(self, stream_id: str, state: dict[str, Any]) -> None: ...
    async def delete(self, stream_id: str) -> None: ...
    async def claim(self, stream_id: str) -> int: ...


@dataclass
class Served:
    """A frame's answer, and now and then a small JPEG of it for the viewer."""

    result: FrameResult
    thumbnail: bytes | None = None


class _Stream:
    """A stream as a worker holds it: its tracking state, its turnstile, its counters."""

    def __init__(self, state: StreamState, admission: AdmissionConfig, policy: Policy, client: str = ""):
        self.state = state
        self.client = client  # who created it: streams are capped per client
        self.gate = Turnstile(admission, self._abandoned, policy)
        self.frames = 0
        self.ids_restarted = self.state_recovered = False
        self.created = self.last_seen = time.time()
        self.last_thumbnail = float("-inf")

    def _abandoned(self) -> None:
        self.state.force_detect = True  # the frame in flight died or stalled: re-detect

    def busy(self) -> bool:
        return self.gate.pending is not None or bool(self.gate.waiting)


class StreamWorker:
    """Streams' state plus the frame pipeline; ``models`` runs model calls (local queues or Serve handles)."""

    def __init__(
        self,
        cfg: PipelineConfig,
        admission: AdmissionConfig,
        models: AsyncModels,
        checkpoints: Checkpoints | None = None,
        restored: dict[str, dict[str, Any]] | None = None,
        checkpointing: CheckpointConfig | None = None,
        thumbnails: ViewerConfig | None = None,
        shard: int = 0,
    ):
        """``restored``: a restarted worker's streams as their checkpoints hold them (None: a first start);
        ``shard``: this worker's number, the holder the checkpoint store names when it places a stream here."""
        self.cfg = cfg
        self.shard = shard
        self.admission = admission
        self.checkpointing = checkpointing or CheckpointConfig()
        self.thumbnails = thumbnails if thumbnails is not None and thumbnails.enabled else None
        self.models = models
        self.pipeline = FramePipeline(cfg)
        self.checkpoints = checkpoints
        self.restarted = restored is not None
        self.pixels = Budget(admission.max_decoding_pixels, admission.frame_timeout_s)
        self.order = CallOrder(admission.order_wait_s, 4 * admission.max_streams)
        self.streams: dict[str, _Stream] = {}
        self.per_client: dict[str, int] = {}
        self.creating: dict[str, asyncio.Future] = {}  # streams whose first frame is creating them
        for stream_id, state in (restored or {}).items():
            s = self._add(stream_id, StreamState.from_state(cfg, state), state.get("client", ""))
            s.state.force_detect = s.state_recovered = True
            s.frames = state.get("frames", 0)
            s.created = state.get("created", s.created)
        self.sweeper: asyncio.Task | None = None
        self.last_eviction = float("-inf")

    # -- a frame ------------------------------------------------------------------------------
    async def process(
        self,
        stream_id: str,
        body: bytes | np.ndarray,
        frame_index: int | None = None,
        timestamp: float | None = None,
        policy: Policy | None = None,
        client: str = "",
        thumbnail: bool = True,
        sent: Sent | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Served:
        """Encoded frame (or a decoded BGR image) in, its result out (``dropped`` when superseded).
        ``thumbnail``: whether a viewer watches (a picture every ``viewer.thumbnail_interval_s``; while nobody
        watches, one every ``viewer.idle_thumbnail_interval_s``, what an ended stream shows); ``sent``: how
        the ingress sent it, so frames of a stream in flight together are let in in the order sent;
        ``settings``: the stream's own settings as its camera source was given them, applied where the stream
        starts (its first frame, here or after a restart without a checkpoint); a later PUT of settings stays.

        Raises ImageError, FrameOrderError, StreamBusy, OverCap, Unavailable or FrameAbandoned; the
        stream's state changes only for a frame that was admitted and decoded.
        """
        limits = (self.cfg.max_image_pixels, self.cfg.max_image_side)
        await self.order.wait(stream_id, sent)  # the frame sent before this one first
        try:
            if isinstance(body, np.ndarray):  # decoded already, where a camera source read it
                decoded: np.ndarray | None = as_bgr(body)
                height, width = decoded.shape[:2]
                check_size(width, height, *limits)
                fmt = "array"
            else:  # before the frame touches its stream; a bounded header walk (~5 us), so on the event loop
                decoded = None
                fmt, width, height = check_image(body, *limits)
        except BaseException:
            self.order.went(stream_id, sent)  # refused: the frame sent after it need not wait for it
            raise
        self._start_sweeper()
        try:
            stream, index = await self.admit(stream_id, frame_index, policy, client, sent)
        except FrameDropped as exc:  # by the stream's policy: an answer, not an error
            dropped = FrameResult(
                stream_id=stream_id, frame_index=frame_index if frame_index is not None else -1, timestamp=timestamp,
                width=width, height=height, dropped=True, note=str(exc),
            )  # fmt: skip
            return Served(dropped)
        was = stream.state.last_index
        try:
            if settings is not None and stream.state.last_index < 0:  # a source's stream, its first frame here
                stream.state.configure(StreamSettings.model_validate(settings))
            picture = Picture.encoded(body, fmt, width, height) if decoded is None else Picture.decoded(decoded)
            drawing = self._thumbnail_due(stream, thumbnail)
            min_scale = self._thumbnail_width / width if drawing else 0.0
            async with self.pixels.hold(width * height):
                steps = self.pipeline.steps([FrameInput(stream_id, stream.state, picture, index, timestamp, min_scale)])
                [result] = await run_async(steps, self.models, lambda: self._still_held(stream, index))
        except FrameAbandoned:
            raise
        except BaseException:
            if stream.gate.holds(index):
                stream.gate.leave(failed=True)
            if stream.state.last_index < 0 and not stream.busy() and self.streams.get(stream_id) is stream:
                self._remove(stream_id)  # a stream exists from its first frame that was served
                if self.checkpoints is not None:
                    await self.checkpoints.delete(stream_id)  # and its place with it
            raise
        stream.frames += 1
        if index <= was:
            result.note = f"frame index restarted at {index} (the stream was at {was})"
        result.dropped_before = stream.gate.dropped_unreported
        result.ids_restarted, result.state_recovered = stream.ids_restarted, stream.state_recovered
        stream.gate.dropped_unreported, stream.ids_restarted, stream.state_recovered = 0, False, False
        stream.gate.leave()
        if stream.frames == 1 or stream.frames % self.checkpointing.every == 0:
            await self._checkpoint(stream_id, stream)
        return Served(result, await asyncio.to_thread(self._small_jpeg, picture.image) if drawing else None)

    async def _checkpoint(self, stream_id: str, stream: _Stream) -> None:
        if self.checkpoints is not None:
            extra = {"client": stream.client, "frames": stream.frames, "created": stream.created}
            await self.checkpoints.put(stream_id, stream.state.state_dict() | extra)

    def _still_held(self, stream: _Stream, index: int) -> None:
        """After a model call: if the frame was abandoned meanwhile, stop before it touches the stream's
        state again (the next frame owns it now)."""
        if not stream.gate.holds(index):
            raise FrameAbandoned(f"frame {index} was abandoned after {self.admission.frame_timeout_s} s")

    def _thumbnail_due(self, stream: _Stream, watched: bool) -> bool:
        """Whether this frame gets a small picture (its pixels are then decoded at least that large)."""
        if self.thumbnails is None:
            return False
        now = time.monotonic()
        c = self.thumbnails
        if now - stream.last_thumbnail < (c.thumbnail_interval_s if watched else c.idle_thumbnail_interval_s):
            return False
        stream.last_thumbnail = now
        return True

    @property
    def _thumbnail_width(self) -> int:
        return self.thumbnails.thumbnail_width if self.thumbnails is not None else 0

    def _small_jpeg(self, image: np.ndarray) -> bytes:
        h, w = image.shape[:2]
        width = min(w, self._thumbnail_width)
        small = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        return encode_jpeg(small, 70)

    # -- admission ----------------------------------------------------------------------------
    def _add(self, stream_id: str, state: StreamState, client: str) -> _Stream:
        policy = state.settings.policy or self.admission.overload_policy  # the stream's own, else the deploy's
        s = self.streams[stream_id] = _Stream(state, self.admission, policy, client)
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return s

    def _remove(self, stream_id: str) -> _Stream | None:
        s = self.streams.pop(stream_id, None)
        if s is not None:
            s.gate.close("the stream was deleted")
            left = self.per_client[s.client] - 1
            if left:
                self.per_client[s.client] = left
            else:
                del self.per_client[s.client]
        return s

    async def _new_stream(self, stream_id: str, frame_index: int | None, client: str) -> _Stream:
        """A stream's first frame creates it, within the caps (idle streams make room first). Frames of the
        stream arriving meanwhile wait, in arrival order, and then enter its turnstile behind the first
        (the claim is a Ray call: their own claims could come back in any order)."""
        while (creating := self.creating.get(stream_id)) is not None:
            await asyncio.wait({creating})
            if (s := self.streams.get(stream_id)) is not None:
                return s
        done = self.creating[stream_id] = asyncio.get_running_loop().create_future()
        try:
            return await self._create(stream_id, frame_index, client)
        finally:  # the frames waiting wake after the first has entered the turnstile (it does not wait there)
            del self.creating[stream_id]
            done.set_result(None)

    async def _create(self, stream_id: str, frame_index: int | None, client: str) -> _Stream:
        caps = self.admission
        at_cap = len(self.streams) >= caps.max_streams or self.per_client.get(client, 0) >= caps.max_streams_per_client
        if at_cap and time.monotonic() - self.last_eviction > 1.0:  # a flood of new ids scans at most once a second
            await self.evict_idle()
        if len(self.streams) >= caps.max_streams:
            raise OverCap(f"{len(self.streams)} streams are held here (admission.max_streams)")
        if self.per_client.get(client, 0) >= caps.max_streams_per_client:
            raise OverCap(f"this client holds {caps.max_streams_per_client} streams here (max_streams_per_client)")
        if self.checkpoints is not None:
            holder = await self.checkpoints.claim(stream_id)
            if holder != self.shard:
                raise HeldElsewhere(holder)
        s = self._add(stream_id, StreamState(self.cfg, self.cfg.settings_for(stream_id)), client)
        s.ids_restarted = self.restarted and bool(frame_index)  # frames came before, but their tracks are gone
        return s

    async def admit(
        self, stream_id: str, frame_index: int | None, policy: Policy | None, client: str = "",
        sent: Sent | None = None,
    ) -> tuple[_Stream, int]:  # fmt: skip
        """Wait for the stream's turn and check the frame's order; the frame is then the stream's one in
        flight. Raises FrameDropped when the policy drops it, FrameOrderError, StreamBusy or OverCap."""
        try:
            s = self.streams.get(stream_id) or await self._new_stream(stream_id, frame_index, client)
        finally:  # the frame sent after this one goes on once this one is in line (or refused)
            self.order.went(stream_id, sent)
        index = await s.gate.enter(frame_index, s.state, policy)  # in line at once: enter awaits after that
        s.last_seen = time.time()
        return s, index

    # -- idle streams ---------------------------------------------------------------------------
    async def evict_idle(self) -> list[str]:
        """Forget streams with no frame for ``admission.stream_idle_s`` (and none in flight), checkpoints too."""
        self.last_eviction = time.monotonic()
        cutoff = time.time() - self.admission.stream_idle_s
        idle = [sid for sid, s in self.streams.items() if s.last_seen < cutoff and not s.busy()]
        for sid in idle:
            await self.delete(sid)
        return idle

    def _start_sweeper(self) -> None:
        if self.sweeper is None or self.sweeper.done():
            self.sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Evict idle streams now and then, also when no frame comes (that is when they pile up)."""
        period = min(self.admission.stream_idle_s / 4, 30.0)
        while self.streams:
            await asyncio.sleep(period)
            await self.evict_idle()

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
            "restored": s.state_recovered,
            "worker": self.shard,
        }

    def list_streams(self, after: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Streams by id, those after ``after``, at most ``limit``: one page of ``GET /v1/streams``."""
        ids = sorted(sid for sid in self.streams if after is None or sid > after)
        return [d for sid in ids[:limit] if (d := self.describe(sid)) is not None]

    async def reset(self, stream_id: str) -> bool:
        old = self.streams.get(stream_id)
        if old is None:
            return False
        old.gate.close("the stream was reset")
        fresh = StreamState(self.cfg, old.state.settings)  # a reset forgets tracks, not the camera's settings
        self.streams[stream_id] = _Stream(fresh, self.admission, old.gate.policy, old.client)
        if self.checkpoints is not None:
            await self.checkpoints.delete(stream_id)
        return True

    def settings(self, stream_id: str) -> dict[str, Any] | None:
        s = self.streams.get(stream_id)
        return None if s is None else s.state.settings.model_dump()

    async def configure(self, stream_id: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """Set a stream's own settings (region of interest, detect_every, policy) from the next frame on; None:
        unknown stream.
        Raises InvalidRequest with the reason for settings that do not fit its frames. Checkpointed at once."""
        s = self.streams.get(stream_id)
        if s is None:
            return None
        try:
            s.state.configure(StreamSettings.model_validate(settings))
        except ValidationError as exc:
            raise InvalidRequest(problems(exc)) from None
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        if s.state.settings.policy is not None:
            s.gate.policy = s.state.settings.policy
        await self._checkpoint(stream_id, s)
        return s.state.settings.model_dump()

    async def delete(self, stream_id: str) -> bool:
        s = self._remove(stream_id)
        if self.checkpoints is not None:
            await self.checkpoints.delete(stream_id)
        return s is not None
