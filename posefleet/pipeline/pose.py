"""Top-down pose: pluggable decoders (BlazePose landmark, RTMPose SimCC) around one ONNX model.

All crops of a frame (and, behind Serve, of many frames) go through ONE ``session.run``.
Cropping and decoding are pure functions, so crops are cut where the frame is and only the
crop tensor travels to the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from posefleet.config import PoseConfig
from posefleet.pipeline import geometry
from posefleet.pipeline.runtime import OnnxModel

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
# BlazePose's 33 landmarks -> COCO-17 (both name the person's own left and right).
BLAZEPOSE_TO_COCO = np.array([0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


class PoseDecoder(ABC):
    """Boxes -> crop tensor, and model outputs -> COCO-17 keypoints in image pixels."""

    output_names: ClassVar[list[str] | None] = None

    def __init__(self, cfg: PoseConfig):
        self.cfg = cfg

    def affines(self, boxes: np.ndarray, keypoints: np.ndarray | None = None) -> np.ndarray:
        """Image -> crop affine per person: aligned from its keypoints where they allow (``cfg.align``),
        else the box's axis-aligned square."""
        w, h, s = self.cfg.input_width, self.cfg.input_height, self.cfg.crop_scale
        mats = []
        for i, box in enumerate(boxes):
            m = None
            if self.cfg.align and keypoints is not None:
                m = geometry.aligned_crop_affine(keypoints[i], w, h, s, self.cfg.align_min_score)
            mats.append(m if m is not None else geometry.square_crop_affine(box, w, h, s))
        return np.stack(mats).astype(np.float32)

    def prepare(
        self, frame: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray | None = None, scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crops of every person as one uint8 BGR batch (normalised where the model runs), and each
        crop's affine (image -> crop); ``frame`` holds the frame's pixels at ``scale``, boxes and keypoints
        are in the frame's own pixels, as the affines are."""
        if len(boxes) == 0:
            empty = np.zeros((0, self.cfg.input_height, self.cfg.input_width, 3), np.uint8)
            return empty, np.zeros((0, 2, 3), np.float32)
        mats = self.affines(boxes, keypoints)
        cut = mats.copy()
        cut[:, :, :2] /= scale  # crop = A frame + b, frame = pixels / scale
        return geometry.warp_crops(frame, cut, self.cfg.input_width, self.cfg.input_height), mats

    def detail(self, boxes: np.ndarray, keypoints: np.ndarray | None = None) -> float:
        """Crop px per frame px of the most magnified of these people's crops: the scale a frame's decoded
        pixels need so that no crop of them is upscaled (0 with nobody)."""
        if len(boxes) == 0:
            return 0.0
        a = self.affines(boxes, keypoints)[:, :, :2].astype(np.float64)
        return float(np.sqrt(np.abs(np.linalg.det(a))).max())

    @abstractmethod
    def normalise(self, crops: np.ndarray) -> np.ndarray:
        """``[N, H, W, 3]`` BGR uint8 crops -> the model's contiguous float32 input."""

    @abstractmethod
    def decode(self, outputs: list[np.ndarray], affines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outputs for N crops -> keypoints ``[N, 17, 3]`` (x, y, score) and person scores ``[N]``."""


class BlazePoseDecoder(PoseDecoder):
    """BlazePose landmark: RGB/255 NHWC; ``Identity`` [N,195] = 39 x (x, y, z, vis, presence)."""

    output_names: ClassVar[list[str] | None] = ["Identity", "Identity_1"]

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        rgb = crops[..., ::-1].astype(np.float32)
        rgb *= 1.0 / 255.0
        return np.ascontiguousarray(rgb)

    def decode(self, outputs: list[np.ndarray], affines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lm = outputs[0].reshape(len(affines), -1, 5)[:, BLAZEPOSE_TO_COCO]
        xy = geometry.invert_affines(affines, lm[:, :, :2])
        scores = _sigmoid(lm[:, :, 3:4])
        presence = outputs[1].reshape(-1).astype(np.float32)
        return np.concatenate([xy, scores], axis=2).astype(np.float32), presence


class RTMPoseDecoder(PoseDecoder):
    """RTMPose (mmdeploy export): normalised RGB NCHW; ``simcc_x`` [N,17,W*r], ``simcc_y`` [N,17,H*r]."""

    mean = np.array([123.675, 116.28, 103.53], np.float32)
    std = np.array([58.395, 57.12, 57.375], np.float32)

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        x = (crops[..., ::-1].astype(np.float32) - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def decode(self, outputs: list[np.ndarray], affines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        simcc_x, simcc_y = outputs[0], outputs[1]
        ratio_x = simcc_x.shape[-1] / self.cfg.input_width
        ratio_y = simcc_y.shape[-1] / self.cfg.input_height
        x = simcc_x.argmax(-1) / ratio_x
        y = simcc_y.argmax(-1) / ratio_y
        # mmpose takes the smaller of the two maxima as the keypoint's confidence
        score = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
        xy = geometry.invert_affines(affines, np.stack([x, y], -1).astype(np.float32))
        kps = np.concatenate([xy, score[..., None]], axis=2).astype(np.float32)
        return kps, score.mean(axis=1).astype(np.float32)


class MoveNetSingleDecoder(PoseDecoder):
    """MoveNet single-person (Thunder 256, Lightning 192): int32 RGB NHWC; out ``[N, 1, 17, 3]`` = (y, x,
    score) normalised to the crop. Its graph takes one crop a call (set ``max_batch: 1``)."""

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(crops[..., ::-1].astype(np.int32))

    def decode(self, outputs: list[np.ndarray], affines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kps = outputs[0].reshape(len(affines), 17, 3)
        size = np.array([self.cfg.input_width, self.cfg.input_height], np.float32)
        xy = geometry.invert_affines(affines, kps[:, :, [1, 0]] * size)
        scores = kps[:, :, 2:3].astype(np.float32)
        return np.concatenate([xy, scores], axis=2).astype(np.float32), scores[:, :, 0].mean(axis=1)


DECODERS: dict[str, type[PoseDecoder]] = {
    "blazepose": BlazePoseDecoder,
    "rtmpose": RTMPoseDecoder,
    "movenet-single": MoveNetSingleDecoder,
}


def make_decoder(cfg: PoseConfig) -> PoseDecoder:
    return DECODERS[cfg.decoder](cfg)


class PoseEstimator:
    """A top-down pose model plus its decoder: (frame, boxes) in, keypoints out."""

    def __init__(self, cfg: PoseConfig):
        self.cfg = cfg
        self.decoder = make_decoder(cfg)
        self.model = OnnxModel(cfg.model, cfg.ort, cfg.sha256, outputs=self.decoder.output_names)

    def infer(self, crops: np.ndarray) -> list[np.ndarray]:
        """Outputs for a uint8 crop batch, normalised here: one ``session.run`` per ``max_batch`` crops."""
        if len(crops) == 0:
            return []
        step = self.cfg.max_batch
        parts = [self.model.run(self.decoder.normalise(crops[i : i + step])) for i in range(0, len(crops), step)]
        return [np.concatenate(p) for p in zip(*parts, strict=True)]

    def __call__(
        self, frame: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(boxes) == 0:
            return np.zeros((0, 17, 3), np.float32), np.zeros(0, np.float32)
        crops, mats = self.decoder.prepare(frame, boxes, keypoints)
        return self.decoder.decode(self.infer(crops), mats)
