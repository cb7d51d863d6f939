"""The in-process pipeline: one shared detector and pose model, one :class:`StreamTracker` per stream.

This is the plain-Python core that the Ray actors and Serve deployments wrap; it is also what
``posefleet run`` uses on a single file.
"""

from __future__ import annotations

import time

import numpy as np

from posefleet.config import PipelineConfig
from posefleet.image_io import as_bgr, decode_image
from posefleet.pipeline.detector import Detector
from posefleet.pipeline.pose import PoseEstimator
from posefleet.pipeline.schema import FrameResult, StageTimings
from posefleet.pipeline.tracker import StreamTracker


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


class PoseEngine:
    """The models, loaded once per process and shared by every stream."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.detector = Detector(cfg.detector)
        self.pose = PoseEstimator(cfg.pose)


class Pipeline:
    """Frames of named streams in, tracked people out."""

    def __init__(self, cfg: PipelineConfig, engine: PoseEngine | None = None):
        self.cfg = cfg
        self.engine = engine or PoseEngine(cfg)
        self.streams: dict[str, StreamTracker] = {}

    def stream(self, stream_id: str) -> StreamTracker:
        if stream_id not in self.streams:
            self.streams[stream_id] = StreamTracker(self.cfg)
        return self.streams[stream_id]

    def process_bytes(
        self, stream_id: str, data: bytes, frame_index: int | None = None, timestamp: float | None = None
    ) -> FrameResult:
        t0 = time.perf_counter()
        frame = decode_image(data, self.cfg.max_image_pixels, self.cfg.max_image_side)
        return self.process(stream_id, frame, frame_index, timestamp, decode_ms=_ms(t0))

    def process(
        self,
        stream_id: str,
        frame: np.ndarray,
        frame_index: int | None = None,
        timestamp: float | None = None,
        decode_ms: float = 0.0,
    ) -> FrameResult:
        start = time.perf_counter()
        frame = as_bgr(frame)
        h, w = frame.shape[:2]
        if h * w > self.cfg.max_image_pixels or max(h, w) > self.cfg.max_image_side:
            raise ValueError(f"frame is {w}x{h}, over the configured limits")
        state = self.stream(stream_id)
        index = state.last_index + 1 if frame_index is None else frame_index
        timings = StageTimings(decode_ms=decode_ms)

        t = time.perf_counter()
        plan = state.plan(index)
        timings.track_ms += _ms(t)
        if plan.detect:
            t = time.perf_counter()
            dets = self.engine.detector(frame)
            timings.detect_ms = _ms(t)
            t = time.perf_counter()
            plan = state.associate(plan, dets)
            timings.track_ms += _ms(t)

        t = time.perf_counter()
        keypoints, pose_scores = self.engine.pose(frame, plan.boxes)
        timings.pose_ms = _ms(t)

        t = time.perf_counter()
        people = state.finish(plan, keypoints, pose_scores, timestamp)
        timings.track_ms = round(timings.track_ms + _ms(t), 3)
        timings.total_ms = round(decode_ms + _ms(start), 3)
        return FrameResult(
            stream_id=stream_id, frame_index=index, timestamp=timestamp, width=w, height=h,
            detected=plan.detect, people=people, timings=timings,
        )  # fmt: skip
