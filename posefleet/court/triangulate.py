"""Keypoints seen by several calibrated cameras, triangulated into metres: linear (DLT) triangulation on
undistorted coordinates, each view's rows weighted by its keypoint score; a view whose reprojection error is an
outlier among them is dropped and the point solved again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from posefleet.court.calibration import Camera


@dataclass(frozen=True, eq=False)
class Rig:
    """Cameras stacked once for the batched maths (a fuser keeps one; a call given cameras stacks them): world to
    camera ``R [V, 3, 3]``, ``t [V, 3]``, ``[R | t]`` ``proj [V, 3, 4]``, intrinsics ``K [V, 3, 3]``, the first
    five distortion coefficients ``dist [V, 5]``, which cameras have more (projected through OpenCV), and the
    terms of the triangulation's normal equations (:func:`_dlt`)."""

    cameras: tuple[Camera, ...]
    R: np.ndarray
    t: np.ndarray
    proj: np.ndarray
    K: np.ndarray
    dist: np.ndarray
    opencv: tuple[int, ...]
    normal_terms: np.ndarray
    center: np.ndarray  # [V, 3] each camera's position in the world

    @classmethod
    def of(cls, cameras: Sequence[Camera] | Rig) -> Rig:
        if isinstance(cameras, Rig):
            return cameras
        dist = np.zeros((len(cameras), 5))
        for v, c in enumerate(cameras):
            dist[v, : min(len(c.dist), 5)] = c.dist[:5]
        # a group whose cameras are all placed by court points (or none yet) has an empty rig
        stack = lambda arrays, shape: np.stack(arrays) if arrays else np.zeros((0, *shape))  # noqa: E731
        proj = stack([c.extrinsic for c in cameras], (3, 4))
        return cls(
            tuple(cameras), stack([c.R for c in cameras], (3, 3)), stack([c.t for c in cameras], (3,)), proj,
            stack([c.K for c in cameras], (3, 3)), dist, tuple(v for v, c in enumerate(cameras) if len(c.dist) > 5),
            _normal_terms(proj), stack([c.center for c in cameras], (3,)),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.cameras)

    def floor(self, view: np.ndarray, norm: np.ndarray, floor_z: float | np.ndarray = 0.0) -> np.ndarray:
        """Where the rays through undistorted normalised points ``norm [N, 2]``, each seen by camera ``view [N]``,
        meet the floor ``z = floor_z`` (a height each if ``[N]``): floor ``[N, 2]``; NaN where a ray runs parallel
        to the floor or meets it behind its camera. Every camera's points in one batch."""
        R, origin = self.R[view], self.center[view]
        rays = norm[:, 0, None] * R[:, 0] + norm[:, 1, None] * R[:, 1] + R[:, 2]  # R^T (x, y, 1), each row
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (floor_z - origin[:, 2]) / rays[:, 2]
            out = origin[:, :2] + s[:, None] * rays[:, :2]
        out[~np.isfinite(s) | (s <= 0)] = np.nan
        return out


@dataclass
class Triangulated:
    """Per keypoint: ``points [J, 3]`` (metres, NaN where fewer than two views saw it), ``score [J]`` (the mean
    score of the views used), ``reprojection_px [J]`` (their mean pixel error, NaN where none) and
    ``views [J, V]`` (which views were used); ``view_px [J, V]``: the final point's pixel error in every view,
    used or not (NaN where no point), which tells a view that saw another person."""

    points: np.ndarray
    score: np.ndarray
    reprojection_px: np.ndarray
    views: np.ndarray
    view_px: np.ndarray

    @property
    def n_views(self) -> np.ndarray:
        return self.views.sum(axis=1)


def _normal_terms(proj: np.ndarray) -> np.ndarray:
    """``[4, V, 16]``: the per-view matrices whose score-weighted sums make a point's normal equations (see
    :func:`_dlt`), flattened: ``P3 P3^T``, ``P3 P1^T + P1 P3^T``, ``P3 P2^T + P2 P3^T``, ``P1 P1^T + P2 P2^T``."""
    P1, P2, P3 = proj[:, 0, :, None], proj[:, 1, :, None], proj[:, 2, :, None]
    T = lambda m: m.transpose(0, 2, 1)  # noqa: E731
    terms = [P3 @ T(P3), P3 @ T(P1) + P1 @ T(P3), P3 @ T(P2) + P2 @ T(P3), P1 @ T(P1) + P2 @ T(P2)]
    return np.stack([m.reshape(len(proj), 16) for m in terms])


def _dlt(rig: Rig, norm: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Solve every point at once: ``norm [M, V, 2]``, ``weight [M, V]`` -> ``[M, 3]`` (NaN: singular). The
    weighted rows ``x P3 - P1``, ``y P3 - P2`` of each view solved for ``X`` (with ``w = 1``: no point of a court
    lies at infinity) by their normal equations ``N = A^T A``, summed from the rig's per-view terms (four small
    matmuls) and solved by Cramer's rule: numpy's batched solve and det cost more in their setup than in the
    arithmetic of 3x3 systems."""
    B, C1, C2, D = rig.normal_terms
    w2 = weight * weight
    x, y = norm[..., 0], norm[..., 1]
    n = B.T @ (w2 * (x * x + y * y)).T - C1.T @ (w2 * x).T - C2.T @ (w2 * y).T + D.T @ w2.T  # N flattened [16, M]
    a00, a01, a02, b0, a10, a11, a12, b1, a20, a21, a22, b2 = n[:12]  # N[:3, :3] X = -N[:3, 3]
    c0, c1, c2 = a11 * a22 - a12 * a21, a12 * a20 - a10 * a22, a10 * a21 - a11 * a20
    det = a00 * c0 + a01 * c1 + a02 * c2
    X = np.stack([
        c0 * b0 + (a02 * a21 - a01 * a22) * b1 + (a01 * a12 - a02 * a11) * b2,
        c1 * b0 + (a00 * a22 - a02 * a20) * b1 + (a02 * a10 - a00 * a12) * b2,
        c2 * b0 + (a01 * a20 - a00 * a21) * b1 + (a00 * a11 - a01 * a10) * b2,
    ], axis=1)  # fmt: skip
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(det)[:, None] > 1e-12, -X / det[:, None], np.nan)


def triangulate_points(
    cameras: Sequence[Camera] | Rig,
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
    rig = Rig.of(cameras)
    used = score >= min_score
    points = np.full((M, 3), np.nan)
    errors = np.full((M, V), np.nan)
    view_px = np.full((M, V), np.nan)
    todo = np.flatnonzero(used.sum(axis=1) >= min_views)  # the points (re)solved this round
    while len(todo):
        use = used[todo]
        points[todo] = _dlt(rig, norm[todo], np.where(use, score[todo], 0.0))
        err, depth = pixel_errors(rig, points[todo], pixels[todo])  # [m, V]
        view_px[todo] = err
        behind = np.where(depth > 0, err, np.inf)  # a point behind a camera that saw it fits no view
        errors[todo] = np.where(use, behind, np.nan)
        worst = np.fmax(np.where(use, behind, -1.0), -1.0)  # NaN (no point) counts as no error
        bad = (worst.max(axis=1) > outlier_px) & (use.sum(axis=1) > min_views)
        todo, worst = todo[bad], worst[bad]
        used[todo, worst.argmax(axis=1)] = False
    with np.errstate(invalid="ignore"):
        fits = np.where(used, np.nan_to_num(errors, nan=np.inf), 0.0).max(axis=1) <= outlier_px
    # a point whose last views still disagree is no point: two people's joints, or a joint mistaken in both
    solvable = (used.sum(axis=1) >= min_views) & fits
    points[~solvable] = np.nan
    view_px[~solvable] = np.nan
    used[~solvable] = False
    n = used.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_err = np.where(solvable, np.where(used, errors, 0.0).sum(axis=1) / n, np.nan)
        mean_score = np.where(solvable, (score * used).sum(axis=1) / np.maximum(n, 1), 0.0)
    return Triangulated(points, mean_score, mean_err, used, view_px)


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


def pixel_errors(rig: Rig, points: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far ``points [M, 3]`` project from where each view saw them, ``pixels [M, V, 2]``: errors ``[M, V]``
    (px) and depths ``[M, V]``."""
    px, depth = project_all(rig, points)
    return np.linalg.norm(px.transpose(1, 0, 2) - pixels, axis=2), depth.T


def project_all(cameras: Sequence[Camera] | Rig, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``points [M, 3]`` into every camera at once: distorted pixels ``[V, M, 2]`` and depths ``[V, M]``. OpenCV's
    model with k1, k2, p1, p2, k3 in numpy (one pass for all cameras, not a call each); a camera with more
    coefficients goes through OpenCV."""
    rig = Rig.of(cameras)
    cam = points @ rig.R.transpose(0, 2, 1) + rig.t[:, None]  # [V, M, 3]
    depth = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = cam[..., 0] / depth, cam[..., 1] / depth
    k1, k2, p1, p2, k3 = (rig.dist[:, i, None] for i in range(5))
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    K = rig.K
    px = np.stack([K[:, 0, 0, None] * xd + K[:, 0, 2, None], K[:, 1, 1, None] * yd + K[:, 1, 2, None]], axis=2)
    for v in rig.opencv:
        if len(points):
            px[v] = rig.cameras[v].project(points)
    return px, depth


def nan_median(values: np.ndarray) -> np.ndarray:
    """The median over the last axis, NaNs left out (NaN where all are): numpy's nanmedian is ~1 ms here."""
    s = np.sort(values, axis=-1)  # NaN sorts last
    n = np.isfinite(values).sum(axis=-1, keepdims=True)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0), axis=-1)
    hi = np.take_along_axis(s, np.maximum(n // 2, 0), axis=-1)
    return np.where(n > 0, (lo + hi) / 2, np.nan)[..., 0]
