"""Carried frames follow the picture: sparse optical flow moves each tracked person from the previous frame.

Between detections the tracker used to extrapolate each box at its last velocity. Under a panning
broadcast camera, or a player who takes off for a spike, that guess falls off the person within a frame or
two. Here OpenCV's pyramidal Lucas-Kanade flow follows points on each person instead. The points are the
person's last keypoints and the middles of their bones, so they lie on the body and not on the floor
around it. Each point is checked forward and backward; the person's shift and scale are the medians of
what passes (MedianFlow, Kalal et al. 2010). Each keypoint that passes moves with its own flow, the rest
with the body. The result is a measurement the tracker folds in like a detection, so its velocity learns
the pan. A person too few of whose points pass is left to the prediction.

The camera's own motion is measured the same way on every frame (``flow.camera``): corners of the picture
outside the tracked people, followed forward and backward, give a similarity transform (RANSAC), which
moves every track's state, lost tracks included, before the frame's prediction and association, as
BoT-SORT's camera-motion compensation does. A panning camera then no longer breaks ids.

Everything works in grey at a small scale: the smallest tracked person ``flow.person_px`` tall.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from posefleet.config import FlowConfig
from posefleet.pipeline.pose import COCO_SKELETON

_BONES = np.array(COCO_SKELETON, np.int64)
_GRID = np.stack(np.meshgrid(np.linspace(0.3, 0.7, 3), np.linspace(0.15, 0.85, 5)), -1).reshape(-1, 2)
_SCALE_LIMITS = (0.8, 1.25)  # a person's size changes at most this much a frame


@dataclass
class FlowFrame:
    """A frame in grey at ``scale`` (image px per frame px)."""

    gray: np.ndarray
    scale: float

    def resized(self, shape: tuple[int, int], scale: float) -> FlowFrame:
        """This frame at another size (the next frame was decoded at another scale)."""
        if self.gray.shape == shape:
            return self
        return FlowFrame(cv2.resize(self.gray, (shape[1], shape[0]), interpolation=cv2.INTER_AREA), scale)


def flow_scale(smallest_person: float, cfg: FlowConfig) -> float:
    """The scale (image px per frame px) that makes the smallest tracked person ``person_px`` tall."""
    return min(1.0, cfg.person_px / max(smallest_person, 1.0))


def flow_frame(image: np.ndarray, image_scale: float, scale: float) -> FlowFrame:
    """``image`` (BGR at ``image_scale``) in grey, shrunk to ``scale`` unless already within 1.5x of it."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image_scale > 1.5 * scale:
        w = max(1, round(gray.shape[1] * scale / image_scale))
        h = max(1, round(gray.shape[0] * scale / image_scale))
        gray = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA)
        image_scale = gray.shape[1] / image.shape[1] * image_scale
    return FlowFrame(np.ascontiguousarray(gray), image_scale)


def body_points(boxes: np.ndarray, keypoints: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """Points on each person, ``[N, M, 2]`` with which are real ``[N, M]``: first the 17 keypoints (real where
    seen), then the middles of the bones between two seen keypoints, or, where fewer than 4 keypoints are
    seen, a grid in the middle of the box."""
    n = len(boxes)
    seen = keypoints[:, :, 2] >= min_score  # [N, 17]
    few = seen.sum(1) < 4
    mids = (keypoints[:, _BONES[:, 0], :2] + keypoints[:, _BONES[:, 1], :2]) / 2  # [N, B, 2]
    bone_ok = seen[:, _BONES[:, 0]] & seen[:, _BONES[:, 1]] & ~few[:, None]
    grid = boxes[:, None, :2] + _GRID[None] * (boxes[:, None, 2:] - boxes[:, None, :2])  # [N, G, 2]
    grid_ok = np.broadcast_to(few[:, None], (n, len(_GRID)))
    pts = np.concatenate([keypoints[:, :, :2], mids, grid], axis=1).astype(np.float32)
    return pts, np.concatenate([seen, bone_ok, grid_ok], axis=1)


def _row_median(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, the median of ``values [N, M, C]`` where ``valid [N, M]`` (0 for a row with none): one sort,
    not numpy's nanmedian (masked arrays, ~20x slower on a few hundred numbers)."""
    n, m = valid.shape
    count = valid.sum(1)
    ordered = np.sort(np.where(valid[..., None], values, np.inf), axis=1)  # the valid first, in order
    lo = np.maximum(count - 1, 0) // 2
    hi = np.maximum(count, 1) // 2
    rows = np.arange(n)
    med = (ordered[rows, lo] + ordered[rows, np.minimum(hi, m - 1)]) / 2
    return np.where(count[:, None] > 0, med, 0.0)


def follow(
    prev: FlowFrame, cur: FlowFrame, boxes: np.ndarray, keypoints: np.ndarray, cfg: FlowConfig, min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move each person (``boxes [N, 4]`` and ``keypoints [N, 17, 3]`` in frame px, as they were in ``prev``)
    to where the flow finds them in ``cur``. Returns the moved boxes and keypoints (scores kept) and which
    people were followed (``ok [N]``); the others come back unmoved."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    keypoints = np.asarray(keypoints, np.float32).reshape(-1, 17, 3)
    out_boxes, out_kps = boxes.copy(), keypoints.copy()
    pts, real = body_points(boxes, keypoints, min_score)
    if not real.any():
        return out_boxes, out_kps, np.zeros(len(boxes), bool)
    prev = prev.resized(cur.gray.shape, cur.scale)
    p0 = (pts[real] * cur.scale).reshape(-1, 1, 2)
    p1, followed = _track_points(prev, cur, p0, cfg)
    good = np.zeros_like(real)
    good[real] = followed
    moved_pts = pts.copy()
    moved_pts[real] = p1[:, 0] / cur.scale  # frame px
    ok = good.sum(1) >= cfg.min_points
    good &= ok[:, None]
    # per person, medians over its good points: its shift, and its scale as the median ratio of each point's
    # distance from the points' median, after to before (MedianFlow's scale, without all the pairs)
    shift = _row_median(moved_pts - pts, good)  # [N, 2]
    r0 = np.linalg.norm(pts - _row_median(pts, good)[:, None], axis=2)
    r1 = np.linalg.norm(moved_pts - _row_median(moved_pts, good)[:, None], axis=2)
    far = good & (r0 > 2.0)
    scale = np.where(far.sum(1) >= 2, _row_median((r1 / np.maximum(r0, 1e-6))[..., None], far)[:, 0], 1.0)
    scale = np.clip(scale, *_SCALE_LIMITS)[:, None]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    moved = centre + shift
    new_boxes = np.concatenate([(boxes[:, :2] - centre) * scale + moved, (boxes[:, 2:] - centre) * scale + moved], 1)
    new_kps = (keypoints[:, :, :2] - centre[:, None]) * scale[:, None] + moved[:, None]
    own = good[:, :17, None]  # a keypoint followed itself: where its flow took it
    new_kps = np.where(own, moved_pts[:, :17], new_kps)
    out_boxes[ok] = new_boxes[ok]
    out_kps[ok, :, :2] = new_kps[ok]
    return out_boxes, out_kps, ok


def _track_points(prev: FlowFrame, cur: FlowFrame, p0: np.ndarray, cfg: FlowConfig) -> tuple[np.ndarray, np.ndarray]:
    """``p0 [M, 1, 2]`` (px at the flow's scale) followed from ``prev`` to ``cur``: where they went, and which
    came back within ``max_error_px``."""
    lk = {"winSize": (cfg.window, cfg.window), "maxLevel": cfg.levels,
          "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, cfg.iterations, 0.03)}  # fmt: skip
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev.gray, cur.gray, p0, None, **lk)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(cur.gray, prev.gray, p1, None, **lk)
    return p1, (st1[:, 0] == 1) & (st2[:, 0] == 1) & (np.linalg.norm(back - p0, axis=2)[:, 0] < cfg.max_error_px)


def camera_motion(prev: FlowFrame, cur: FlowFrame, people: np.ndarray, cfg: FlowConfig) -> np.ndarray | None:
    """How the camera moved the picture from ``prev`` to ``cur``: a 2x3 similarity in frame px, from corners
    outside the ``people [N, 4]`` (frame px), or None where too few corners agree (a cut, a blank wall)."""
    prev = prev.resized(cur.gray.shape, cur.scale)
    # corners are looked for at half the flow's scale (a tenth of the cost, and a camera's motion needs no
    # fine detail to be found), then followed at the flow's scale
    half = cv2.pyrDown(prev.gray)
    mask = np.full(half.shape, 255, np.uint8)
    for x0, y0, x1, y1 in np.round(np.asarray(people).reshape(-1, 4) * cur.scale / 2).astype(int):
        mask[max(0, y0) : max(0, y1 + 1), max(0, x0) : max(0, x1 + 1)] = 0
    corners = cv2.goodFeaturesToTrack(half, cfg.camera_points, 0.01, 3, mask=mask, blockSize=3)
    if corners is None or len(corners) < cfg.min_camera_points:
        return None
    p0 = (corners.astype(np.float32) * 2).reshape(-1, 1, 2)
    p1, good = _track_points(prev, cur, p0, cfg)
    if good.sum() < cfg.min_camera_points:
        return None
    m, inliers = cv2.estimateAffinePartial2D(p0[good], p1[good], method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if m is None or int(inliers.sum()) < cfg.min_camera_points:
        return None
    m[:, 2] /= cur.scale  # flow px -> frame px (a similarity: its linear part is the same at any scale)
    return m
