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

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from posefleet.config import PipelineConfig
from posefleet.image_io import Picture
from posefleet.pipeline import detector as detector_mod
from posefleet.pipeline import pose as pose_mod
from posefleet.pipeline.regions import Region, crop_regions
from posefleet.pipeline.schema import FrameResult, StageTimings
from posefleet.pipeline.tracker import FramePlan, StreamState

EMPTY_KEYPOINTS = np.zeros((0, 17, 3), np.float32)


@dataclass
class FrameInput:
    """One frame of a stream, ready to be applied to that stream's state: its picture is decoded by the
    pipeline, at the scale its model inputs need (or arrives decoded)."""

    stream_id: str
    state: StreamState
    picture: Picture
    frame_index: int | None = None  # None: the stream's next
    timestamp: float | None = None
    min_scale: float = 0.0  # what the caller needs of the pixels itself (a picture to draw on, a thumbnail)


@dataclass
class DecodeCall:
    """The frames' pictures to decode, each at the scale its regions and crops need (``needs``: image px per
    frame px). The driver runs it where decoding does not hold up other work (a thread, in an actor)."""

    pictures: list[Picture]
    needs: list[float]
    max_upscale: float = 1.0

    def run(self) -> list[np.ndarray]:
        return [p.decode(n, self.max_upscale) for p, n in zip(self.pictures, self.needs, strict=True)]


@dataclass
class ModelCall:
    """One inference a batch of frames needs: detector inputs (one ``[1, ...]`` uint8 tensor per
    frame region) or pose crops (``[N, H, W, 3]`` uint8). Normalising happens where the model runs."""

    model: Literal["detector", "pose"]
    inputs: list[np.ndarray] | np.ndarray


Steps = Generator[ModelCall | DecodeCall, list, list[FrameResult]]


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

    def __init__(
        self,
        cfg: PipelineConfig,
        detector: detector_mod.DetectorDecoder | None = None,
        pose: pose_mod.PoseDecoder | None = None,
    ):
        """``detector``, ``pose``: decoders of models the config does not name (default: the config's)."""
        self.cfg = cfg
        self.detector = detector or detector_mod.make_decoder(cfg.detector)
        self.pose = pose or (pose_mod.make_decoder(cfg.pose) if cfg.needs_pose_model else None)

    def steps(self, frames: list[FrameInput]) -> Steps:
        """Apply one frame of each of several streams (at most one frame per stream: a stream's next
        frame depends on this one's tracks). Before any state changes, raises FrameOrderError if an index
        repeats or goes back and ValueError for a frame over the size limits."""
        start = time.perf_counter()
        for f in frames:
            w, h = f.picture.width, f.picture.height
            if h * w > self.cfg.max_image_pixels or max(h, w) > self.cfg.max_image_side:
                raise ValueError(f"frame is {w}x{h}, over the configured limits")
        indexes = [f.state.last_index + 1 if f.frame_index is None else f.frame_index for f in frames]
        for f, index in zip(frames, indexes, strict=True):
            f.state.check_order(index)
        for f in frames:
            f.state.frame_size = (f.picture.width, f.picture.height)
        t = time.perf_counter()
        plans = [f.state.plan(index) for f, index in zip(frames, indexes, strict=True)]
        track_ms = _ms(t)
        t = time.perf_counter()
        due = [i for i, p in enumerate(plans) if p.detect]
        regions = {i: self._regions(frames[i], plans[i]) for i in due}
        regions_ms = _ms(t)

        waiting = [i for i, f in enumerate(frames) if f.picture.image is None]
        if waiting:  # decoded once, at what this frame's regions and crops need
            needs = [self._detail(frames[i], plans[i], regions.get(i)) for i in waiting]
            call = DecodeCall([frames[i].picture for i in waiting], needs, self.cfg.decode.max_upscale)
            yield call
        t = time.perf_counter()
        plans = [f.state.start(p, f.picture) for f, p in zip(frames, plans, strict=True)]  # decoded: go ahead
        track_ms += _ms(t)
        timings = [StageTimings(decode_ms=f.picture.decode_ms) for f in frames]

        if due:
            t = time.perf_counter()
            work = {i: (frames[i].picture.image, regions[i], frames[i].picture.scale) for i in due}
            looking = detector_mod.detect_regions(self.detector, work)
            try:
                inputs = next(looking)
                while True:
                    inputs = looking.send((yield ModelCall("detector", inputs)))
            except StopIteration as done:
                parts = done.value
            assoc_ms = 0.0
            for i in due:
                dets = self.detector.merge(parts[i], frames[i].picture.width, frames[i].picture.height)
                t_assoc = time.perf_counter()
                plans[i] = frames[i].state.associate(plans[i], dets)
                assoc_ms += _ms(t_assoc)
            detect_ms = _ms(t) - assoc_ms + regions_ms
            track_ms += assoc_ms
            for i in due:
                timings[i].detect_ms = round(detect_ms, 3)

        if self.pose is not None and any(len(p.boxes) for p in plans):
            t = time.perf_counter()
            cut = [
                self.pose.prepare(f.picture.image, p.boxes, p.keypoints, f.picture.scale)
                for f, p in zip(frames, plans, strict=True)
            ]
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
            people = f.state.finish(plan, kps, scores, f.timestamp, f.picture)
            result = FrameResult(
                stream_id=f.stream_id, frame_index=plan.frame_index, timestamp=f.timestamp, width=f.picture.width,
                height=f.picture.height, detected=plan.detect, people=people, timings=tm,
            )  # fmt: skip
            results.append(result)
        track_ms += _ms(t)
        total = _ms(start)
        for i, tm in enumerate(timings):  # a frame decoded before it came here adds its decoding
            tm.track_ms = round(track_ms, 3)
            tm.total_ms = round(total + (0.0 if i in waiting else tm.decode_ms), 3)
        return results

    def _regions(self, f: FrameInput, plan: FramePlan) -> list[Region]:
        """Where the detector looks: the whole scan over the region of interest, or crops around the tracks
        and a part of the scan."""
        w, h = f.picture.width, f.picture.height
        area = f.state.scan_area(w, h)
        scan = self.detector.scan(w, h, f.state.smallest_person(h), area)
        if plan.scan:
            return scan
        return crop_regions(plan.crop_boxes, w, h, self.cfg.detector.guided) + scan[plan.scan_part :: plan.scan_parts]

    def _detail(self, f: FrameInput, plan: FramePlan, regions: list[Region] | None) -> float:
        """The scale (image px per frame px) this frame's pixels need: its detector regions' and pose crops',
        and its caller's own. 1 (full size) with scaled decoding off."""
        if not self.cfg.decode.scaled:
            return 1.0
        need = max([f.min_scale, f.state.flow_need(), *(r.scale for r in regions or [])])
        if self.pose is not None:  # the tracks where they are predicted; on a detection frame, whoever is found
            boxes = plan.crop_boxes  # too, as small as the smallest person looked for
            if plan.detect:
                h = f.state.smallest_person(f.picture.height)
                boxes = np.concatenate([boxes, np.array([[0.0, 0.0, h / 2, h]], np.float32)])
            need = max(need, self.pose.detail(boxes))
        return min(need, 1.0)

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
    """Drive :meth:`FramePipeline.steps` with models called (and pictures decoded) in this thread."""
    try:
        call = next(steps)
        while True:
            call = steps.send(call.run() if isinstance(call, DecodeCall) else models(call))
    except StopIteration as done:
        return done.value


async def run_async(
    steps: Steps, models: Callable[[ModelCall], Awaitable[list]], check: Callable[[], None] | None = None
) -> list[FrameResult]:
    """Drive :meth:`FramePipeline.steps` with models awaited (batched in this process, or Serve handles) and
    pictures decoded on a thread (libjpeg-turbo lets go of the GIL). ``check`` runs after each model call and
    decode, before the steps go on; what it raises stops them there."""
    try:
        call = next(steps)
        while True:
            outputs = await (asyncio.to_thread(call.run) if isinstance(call, DecodeCall) else models(call))
            if check is not None:
                try:
                    check()
                except BaseException:
                    steps.close()
                    raise
            call = steps.send(outputs)
    except StopIteration as done:
        return done.value
