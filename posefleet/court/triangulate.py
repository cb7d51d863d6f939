"""Keypoints seen by several calibrated cameras, triangulated into metres: linear (DLT) triangulation on
undistorted coordinates, each view's rows weighted by its keypoint score; a view whose reprojection error is an
outlier among them is dropped and the point solved again.

The arithmetic runs compiled (numba, cached on disk): a group frame of 4 cameras x 12 people is some 800 tiny
solves and projections with a branch after each, where numpy's overhead per call was most of the cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from posefleet.court.calibration import Camera
from posefleet.court.compiled import KERNEL, f64

N_DIST = 14  # OpenCV's longest distortion model: k1 k2 p1 p2 k3 k4 k5 k6 s1 s2 s3 s4 tauX tauY


def _tilt(tau_x: float, tau_y: float) -> np.ndarray:
    """OpenCV's tilted-sensor matrix (its ``computeTiltProjectionMatrix``) for a camera's tauX and tauY."""
    cx, sx, cy, sy = np.cos(tau_x), np.sin(tau_x), np.cos(tau_y), np.sin(tau_y)
    rot = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    return np.array([[rot[2, 2], 0, -rot[0, 2]], [0, rot[2, 2], -rot[1, 2]], [0, 0, 1]]) @ rot


@dataclass(frozen=True, eq=False)
class Rig:
    """Cameras stacked once for the compiled maths (a fuser keeps one; a call given cameras stacks them): world to
    camera ``R [V, 3, 3]``, ``t [V, 3]``, ``[R | t]`` ``proj [V, 3, 4]``, intrinsics ``K [V, 3, 3]``, OpenCV's
    distortion coefficients padded to ``dist [V, 14]`` with each camera's tilted-sensor matrix ``tilt [V, 3, 3]``,
    and the terms of the triangulation's normal equations (:func:`_normal_terms`)."""

    cameras: tuple[Camera, ...]
    R: np.ndarray
    t: np.ndarray
    proj: np.ndarray
    K: np.ndarray
    dist: np.ndarray
    tilt: np.ndarray
    normal_terms: np.ndarray
    center: np.ndarray  # [V, 3] each camera's position in the world
    untilt: np.ndarray  # [V, 3, 3] each tilt's inverse

    @classmethod
    def of(cls, cameras: Sequence[Camera] | Rig) -> Rig:
        if isinstance(cameras, Rig):
            return cameras
        dist = np.zeros((len(cameras), N_DIST))
        for v, c in enumerate(cameras):
            dist[v, : len(c.dist)] = c.dist
        # a group whose cameras are all placed by court points (or none yet) has an empty rig
        stack = lambda arrays, shape: np.stack(arrays) if arrays else np.zeros((0, *shape))  # noqa: E731
        proj = stack([c.extrinsic for c in cameras], (3, 4))
        tilt = stack([_tilt(*d[12:]) for d in dist], (3, 3))
        return cls(
            tuple(cameras), stack([c.R for c in cameras], (3, 3)), stack([c.t for c in cameras], (3,)), proj,
            stack([c.K for c in cameras], (3, 3)), dist, tilt, _normal_terms(proj),
            stack([c.center for c in cameras], (3,)), np.linalg.inv(tilt) if len(tilt) else tilt,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def optics(self) -> tuple[np.ndarray, ...]:
        """What the compiled projection takes, in its order."""
        return self.R, self.t, self.K, self.dist, self.tilt

    def normalise(self, view: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Distorted pixels ``[N, M, 2]``, row n seen by camera ``view [N]`` (-1: none, NaN out), undistorted and
        normalised ``[N, M, 2]``: what ``cv2.undistortPoints`` gives, every camera in one compiled call."""
        return _normalise(self.K, self.dist, self.untilt, np.ascontiguousarray(view, np.int64), f64(pixels))


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


@njit(**KERNEL)
def median_of_finite(values, buffer):
    """The median of ``values``' finite entries (NaN where none), sorted into ``buffer`` by insertion (a few
    dozen numbers: loops compile in a fraction of the time numpy's sort and masks take)."""
    n = 0
    for x in values:
        if np.isfinite(x):
            i = n
            while i > 0 and buffer[i - 1] > x:
                buffer[i] = buffer[i - 1]
                i -= 1
            buffer[i] = x
            n += 1
    return np.nan if n == 0 else (buffer[(n - 1) // 2] + buffer[n // 2]) / 2


# -- compiled: one point at a time, every view ---------------------------------------------------------------------


@njit(**KERNEL)
def _through(T, x, y):
    """(x, y) through the plane homography ``T [3, 3]`` (a tilted sensor's, or its inverse), as OpenCV applies it."""
    a = T[0, 0] * x + T[0, 1] * y + T[0, 2]
    b = T[1, 0] * x + T[1, 1] * y + T[1, 2]
    c = T[2, 0] * x + T[2, 1] * y + T[2, 2]
    inv = 1.0 / c if c != 0.0 else 1.0
    return a * inv, b * inv


@njit(**KERNEL)
def _project(R, t, K, dist, tilt, X, v):
    """World point ``X [3]`` into camera ``v``: (u, w) distorted pixels and its depth, OpenCV's model in full
    (radial k1-k6, tangential, thin prism, tilted sensor; ``projectPoints`` ignores K's skew, and so does this)."""
    xc = R[v, 0, 0] * X[0] + R[v, 0, 1] * X[1] + R[v, 0, 2] * X[2] + t[v, 0]
    yc = R[v, 1, 0] * X[0] + R[v, 1, 1] * X[1] + R[v, 1, 2] * X[2] + t[v, 1]
    z = R[v, 2, 0] * X[0] + R[v, 2, 1] * X[1] + R[v, 2, 2] * X[2] + t[v, 2]
    x, y = xc / z, yc / z
    d = dist[v]
    r2 = x * x + y * y
    r4, r6 = r2 * r2, r2 * r2 * r2
    radial = (1 + d[0] * r2 + d[1] * r4 + d[4] * r6) / (1 + d[5] * r2 + d[6] * r4 + d[7] * r6)
    xd = x * radial + 2 * d[2] * x * y + d[3] * (r2 + 2 * x * x) + d[8] * r2 + d[9] * r4
    yd = y * radial + d[2] * (r2 + 2 * y * y) + 2 * d[3] * x * y + d[10] * r2 + d[11] * r4
    if d[12] != 0.0 or d[13] != 0.0:
        xd, yd = _through(tilt[v], xd, yd)
    return K[v, 0, 0] * xd + K[v, 0, 2], K[v, 1, 1] * yd + K[v, 1, 2], z


@njit(**KERNEL)
def undistort(K, dist, untilt, v, u, w):
    """Camera ``v``'s distorted pixel (u, w) undistorted and normalised, (x, y): OpenCV's ``undistortPoints`` (its
    default: 5 fixed-point iterations; ``projectPoints``' model inverted, K's skew ignored as there). Compiled,
    for the kernels that place people."""
    d = dist[v]
    fx, fy, cx, cy = K[v, 0, 0], K[v, 1, 1], K[v, 0, 2], K[v, 1, 2]
    x, y = (u - cx) / fx, (w - cy) / fy
    if d[12] != 0.0 or d[13] != 0.0:
        x, y = _through(untilt[v], x, y)
    x0, y0 = x, y
    for _ in range(5):
        r2 = x * x + y * y
        icdist = (1 + ((d[7] * r2 + d[6]) * r2 + d[5]) * r2) / (1 + ((d[4] * r2 + d[1]) * r2 + d[0]) * r2)
        if icdist < 0:  # a point beyond the model's reach: left as if undistorted
            return (u - cx) / fx, (w - cy) / fy
        dx = 2 * d[2] * x * y + d[3] * (r2 + 2 * x * x) + d[8] * r2 + d[9] * r2 * r2
        dy = d[2] * (r2 + 2 * y * y) + 2 * d[3] * x * y + d[10] * r2 + d[11] * r2 * r2
        x, y = (x0 - dx) * icdist, (y0 - dy) * icdist
    return x, y


@njit(**KERNEL)
def on_floor(R, center, v, x, y, z):
    """Where camera ``v``'s ray through normalised (x, y) meets the floor at height ``z``: (X, Y), NaN where it
    runs parallel to the floor or meets it behind the camera. Compiled, for the kernels that place people."""
    r0 = x * R[v, 0, 0] + y * R[v, 1, 0] + R[v, 2, 0]  # R^T (x, y, 1)
    r1 = x * R[v, 0, 1] + y * R[v, 1, 1] + R[v, 2, 1]
    r2 = x * R[v, 0, 2] + y * R[v, 1, 2] + R[v, 2, 2]
    s = (z - center[v, 2]) / r2
    if np.isfinite(s) and s > 0:
        return center[v, 0] + s * r0, center[v, 1] + s * r1
    return np.nan, np.nan


@njit(**KERNEL)
def _normalise(K, dist, untilt, view, pixels):
    N, M = pixels.shape[:2]
    out = np.full((N, M, 2), np.nan)
    for n in range(N):
        if view[n] >= 0:
            for m in range(M):
                out[n, m, 0], out[n, m, 1] = undistort(K, dist, untilt, view[n], pixels[n, m, 0], pixels[n, m, 1])
    return out


@njit(**KERNEL)
def _dlt(terms, norm, weight, out, n):
    """One point from its views' normalised coordinates ``norm [V, 2]`` weighted by ``weight [V]`` (0: unused),
    into ``out [3]`` (NaN: singular). The weighted rows ``x P3 - P1``, ``y P3 - P2`` of each view solved for ``X``
    (with ``w = 1``: no point of a court lies at infinity) by their normal equations ``N = A^T A``, summed from
    the rig's per-view terms and solved by Cramer's rule (``n [12]``: scratch, so that no solve allocates)."""
    n[:] = 0.0
    for v in range(norm.shape[0]):
        w2 = weight[v] * weight[v]
        if w2 == 0.0:
            continue
        x, y = norm[v, 0], norm[v, 1]
        for k in range(12):
            n[k] += w2 * ((x * x + y * y) * terms[0, v, k] - x * terms[1, v, k] - y * terms[2, v, k] + terms[3, v, k])
    a00, a01, a02, b0, a10, a11, a12, b1, a20, a21, a22, b2 = n  # N[:3, :3] X = -N[:3, 3]
    c0, c1, c2 = a11 * a22 - a12 * a21, a12 * a20 - a10 * a22, a10 * a21 - a11 * a20
    det = a00 * c0 + a01 * c1 + a02 * c2
    if not abs(det) > 1e-12:
        out[:] = np.nan
        return
    out[0] = -(c0 * b0 + (a02 * a21 - a01 * a22) * b1 + (a01 * a12 - a02 * a11) * b2) / det
    out[1] = -(c1 * b0 + (a00 * a22 - a02 * a20) * b1 + (a02 * a10 - a00 * a12) * b2) / det
    out[2] = -(c2 * b0 + (a01 * a20 - a00 * a21) * b1 + (a00 * a11 - a01 * a10) * b2) / det


@njit(**KERNEL)
def _solve_point(terms, R, t, K, dist, tilt, pixels, score, norm, min_score, outlier_px, min_views,
                 point, view_px, used, scratch):  # fmt: skip
    """One point seen by views ``pixels [V, 2]`` (distorted), ``score [V]``, ``norm [V, 2]`` (undistorted,
    normalised): solved from the views scoring at least ``min_score``; while its worst view misses by more than
    ``outlier_px`` and more than ``min_views`` remain, that view is dropped and the point solved again. Writes
    ``point [3]`` (NaN: no point), ``view_px [V]`` (its pixel error in every view), ``used [V]``; returns the
    mean pixel error and score of the views used (NaN and 0 where the last views still disagree)."""
    V = score.shape[0]
    errors, weight, n = scratch[0, :V], scratch[1, :V], scratch[2, :12]  # the caller's [3, max(V, 12)]
    for v in range(V):
        used[v] = score[v] >= min_score
    while True:
        n_used = 0
        for v in range(V):
            weight[v] = score[v] if used[v] else 0.0
            n_used += used[v]
        if n_used < min_views:
            break
        _dlt(terms, norm, weight, point, n)
        worst, worst_v = -1.0, -1
        for v in range(V):
            u, w, depth = _project(R, t, K, dist, tilt, point, v)
            err = np.sqrt((u - pixels[v, 0]) ** 2 + (w - pixels[v, 1]) ** 2)
            view_px[v] = err
            behind = err if depth > 0 else np.inf  # a point behind a camera that saw it fits no view
            errors[v] = behind
            if used[v] and behind > worst:  # NaN (no point) counts as no error
                worst, worst_v = behind, v
        if worst > outlier_px and n_used > min_views:
            used[worst_v] = False
            continue
        break
    total, n, weighted = 0.0, 0, 0.0
    for v in range(V):
        if used[v]:
            e = errors[v]
            if not e <= outlier_px:  # a point whose last views still disagree: two people's joints, or a mistake
                n = -1
                break
            total += e
            weighted += score[v]
            n += 1
    if n < min_views:
        point[:] = np.nan
        view_px[:] = np.nan
        used[:] = False
        return np.nan, 0.0
    return total / n, weighted / n


@njit(**KERNEL)
def _solve_points(terms, R, t, K, dist, tilt, pixels, score, norm, min_score, outlier_px, min_views):
    M, V = score.shape
    points, view_px = np.full((M, 3), np.nan), np.full((M, V), np.nan)
    used = np.zeros((M, V), np.bool_)
    error, mean_score = np.empty(M), np.empty(M)
    scratch = np.empty((3, max(V, 12)))
    for m in range(M):
        error[m], mean_score[m] = _solve_point(terms, R, t, K, dist, tilt, pixels[m], score[m], norm[m], min_score,
                                               outlier_px, min_views, points[m], view_px[m], used[m],
                                               scratch)  # fmt: skip
    return points, mean_score, error, used, view_px


@njit(**KERNEL)
def _solve_people(terms, R, t, K, dist, tilt, pixels, score, norm, min_score, outlier_px, max_view_px):
    """People ``pixels [P, J, V, 2]``, ``score [P, J, V]``, ``norm [P, J, V, 2]``: each keypoint as
    :func:`_solve_point` (two views at least). A view whose person reprojects further than ``max_view_px`` (the
    median over the joints it sees) saw another person: it is dropped and the person solved again; where only two
    views are left, the person gets no 3D. Also returns ``dropped [P, V]``."""
    P, J, V = score.shape
    points, view_px = np.full((P, J, 3), np.nan), np.full((P, J, V), np.nan)
    used = np.zeros((P, J, V), np.bool_)
    error, mean_score = np.full((P, J), np.nan), np.zeros((P, J))
    dropped = np.zeros((P, V), np.bool_)
    seen, buffer = np.empty(J), np.empty(J)
    scratch = np.empty((3, max(V, 12)))
    for p in range(P):
        s = score[p].copy()
        for _ in range(V + 1):  # each round takes a view away (or all): V + 1 rounds end it whatever the numbers
            for j in range(J):
                error[p, j], mean_score[p, j] = _solve_point(
                    terms, R, t, K, dist, tilt, pixels[p, j], s[j], norm[p, j], min_score, outlier_px, 2,
                    points[p, j], view_px[p, j], used[p, j], scratch,
                )  # fmt: skip
            worst, worst_v, present = -1.0, 0, 0
            for v in range(V):
                for j in range(J):
                    seen[j] = view_px[p, j, v] if s[j, v] >= min_score else np.nan
                median = median_of_finite(seen, buffer)
                if median > worst:
                    worst, worst_v = median, v
                for j in range(J):
                    if s[j, v] >= min_score:
                        present += 1
                        break
            if not worst > max_view_px:
                break
            if present <= 2:
                s[:] = 0.0  # two views that disagree: no 3D for this person
            else:
                s[:, worst_v] = 0.0
                dropped[p, worst_v] = True
    return points, mean_score, error, used, view_px, dropped


@njit(**KERNEL)
def _mean_errors(R, t, K, dist, tilt, points, pixels, used):
    P, J, V = used.shape
    out = np.full((P, J), np.nan)
    for p in range(P):
        for j in range(J):
            total, n = 0.0, 0
            for v in range(V):
                if used[p, j, v]:
                    u, w, _ = _project(R, t, K, dist, tilt, points[p, j], v)
                    total += np.sqrt((u - pixels[p, j, v, 0]) ** 2 + (w - pixels[p, j, v, 1]) ** 2)
                    n += 1
            if n:
                out[p, j] = total / n
    return out


@njit(**KERNEL)
def _project_all(R, t, K, dist, tilt, points):
    V, M = R.shape[0], points.shape[0]
    px, depth = np.empty((V, M, 2)), np.empty((V, M))
    for v in range(V):
        for m in range(M):
            px[v, m, 0], px[v, m, 1], depth[v, m] = _project(R, t, K, dist, tilt, points[m], v)
    return px, depth


# -- the numpy-facing calls ----------------------------------------------------------------------------------------


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
    rig = Rig.of(cameras)
    points, mean_score, error, used, view_px = _solve_points(
        rig.normal_terms, *rig.optics, f64(pixels), f64(score), f64(norm), float(min_score), float(outlier_px),
        int(min_views),
    )  # fmt: skip
    return Triangulated(points, mean_score, error, used, view_px)


def gather_people(keypoints: np.ndarray, norm: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """People's views picked from each camera's people, as :func:`triangulate_people` takes them: ``keypoints
    [V, N, J, 3]`` (pixels, score) and ``norm [V, N, J, 3]`` (normalised) of camera v's person n; ``idx [P, V]``
    person p's index in camera v (-1: not seen). ``pixels [P, J, V, 2]``, ``score [P, J, V]`` (0 where not seen),
    ``norm [P, J, V, 2]``."""
    return _gather(f64(keypoints), f64(norm), np.ascontiguousarray(idx, np.int64))


@njit(**KERNEL)
def _gather(keypoints, norm, idx):
    P, V = idx.shape
    J = keypoints.shape[2]
    pixels, score, out = np.zeros((P, J, V, 2)), np.zeros((P, J, V)), np.zeros((P, J, V, 2))
    for p in range(P):
        for v in range(V):
            i = idx[p, v]
            if i < 0:
                continue
            for j in range(J):
                pixels[p, j, v, 0], pixels[p, j, v, 1] = keypoints[v, i, j, 0], keypoints[v, i, j, 1]
                score[p, j, v] = keypoints[v, i, j, 2]
                out[p, j, v, 0], out[p, j, v, 1] = norm[v, i, j, 0], norm[v, i, j, 1]
    return pixels, score, out


def triangulate_people(
    rig: Rig, pixels: np.ndarray, score: np.ndarray, norm: np.ndarray, min_score: float, outlier_px: float,
    max_view_px: float,
) -> tuple[Triangulated, np.ndarray]:  # fmt: skip
    """Whole people at once, ``pixels [P, J, V, 2]``, ``score [P, J, V]``, ``norm [P, J, V, 2]``: each keypoint as
    :func:`triangulate_points` does, and a view whose person reprojects further than ``max_view_px`` (median over
    its joints) was another person's: dropped, and the person solved again; a person whose last two views disagree
    gets no 3D. The result's arrays are per person ``[P, J, ...]``; with ``dropped [P, V]``."""
    points, mean_score, error, used, view_px, dropped = _solve_people(
        rig.normal_terms, *rig.optics, f64(pixels), f64(score), f64(norm), float(min_score), float(outlier_px),
        float(max_view_px),
    )  # fmt: skip
    return Triangulated(points, mean_score, error, used, view_px), dropped


def triangulate(
    cameras: Sequence[Camera],
    keypoints: np.ndarray,
    min_score: float = 0.3,
    outlier_px: float = 15.0,
    min_views: int = 2,
) -> Triangulated:
    """One person's ``keypoints [V, J, 3]`` (x, y, score in each camera's pixels) seen by ``cameras``."""
    kp = np.asarray(keypoints, dtype=np.float64)
    rig = Rig.of(cameras)
    norm = rig.normalise(np.arange(len(rig)), kp[..., :2]).transpose(1, 0, 2)  # [J, V, 2]
    return triangulate_points(rig, kp[..., :2].transpose(1, 0, 2), kp[..., 2].T, norm, min_score, outlier_px,
                              min_views)  # fmt: skip


def mean_errors(rig: Rig, points: np.ndarray, pixels: np.ndarray, used: np.ndarray) -> np.ndarray:
    """People's keypoints ``points [P, J, 3]``: each one's mean pixel error ``[P, J]`` over the views ``used
    [P, J, V]`` of where they saw it, ``pixels [P, J, V, 2]`` (NaN where no view is used)."""
    return _mean_errors(*rig.optics, f64(points), f64(pixels), np.ascontiguousarray(used, dtype=np.bool_))


def project_all(cameras: Sequence[Camera] | Rig, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``points [M, 3]`` into every camera at once: distorted pixels ``[V, M, 2]`` and depths ``[V, M]``, OpenCV's
    model in full (:func:`_project`)."""
    return _project_all(*Rig.of(cameras).optics, f64(points).reshape(-1, 3))
