"""Pure numpy/OpenCV geometry shared by detector and pose: letterbox, tiles, crops, boxes, NMS.

Boxes are float32 ``[N, 4]`` as ``x1, y1, x2, y2`` in image pixels throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """Maps model-input pixels back to image pixels: ``img = (inp - pad) / scale + offset``."""

    scale: float
    pad_x: float
    pad_y: float
    in_w: int
    in_h: int
    offset_x: float = 0.0  # tile origin in the full image
    offset_y: float = 0.0

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """``xy[..., 0:2]`` in input pixels -> image pixels (new array)."""
        out = np.array(xy, dtype=np.float32, copy=True)
        out[..., 0] = (out[..., 0] - self.pad_x) / self.scale + self.offset_x
        out[..., 1] = (out[..., 1] - self.pad_y) / self.scale + self.offset_y
        return out


def round_up(value: float, multiple: int) -> int:
    return int(-(-int(np.ceil(value)) // multiple) * multiple)


def letterbox(
    image: np.ndarray,
    out_w: int,
    out_h: int,
    center: bool = True,
    pad_value: int = 0,
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect into ``out_w x out_h``, padding the rest."""
    h, w = image.shape[:2]
    scale = min(out_w / w, out_h / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    px, py = ((out_w - nw) // 2, (out_h - nh) // 2) if center else (0, 0)
    canvas = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas[py : py + nh, px : px + nw] = cv2.resize(image, (nw, nh), interpolation=interp)
    return canvas, Letterbox(scale, px, py, out_w, out_h)


def aspect_input_size(w: int, h: int, long_side: int, multiple: int = 32) -> tuple[int, int]:
    """Input size keeping the image aspect: long side = ``long_side``, both sides multiples of 32."""
    scale = long_side / max(w, h)
    return max(multiple, round_up(w * scale, multiple)), max(multiple, round_up(h * scale, multiple))


def tile_rects(w: int, h: int, cols: int, rows: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Overlapping tiles ``(x0, y0, x1, y1)`` covering the image in a ``cols x rows`` grid."""

    def spans(length: int, n: int) -> list[tuple[int, int]]:
        if n == 1:
            return [(0, length)]
        size = length / (n - (n - 1) * overlap)
        step = size * (1 - overlap)
        return [(round(i * step), min(length, round(i * step + size))) for i in range(n)]

    return [(x0, y0, x1, y1) for y0, y1 in spans(h, rows) for x0, x1 in spans(w, cols)]


def square_crop_affine(box: np.ndarray, out_w: int, out_h: int, scale: float) -> np.ndarray:
    """2x3 affine taking the box's centre to the crop centre, keeping the crop's aspect.

    The crop covers ``scale`` times the box, extended on its short side to ``out_w:out_h``.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    aspect = out_w / out_h
    if bw / bh > aspect:
        bh = bw / aspect
    else:
        bw = bh * aspect
    s = out_w / (bw * scale)
    return np.array([[s, 0, out_w / 2 - cx * s], [0, s, out_h / 2 - cy * s]], dtype=np.float32)


# COCO-17 indices of the keypoints that give a body's position and direction
_SHOULDERS, _HIPS = [5, 6], [11, 12]


def aligned_crop_affine(
    keypoints: np.ndarray, out_w: int, out_h: int, scale: float, min_score: float
) -> np.ndarray | None:
    """2x3 affine of an upright crop of a person from its COCO-17 keypoints ``[17, 3]``, as MediaPipe
    aligns BlazePose's input: centred on the hips, rotated so the hips-to-shoulders line points up,
    the side ``scale`` x the circle (about the hips) around every confident keypoint.

    None when a hip or shoulder is below ``min_score`` (no reliable direction).
    """
    need = keypoints[_SHOULDERS + _HIPS, 2]
    if (need < min_score).any():
        return None
    hips = keypoints[_HIPS, :2].mean(axis=0).astype(np.float64)
    up = keypoints[_SHOULDERS, :2].mean(axis=0) - hips
    torso = float(np.hypot(*up))
    if torso < 1.0:
        return None
    good = keypoints[keypoints[:, 2] >= min_score, :2]
    # a person seen only to the waist still needs room below the hips: at least 1.5 torsos around them
    radius = max(float(np.max(np.linalg.norm(good - hips, axis=1))), 1.5 * torso)
    s = min(out_w, out_h) / (2.0 * radius * scale)
    # rotation taking ``up`` to (0, -1): cos = -up_y / |up|, sin = up_x / |up| (image y points down)
    c, si = -up[1] / torso, up[0] / torso
    rot = s * np.array([[c, si], [-si, c]])
    t = np.array([out_w / 2, out_h / 2]) - rot @ hips
    return np.hstack([rot, t[:, None]]).astype(np.float32)


def warp_crops(image: np.ndarray, affines: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """``[N, out_h, out_w, 3]`` uint8 crops, one ``cv2.warpAffine`` each, zero border."""
    out = np.empty((len(affines), out_h, out_w, 3), dtype=np.uint8)
    for i, m in enumerate(affines):
        cv2.warpAffine(image, m, (out_w, out_h), dst=out[i], flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return out


def invert_affines(affines: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``points[N, K, 2]`` from crop pixels back to image pixels through each inverse affine."""
    a = affines[:, :, :2].astype(np.float64)
    t = affines[:, :, 2].astype(np.float64)
    inv = np.linalg.inv(a)
    pts = points.astype(np.float64) - t[:, None, :]
    return np.einsum("nij,nkj->nki", inv, pts).astype(np.float32)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``a[N,4]`` and ``b[M,4]``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_keep: int | None = None) -> np.ndarray:
    """Indices kept by greedy NMS (OpenCV's), best score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).astype(np.float64)
    keep = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(float).tolist(), 0.0, iou), dtype=np.int64)
    keep = keep.reshape(-1)
    return keep[:max_keep] if max_keep else keep


def nms_sharpest(boxes: np.ndarray, scores: np.ndarray, detail: np.ndarray | None, iou: float) -> np.ndarray:
    """Greedy NMS, best score first, where each person kept is the sharpest of its duplicates: the copy its
    region showed largest (``detail``, model input px per frame px; ties to the score), ranked by the group's
    best score. Overlapping regions (the whole frame and its tiles) see one person at several scales, and
    the best-scored copy is often the coarsest, with the least exact keypoints."""
    if detail is None or len(boxes) < 2:
        return nms(boxes, scores, iou)
    overlap = iou_matrix(boxes, boxes)
    taken = np.zeros(len(boxes), bool)
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if taken[i]:
            continue
        group = np.flatnonzero(~taken & (overlap[i] > iou))
        group = group if len(group) else np.array([i])
        taken[group] = True
        best = group[np.lexsort((-scores[group], -detail[group]))[0]]
        scores[best] = scores[i]
        keep.append(int(best))
    return np.array(keep, dtype=np.int64)


def suppress_contained(boxes: np.ndarray, scores: np.ndarray, max_ios: float) -> np.ndarray:
    """Indices kept when a box lying mostly inside a better-scored one (intersection over the smaller
    area above ``max_ios``) is dropped: on tiled frames a person cut by a tile edge yields a partial box
    inside the whole-person box, which plain IoU-NMS keeps."""
    order = np.argsort(-scores)
    b = boxes[order].astype(np.float32)
    area = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    lt = np.maximum(b[:, None, :2], b[None, :, :2])
    rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    ios = inter / np.maximum(np.minimum(area[:, None], area[None, :]), 1e-9)
    keep: list[int] = []
    for i in range(len(b)):
        if not keep or ios[i, keep].max() <= max_ios:
            keep.append(i)
    return order[np.array(keep, dtype=np.int64)]


def keypoint_box(keypoints: np.ndarray, min_score: float, padding: float, min_points: int = 3) -> np.ndarray | None:
    """Box around a person's confident keypoints ``[K, 3]``, padded about its centre; None if too few."""
    good = keypoints[keypoints[:, 2] >= min_score, :2]
    if len(good) < min_points:
        return None
    lo, hi = good.min(axis=0), good.max(axis=0)
    c, half = (lo + hi) / 2, (hi - lo) / 2 * padding
    half = np.maximum(half, 4.0)
    return np.array([c[0] - half[0], c[1] - half[1], c[0] + half[0], c[1] + half[1]], dtype=np.float32)


def clip_boxes(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    out = boxes.copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
    return out
