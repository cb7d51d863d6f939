"""Keypoints seen by several calibrated cameras, triangulated into metres: linear (DLT) triangulation on
undistorted coordinates, each view's rows weighted by its keypoint score; a view whose reprojection error is an
outlier among them is dropped and the point solved again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from posefleet.court.calibration import Camera


@dataclass
class Triangulated:
    """Per keypoint: ``points [J, 3]`` (metres, NaN where fewer than two views saw it), ``score [J]`` (the mean
    score of the views used), ``reprojection_px [J]`` (their mean pixel error, NaN where none) and
    ``views [J, V]`` (which views were used)."""

    points: np.ndarray
    score: np.ndarray
    reprojection_px: np.ndarray
    views: np.ndarray

    @property
    def n_views(self) -> np.ndarray:
        return self.views.sum(axis=1)


def _dlt(proj: np.ndarray, norm: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Solve every point at once: ``proj [V, 3, 4]``, ``norm [M, V, 2]``, ``weight [M, V]`` -> ``[M, 3]``. The
    weighted rows ``x P3 - P1``, ``y P3 - P2`` of each view solved for ``X`` (with ``w = 1``: no point of a court
    lies at infinity) by their normal equations, a 3x3 solve a point instead of an SVD."""
    rows = norm[..., :, None] * proj[None, :, 2:3, :] - proj[None, :, :2, :]  # [M, V, 2, 4]
    A = (rows * weight[..., None, None]).reshape(len(norm), -1, 4)
    N = A.transpose(0, 2, 1) @ A  # [M, 4, 4]
    lhs, rhs = N[:, :3, :3], -N[:, :3, 3:]
    ok = np.abs(np.linalg.det(lhs)) > 1e-12
    out = np.full((len(A), 3), np.nan)
    if ok.any():
        out[ok] = np.linalg.solve(lhs[ok], rhs[ok])[..., 0]
    return out


def triangulate_points(
    cameras: Sequence[Camera],
    pixels: np.ndarray,
    score: np.ndarray,
    norm: np.ndarray,
    min_score: float = 0.3,
    outlier_px: float = 15.0,
    min_views: int = 2,
) -> Triangulated:
    """Many independent points at once: ``pixels [M, V, 2]`` (distorted, each camera's), ``score [M, V]`` (0 where
    a view does not see the point), ``norm [M, V, 2]`` (the same pixels undistorted and normalised).

    A point is used from views where its score is at least ``min_score``. When its worst view's reprojection error
    is over ``outlier_px`` and more than ``min_views`` views remain, that view is dropped and the point solved
    again, until every view fits; a point whose last ``min_views`` views still miss by more is left out (NaN)."""
    M, V = score.shape
    proj = np.stack([c.extrinsic for c in cameras])  # [V, 3, 4]
    used = score >= min_score
    points = np.full((M, 3), np.nan)
    errors = np.full((M, V), np.nan)
    todo = np.flatnonzero(used.sum(axis=1) >= min_views)  # the points (re)solved this round
    while len(todo):
        points[todo] = _dlt(proj, norm[todo], np.where(used[todo], score[todo], 0.0))
        px, depth = project_all(cameras, points[todo])  # [V, m, 2], [V, m]
        err = np.linalg.norm(px.transpose(1, 0, 2) - pixels[todo], axis=2)  # [m, V]
        errors[todo] = np.where(used[todo], np.where(depth.T > 0, err, np.inf), np.nan)
        worst = np.where(used[todo], np.nan_to_num(errors[todo], nan=-1.0), -1.0)
        bad = (worst.max(axis=1) > outlier_px) & (used[todo].sum(axis=1) > min_views)
        todo, worst = todo[bad], worst[bad]
        used[todo, worst.argmax(axis=1)] = False
    with np.errstate(invalid="ignore"):
        fits = np.where(used, np.nan_to_num(errors, nan=np.inf), 0.0).max(axis=1) <= outlier_px
    # a point whose last views still disagree is no point: two people's joints, or a joint mistaken in both
    solvable = (used.sum(axis=1) >= min_views) & fits
    points[~solvable] = np.nan
    used[~solvable] = False
    n = used.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_err = np.where(solvable, np.where(used, errors, 0.0).sum(axis=1) / n, np.nan)
        mean_score = np.where(solvable, (score * used).sum(axis=1) / np.maximum(n, 1), 0.0)
    return Triangulated(points, mean_score, mean_err, used)


def triangulate(
    cameras: Sequence[Camera],
    keypoints: np.ndarray,
    min_score: float = 0.3,
    outlier_px: float = 15.0,
    min_views: int = 2,
) -> Triangulated:
    """One person's ``keypoints [V, J, 3]`` (x, y, score in each camera's pixels) seen by ``cameras``."""
    kp = np.asarray(keypoints, dtype=np.float64)
    norm = np.stack([c.normalised(kp[v, :, :2]) for v, c in enumerate(cameras)], axis=1)  # [J, V, 2]
    return triangulate_points(cameras, kp[..., :2].transpose(1, 0, 2), kp[..., 2].T, norm, min_score, outlier_px,
                              min_views)  # fmt: skip


def project_all(cameras: Sequence[Camera], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``points [M, 3]`` into every camera at once: distorted pixels ``[V, M, 2]`` and depths ``[V, M]``. OpenCV's
    model with k1, k2, p1, p2, k3 in numpy (one pass for all cameras, not a call each); a camera with more
    coefficients goes through OpenCV."""
    R = np.stack([c.R for c in cameras])
    t = np.stack([c.t for c in cameras])
    cam = np.einsum("vij,mj->vmi", R, points) + t[:, None]  # [V, M, 3]
    depth = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = cam[..., 0] / depth, cam[..., 1] / depth
    d = np.zeros((len(cameras), 5))
    for v, c in enumerate(cameras):
        d[v, : min(len(c.dist), 5)] = c.dist[:5]
    k1, k2, p1, p2, k3 = (d[:, i, None] for i in range(5))
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    K = np.stack([c.K for c in cameras])
    px = np.stack([K[:, 0, 0, None] * xd + K[:, 0, 2, None], K[:, 1, 1, None] * yd + K[:, 1, 2, None]], axis=2)
    for v, c in enumerate(cameras):
        if len(c.dist) > 5 and len(points):
            px[v] = c.project(points)
    return px, depth
