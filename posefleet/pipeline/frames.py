"""The frame pipeline, written once: plan, detect, associate, pose, finish, for a batch of frames of
different streams.

:meth:`FramePipeline.steps` is a generator. It does all the CPU work itself (input tensors, decoding
model outputs, tracking) and *yields* each model call (:class:`ModelCall`), all frames' inputs in one,
receiving the outputs back. Who runs the models is up to the driver: :func:`run_sync` with
:class:`LocalModels` in this process (``posefleet run``, evaluation, the bench) or :func:`run_async`
inside a Ray actor, with models local or behind Serve deployment handles. So the in-process run,
the server and the bench all apply the same code to a frame.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from posefleet.config import PipelineConfig
from posefleet.pipeline import detector as detector_mod
from posefleet.pipeline import pose as pose_mod
from posefleet.pipeline.regions import Region, crop_regions
from posefleet.pipeline.schema import FrameResult, StageTimings
from posefleet.pipeline.tracker import FramePlan, StreamState

EMPTY_KEYPOINTS = np.zeros((0, 17, 3), np.float32)


@dataclass
class FrameInput:
    """One decoded frame of a stream, ready to be applied to that stream's state."""

    stream_id: str
    state: StreamState
    image: np.ndarray  # BGR uint8
    frame_index: int | None = None  # None: the stream's next
    timestamp: float | None = None
    decode_ms: float = 0.0


@dataclass
class ModelCall:
    """One inference a batch of frames needs: detector inputs (one ``[1, ...]`` uint8 tensor per
    frame region) or pose crops (``[N, H, W, 3]`` uint8). Normalising happens where the model runs."""

    model: Literal["detector", "pose"]
    inputs: list[np.ndarray] | np.ndarray


Steps = Generator[ModelCall, list, list[FrameResult]]


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def fuse_keypoints(own: np.ndarray, top_down: np.ndarray, top_down_weight: float = 0.5) -> np.ndarray:
    """Per keypoint, the score-weighted mean of the detector's and the top-down model's positions,
    with the detector's score (its scores are the calibrated ones for COCO's OKS ranking)."""
    w1 = own[:, :, 2:3]
    w2 = top_down[:, :, 2:3] * top_down_weight
    xy = (own[:, :, :2] * w1 + top_down[:, :, :2] * w2) / np.maximum(w1 + w2, 1e-6)
    return np.concatenate([xy, own[:, :, 2:3]], axis=2).astype(np.float32)


class FramePipeline:
    """What a batch of frames goes through; holds decoders and settings, never models or stream state."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.detector = detector_mod.make_decoder(cfg.detector)
        self.pose = pose_mod.make_decoder(cfg.pose) if cfg.needs_pose_model else None

    def steps(self, frames: list[FrameInput]) -> Steps:
        """Apply one frame of each of several streams (at most one frame per stream: a stream's next
        frame depends on this one's tracks). Before any state changes, raises FrameOrderError if an index
        repeats or goes back and ValueError for a frame over the size limits."""
        start = time.perf_counter()
        for f in frames:
            h, w = f.image.shape[:2]
            if h * w > self.cfg.max_image_pixels or max(h, w) > self.cfg.max_image_side:
                raise ValueError(f"frame is {w}x{h}, over the configured limits")
        indexes = [f.state.last_index + 1 if f.frame_index is None else f.frame_index for f in frames]
        for f, index in zip(frames, indexes, strict=True):
            f.state.check_order(index)
        for f in frames:
            f.state.frame_size = (f.image.shape[1], f.image.shape[0])
        timings = [StageTimings(decode_ms=f.decode_ms) for f in frames]
        t = time.perf_counter()
        plans = [f.state.plan(index) for f, index in zip(frames, indexes, strict=True)]
        track_ms = _ms(t)

        due = [i for i, p in enumerate(plans) if p.detect]
        if due:
            t = time.perf_counter()
            work = {i: (frames[i].image, self._regions(frames[i], plans[i])) for i in due}
            looking = detector_mod.detect_regions(self.detector, work)
            try:
                inputs = next(looking)
                while True:
                    inputs = looking.send((yield ModelCall("detector", inputs)))
            except StopIteration as done:
                parts = done.value
            assoc_ms = 0.0
            for i in due:
                h, w = frames[i].image.shape[:2]
                dets = self.detector.merge(parts[i], w, h)
                t_assoc = time.perf_counter()
                plans[i] = frames[i].state.associate(plans[i], dets)
                assoc_ms += _ms(t_assoc)
            detect_ms = _ms(t) - assoc_ms
            track_ms += assoc_ms
            for i in due:
                timings[i].detect_ms = round(detect_ms, 3)

        if self.pose is not None and any(len(p.boxes) for p in plans):
            t = time.perf_counter()
            cut = [self.pose.prepare(f.image, p.boxes, p.keypoints) for f, p in zip(frames, plans, strict=True)]
            crops = np.concatenate([c for c, _ in cut])
            outs = yield ModelCall("pose", crops)
            k = 0
            poses = []
            for (c, mats), plan in zip(cut, plans, strict=True):
                kps, scores = self.pose.decode([o[k : k + len(c)] for o in outs], mats)
                k += len(c)
                if self.cfg.pose_source == "fused" and plan.detect and plan.keypoints is not None:
                    kps, scores = fuse_keypoints(plan.keypoints, kps), plan.scores
                poses.append((kps, scores))
            pose_ms = _ms(t)
            for tm in timings:
                tm.pose_ms = round(pose_ms, 3)
        else:
            poses = [self._own_keypoints(p) for p in plans]

        t = time.perf_counter()
        results = []
        for f, plan, (kps, scores), tm in zip(frames, plans, poses, timings, strict=True):
            people = f.state.finish(plan, kps, scores, f.timestamp)
            h, w = f.image.shape[:2]
            result = FrameResult(
                stream_id=f.stream_id, frame_index=plan.frame_index, timestamp=f.timestamp, width=w, height=h,
                detected=plan.detect, people=people, timings=tm,
            )  # fmt: skip
            results.append(result)
        track_ms += _ms(t)
        total = _ms(start)
        for tm in timings:
            tm.track_ms = round(track_ms, 3)
            tm.total_ms = round(tm.decode_ms + total, 3)
        return results

    def _regions(self, f: FrameInput, plan: FramePlan) -> list[Region]:
        """Where the detector looks: the whole scan over the region of interest, or crops around the tracks
        and a part of the scan."""
        h, w = f.image.shape[:2]
        area = f.state.scan_area(w, h)
        scan = self.detector.scan(w, h, f.state.smallest_person(h), area)
        if plan.scan:
            return scan
        return crop_regions(plan.crop_boxes, w, h, self.cfg.detector.guided) + scan[plan.scan_part :: plan.scan_parts]

    @staticmethod
    def _own_keypoints(plan: FramePlan) -> tuple[np.ndarray, np.ndarray]:
        """Single-stage: each track's keypoints are those of the detection it matched."""
        if plan.keypoints is None or not len(plan.boxes):
            return EMPTY_KEYPOINTS, np.zeros(0, np.float32)
        return plan.keypoints, plan.scores


class LocalModels:
    """The models in this process (ONNX Runtime), loaded once and shared by every stream."""

    def __init__(self, cfg: PipelineConfig):
        self.detector = detector_mod.Detector(cfg.detector)
        self.pose = pose_mod.PoseEstimator(cfg.pose) if cfg.needs_pose_model else None

    def __call__(self, call: ModelCall) -> list:
        if call.model == "detector":
            return self.detector.infer(call.inputs)  # type: ignore[arg-type]
        assert self.pose is not None, "this pipeline has no pose model (pose_source single-stage)"
        return self.pose.infer(call.inputs)  # type: ignore[arg-type]


def run_sync(steps: Steps, models: Callable[[ModelCall], list]) -> list[FrameResult]:
    """Drive :meth:`FramePipeline.steps` with models called in this thread."""
    try:
        call = next(steps)
        while True:
            call = steps.send(models(call))
    except StopIteration as done:
        return done.value


async def run_async(
    steps: Steps, models: Callable[[ModelCall], Awaitable[list]], check: Callable[[], None] | None = None
) -> list[FrameResult]:
    """Drive :meth:`FramePipeline.steps` with models awaited (batched in this process, or Serve handles).
    ``check`` runs after each model call, before the steps go on; what it raises stops them there."""
    try:
        call = next(steps)
        while True:
            outputs = await models(call)
            if check is not None:
                try:
                    check()
                except BaseException:
                    steps.close()
                    raise
            call = steps.send(outputs)
    except StopIteration as done:
        return done.value
