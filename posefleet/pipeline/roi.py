"""A camera's region of interest (the court), in pure numpy: a simple polygon in image points.

Scans cover the polygon's bounding box; a person whose ground point (between the ankles where both are
seen, else the box's bottom centre) lies outside the polygon is dropped, or kept and flagged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posefleet.pipeline.regions import Rect

_ANKLES = [15, 16]


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def _segments_cross(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> bool:
    """Whether two segments properly intersect or touch (collinear overlaps count)."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    if ((d1 > 0) != (d2 > 0)) and d1 != 0 and d2 != 0 and ((d3 > 0) != (d4 > 0)) and d3 != 0 and d4 != 0:
        return True

    def on(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: float) -> bool:
        return d == 0 and min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    return on(q1, q2, p1, d1) or on(q1, q2, p2, d2) or on(p1, p2, q1, d3) or on(p1, p2, q2, d4)


def check_polygon(points: Sequence[Sequence[float]], size: tuple[int, int] | None = None) -> np.ndarray:
    """The polygon as ``[N, 2]`` float32, or ValueError saying what is wrong with it: fewer than 3 points,
    a point that is not two finite numbers, no area, off the image (``size`` = width, height, when known),
    or edges that cross."""
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"roi: points must be [x, y] pairs of numbers ({exc})") from exc
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"roi: points must be [x, y] pairs, got an array of shape {list(pts.shape)}")
    if len(pts) < 3:
        raise ValueError(f"roi: a polygon needs at least 3 points, got {len(pts)}")
    if len(pts) > 64:
        raise ValueError(f"roi: at most 64 points, got {len(pts)}")
    if not np.isfinite(pts).all():
        raise ValueError("roi: every coordinate must be a finite number")
    if size is not None:
        w, h = size
        off = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
        if off.any():
            i = int(np.argmax(off))
            raise ValueError(f"roi: point {i} ({pts[i, 0]:g}, {pts[i, 1]:g}) is off the {w}x{h} image")
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    if abs(area) < 1.0:
        raise ValueError("roi: the polygon has no area (its points are repeated or on one line)")
    n = len(pts)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbouring edges share a point
            if _segments_cross(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]):
                raise ValueError(f"roi: edges {i} and {j} of the polygon cross (its points must go round it in order)")
    return pts.astype(np.float32)


class Roi:
    """A checked polygon and what to do with people outside it."""

    def __init__(self, points: Sequence[Sequence[float]], keep_outside: bool = False):
        self.points = check_polygon(points)
        self.keep_outside = keep_outside

    def bounds(self, w: int, h: int) -> Rect | None:
        """The polygon's bounding box within a ``w x h`` frame; None when it lies off the frame."""
        x0, y0 = np.floor(self.points.min(axis=0)).astype(int)
        x1, y1 = np.ceil(self.points.max(axis=0)).astype(int)
        rect = (max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1)))
        return rect if rect[2] - rect[0] >= 2 and rect[3] - rect[1] >= 2 else None

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Whether each point ``[N, 2]`` lies inside (even-odd rule; points on an edge may go either way)."""
        xy = np.asarray(xy, np.float32).reshape(-1, 2)
        px, py = xy[:, 0:1], xy[:, 1:2]
        a, b = self.points, np.roll(self.points, -1, axis=0)
        ax, ay, bx, by = a[:, 0][None], a[:, 1][None], b[:, 0][None], b[:, 1][None]
        straddles = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = ax + (py - ay) * (bx - ax) / (by - ay)
        return (np.sum(straddles & (px < x_at), axis=1) % 2).astype(bool)


def ground_points(boxes: np.ndarray, keypoints: np.ndarray | None, min_score: float) -> np.ndarray:
    """Where each person stands ``[N, 2]``: between the ankles where both are seen, else the box's bottom centre."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    out = np.column_stack([(boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]])
    if keypoints is not None and len(keypoints):
        ankles = np.asarray(keypoints, np.float32)[:, _ANKLES]
        seen = (ankles[:, :, 2] >= min_score).all(axis=1)
        out[seen] = ankles[seen, :, :2].mean(axis=1)
    return out.astype(np.float32)
