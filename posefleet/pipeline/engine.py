"""The in-process pipeline: local models shared by every stream, one :class:`StreamState` per stream.

``posefleet run`` (one or several files), evaluation and the bench use it; it drives the same
:class:`~posefleet.pipeline.frames.FramePipeline` as the server's stream workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posefleet.config import PipelineConfig
from posefleet.image_io import Picture, check_image
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
        """An encoded frame: checked, then decoded by the pipeline at the scale its model inputs need."""
        fmt, w, h = check_image(data, self.cfg.max_image_pixels, self.cfg.max_image_side)
        return self.process_many([(stream_id, Picture.encoded(data, fmt, w, h), frame_index, timestamp)])[0]

    def process(
        self,
        stream_id: str,
        frame: np.ndarray,
        frame_index: int | None = None,
        timestamp: float | None = None,
        decode_ms: float = 0.0,
    ) -> FrameResult:
        """A decoded frame (``decode_ms``: what decoding it cost, for its timings)."""
        return self.process_many([(stream_id, Picture.decoded(frame, decode_ms), frame_index, timestamp)])[0]

    def process_many(
        self, frames: Sequence[tuple[str, np.ndarray | Picture, int | None, float | None]], min_scale: float = 0.0
    ) -> list[FrameResult]:
        """One frame each of several streams, ``(stream_id, image or picture, frame_index, timestamp)``, in one
        batched pass: one detector call and one pose call for all of them. ``min_scale``: what the caller needs
        of pictures it will read back (1: full size, to draw on)."""
        inputs = [
            FrameInput(sid, self.stream(sid), p if isinstance(p, Picture) else Picture.decoded(p), index, ts, min_scale)
            for sid, p, index, ts in frames
        ]
        return run_sync(self.frames.steps(inputs), self.models)
