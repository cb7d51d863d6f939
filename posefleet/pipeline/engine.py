"""The in-process pipeline: local models shared by every stream, one :class:`StreamState` per stream.

``posefleet run`` (one or several files), evaluation and the bench use it; it drives the same
:class:`~posefleet.pipeline.frames.FramePipeline` as the server's stream workers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from posefleet.config import PipelineConfig
from posefleet.image_io import as_bgr, decode_image
from posefleet.pipeline.frames import FrameInput, FramePipeline, LocalModels, run_sync
from posefleet.pipeline.schema import FrameResult
from posefleet.pipeline.tracker import StreamState


class Pipeline:
    """Frames of named streams in, tracked people out; frames of different streams batch together."""

    def __init__(self, cfg: PipelineConfig, models: LocalModels | None = None):
        self.cfg = cfg
        self.models = models or LocalModels(cfg)
        self.frames = FramePipeline(cfg)
        self.streams: dict[str, StreamState] = {}

    def stream(self, stream_id: str) -> StreamState:
        if stream_id not in self.streams:
            self.streams[stream_id] = StreamState(self.cfg, self.cfg.settings_for(stream_id))
        return self.streams[stream_id]

    def forget(self, stream_id: str) -> None:
        """Drop a stream's state (its next frame starts a new stream)."""
        self.streams.pop(stream_id, None)

    def process_bytes(
        self, stream_id: str, data: bytes, frame_index: int | None = None, timestamp: float | None = None
    ) -> FrameResult:
        t0 = time.perf_counter()
        frame = decode_image(data, self.cfg.max_image_pixels, self.cfg.max_image_side)
        decode_ms = round((time.perf_counter() - t0) * 1000.0, 3)
        return self.process(stream_id, frame, frame_index, timestamp, decode_ms=decode_ms)

    def process(
        self,
        stream_id: str,
        frame: np.ndarray,
        frame_index: int | None = None,
        timestamp: float | None = None,
        decode_ms: float = 0.0,
    ) -> FrameResult:
        return self.process_many([(stream_id, frame, frame_index, timestamp, decode_ms)])[0]

    def process_many(
        self, frames: Sequence[tuple[str, np.ndarray, int | None, float | None, float]]
    ) -> list[FrameResult]:
        """One frame each of several streams, ``(stream_id, image, frame_index, timestamp, decode_ms)``,
        in one batched pass: one detector call and one pose call for all of them."""
        inputs = [
            FrameInput(sid, self.stream(sid), as_bgr(image), index, ts, decode_ms)
            for sid, image, index, ts, decode_ms in frames
        ]
        return run_sync(self.frames.steps(inputs), self.models)
