"""Frame processing behind the HTTP layer: admission by the stream's tracker actor, one decode,
the detector and pose deployments, the tracker again, the viewer hub. The ingress maps its
exceptions to HTTP answers; benchmarks drive it directly through deployment handles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import cv2
import numpy as np
import ray
from ray.serve.exceptions import BackPressureError

from posefleet import metrics
from posefleet.actors.tracker_actor import FrameDropped, FrameOutcome, shard_of, tracker_pool
from posefleet.actors.viewer_hub import HubFeed, viewer_hub
from posefleet.config import AppConfig
from posefleet.image_io import ImageError, check_image, decode_image, encode_jpeg
from posefleet.pipeline import detector as detector_mod
from posefleet.pipeline import pose as pose_mod
from posefleet.pipeline.schema import FrameResult, StageTimings
from posefleet.pipeline.tracker import FramePlan

log = logging.getLogger("posefleet.processor")
T = TypeVar("T")
FAULTS = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class Unavailable(RuntimeError):
    """Overloaded, or a replica/actor is restarting: the client should retry later (HTTP 503)."""


def reason(exc: BaseException) -> str:
    """The message of an exception raised inside an actor (Ray wraps it; ``cause`` is the original)."""
    return str(getattr(exc, "cause", None) or exc)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def _for_viewer(result: FrameResult) -> dict[str, Any]:
    return result.model_dump(include={"frame_index", "width", "height", "people", "timings", "dropped_before"})


class FrameProcessor:
    """Everything a frame goes through after its bytes arrived; one per ingress replica."""

    def __init__(self, app_cfg: AppConfig, detector: Any, pose: Any):
        self.serving = s = app_cfg.serving
        self.cfg = app_cfg.pipeline_config()
        self.det_decoder = detector_mod.make_decoder(self.cfg.detector)
        self.pose_decoder = pose_mod.make_decoder(self.cfg.pose)
        self.detector = detector
        self.pose = pose
        self.trackers = tracker_pool(
            self.cfg, s.tracker_actors, s.namespace, s.tracker_num_cpus,
            frame_timeout_s=s.frame_timeout_s, policy=s.overload_policy,
            max_waiting=s.max_waiting_per_stream, checkpoint_every=s.checkpoint_every,
        )  # fmt: skip
        self.metrics = metrics.get()
        self.hub = viewer_hub(s.namespace) if s.viewer else None
        self.feed = HubFeed(self.hub, s.viewer_flush_s, _for_viewer) if self.hub is not None else None
        self.last_thumbnail: dict[str, float] = {}

    def tracker(self, stream_id: str) -> ray.actor.ActorHandle:
        return self.trackers[shard_of(stream_id, len(self.trackers))]

    async def retry(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """Run a remote call; on a dead replica/actor retry until ``fault_retry_s``, then Unavailable."""
        deadline = time.monotonic() + self.serving.fault_retry_s
        delay = 0.1
        while True:
            try:
                return await call()
            except BackPressureError as exc:
                self.metrics.frame_errors.inc(tags={"reason": "backpressure"})
                raise Unavailable(f"{what} is overloaded") from exc
            except FAULTS as exc:
                if time.monotonic() + delay > deadline:
                    self.metrics.frame_errors.inc(tags={"reason": "fault"})
                    raise Unavailable(f"{what} is restarting after a failure") from exc
                log.warning("%s failed (%s); retrying", what, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def process(
        self, stream_id: str, body: bytes, index: int | None, ts: float | None, policy: str | None = None
    ) -> FrameResult:
        """One encoded frame of a stream -> its result (or a ``dropped`` result).

        Raises ImageError, FrameOrderError, StreamBusy, FrameNotInFlight or Unavailable.
        """
        start = time.perf_counter()
        try:
            _, w, h = check_image(body, self.cfg.max_image_pixels, self.cfg.max_image_side)
        except ImageError:
            self.metrics.frame_errors.inc(tags={"reason": "image"})
            raise
        tracker = self.tracker(stream_id)
        timings = StageTimings()
        t = time.perf_counter()
        try:
            plan = await self.retry(lambda: tracker.plan.remote(stream_id, index, policy), "stream tracker")
        except FrameDropped as exc:
            self.metrics.frame_errors.inc(tags={"reason": "dropped"})
            if self.feed is not None:
                self.feed.add(stream_id, dropped=1)
            return FrameResult(
                stream_id=stream_id, frame_index=index if index is not None else -1, timestamp=ts, width=w,
                height=h, dropped=True, note=reason(exc),
            )  # fmt: skip
        timings.track_ms = _ms(t)
        try:
            t = time.perf_counter()
            try:
                limits = (self.cfg.max_image_pixels, self.cfg.max_image_side)
                frame = await asyncio.to_thread(decode_image, body, *limits)
            except ImageError:
                tracker.abort.remote(stream_id, plan.frame_index, False)
                self.metrics.frame_errors.inc(tags={"reason": "image"})
                raise
            timings.decode_ms = _ms(t)
            outcome = await self._run(stream_id, tracker, frame, plan, ts, timings)
        except ImageError:
            raise
        except BaseException:
            tracker.abort.remote(stream_id, plan.frame_index)
            raise
        timings.total_ms = _ms(start)
        self.metrics.frames.inc(tags={"stream": stream_id})
        for stage, value in timings.model_dump().items():
            self.metrics.stage_ms.observe(value, tags={"stage": stage.removesuffix("_ms")})
        result = FrameResult(
            stream_id=stream_id, frame_index=plan.frame_index, timestamp=ts, width=w, height=h,
            detected=plan.detect, people=outcome.people, timings=timings,
            dropped_before=outcome.dropped_before, ids_restarted=outcome.ids_restarted,
            state_recovered=outcome.state_recovered,
        )  # fmt: skip
        await self._publish(result, frame)
        return result

    async def _run(
        self, stream_id: str, tracker: Any, frame: np.ndarray, plan: FramePlan, ts: float | None,
        timings: StageTimings,
    ) -> FrameOutcome:  # fmt: skip
        h, w = frame.shape[:2]
        if plan.detect:
            t = time.perf_counter()
            tensors, lbs = await asyncio.to_thread(self.det_decoder.prepare, frame)
            outs = await self.retry(lambda: self.detector.remote(tensors), "detector")
            dets = self.det_decoder.merge(
                [self.det_decoder.decode(o, lb) for o, lb in zip(outs, lbs, strict=True)], w, h
            )
            timings.detect_ms = _ms(t)
            t = time.perf_counter()
            plan = await self.retry(
                lambda: tracker.associate.remote(stream_id, plan, dets.boxes, dets.scores), "stream tracker"
            )
            timings.track_ms += _ms(t)
        t = time.perf_counter()
        if len(plan.boxes):
            batch, mats = await asyncio.to_thread(self.pose_decoder.prepare, frame, plan.boxes)
            outs = await self.retry(lambda: self.pose.remote(batch), "pose model")
            keypoints, scores = self.pose_decoder.decode(outs, mats)
        else:
            keypoints, scores = np.zeros((0, 17, 3), np.float32), np.zeros(0, np.float32)
        timings.pose_ms = _ms(t)
        t = time.perf_counter()
        outcome = await self.retry(
            lambda: tracker.finish.remote(stream_id, plan, keypoints, scores, ts), "stream tracker"
        )
        timings.track_ms = round(timings.track_ms + _ms(t), 3)
        return outcome

    async def _publish(self, result: FrameResult, frame: np.ndarray) -> None:
        """Results to the viewer hub's feed, with a small JPEG now and then."""
        if self.feed is None:
            return
        now = time.monotonic()
        thumb = None
        if now - self.last_thumbnail.get(result.stream_id, 0.0) >= self.serving.thumbnail_interval_s:
            self.last_thumbnail[result.stream_id] = now
            thumb = await asyncio.to_thread(self._thumbnail, frame)
        # drops are counted from the "dropped" answers themselves; dropped_before repeats them
        self.feed.add(result.stream_id, result, result.timings.total_ms, thumbnail=thumb)

    def _thumbnail(self, frame: np.ndarray) -> bytes:
        h, w = frame.shape[:2]
        width = min(w, self.serving.thumbnail_width)
        small = cv2.resize(frame, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        return encode_jpeg(small, 70)
