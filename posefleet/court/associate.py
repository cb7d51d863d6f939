"""Which person in one camera is which in another, solved as assignments.

Calibrated cameras: the cost of a pair is the score-weighted mean epipolar distance of the keypoints both see
(in normalised image units, so it does not depend on resolution). Homography-only cameras: the distance between
the two people's court positions in metres. Views are added one at a time; each view's people are assigned to
the clusters built so far (Hungarian, scipy), an unmatched one starts a cluster of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.optimize import linear_sum_assignment

from posefleet.court.calibration import Camera
from posefleet.court.compiled import KERNEL, f64

UNMATCHED = 1e6  # a cost the assignment never takes


@dataclass
class View:
    """One camera's people on one frame, as arrays: track ids ``[N]``, keypoints ``[N, 17, 3]`` (pixels, score),
    court/floor points ``[N, 2]`` (NaN where none), and for a calibrated camera the keypoints undistorted and
    normalised, homogeneous ``[N, 17, 3]``."""

    stream: str
    track_ids: np.ndarray
    keypoints: np.ndarray
    ground: np.ndarray
    norm: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.track_ids)


def _skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])


def essentials(cameras: list[Camera]) -> np.ndarray:
    """``E [V, V, 3, 3]`` with ``x_b^T E[a, b] x_a = 0`` for normalised coordinates of one world point."""
    V = len(cameras)
    out = np.zeros((V, V, 3, 3))
    for a, ca in enumerate(cameras):
        for b, cb in enumerate(cameras):
            if a != b:
                R = cb.R @ ca.R.T
                out[a, b] = _skew(cb.t - R @ ca.t) @ R
    return out


def epipolar_costs(E: np.ndarray, norm: np.ndarray, score: np.ndarray, min_score: float,
                   min_joints: int = 3) -> np.ndarray:  # fmt: skip
    """Every pair of views at once: ``norm [V, N, J, 3]`` (each view's people, undistorted, normalised and
    homogeneous; padded), ``score [V, N, J]`` (0 for padding). ``[V, V, N, N]``: each pair's score-weighted mean
    symmetric epipolar distance (normalised units) over the keypoints both see with at least ``min_score``;
    :data:`UNMATCHED` where fewer than ``min_joints`` are shared. Each unordered pair is computed once (the
    distance is symmetric: ``E[b, a] = E[a, b]^T``), compiled."""
    return _epipolar_costs(f64(E), f64(norm), f64(score), float(min_score), int(min_joints))


@njit(**KERNEL)
def _epipolar_costs(E, norm, score, min_score, min_joints):
    V, N, J = score.shape
    out = np.full((V, V, N, N), UNMATCHED)
    lines_b, inv_b, inv_a = np.empty((N, J, 3)), np.empty((N, J)), np.empty((N, J))
    for a in range(V):
        for b in range(a + 1, V):
            F = E[a, b]
            for i in range(N):  # a's points as lines in b (E x_a), b's as lines in a (E^T x_b): 1 / their normals
                for j in range(J):
                    xa, xb = norm[a, i, j], norm[b, i, j]
                    for r in range(3):
                        lines_b[i, j, r] = F[r, 0] * xa[0] + F[r, 1] * xa[1] + F[r, 2] * xa[2]
                    inv_b[i, j] = 1 / np.hypot(lines_b[i, j, 0], lines_b[i, j, 1])
                    la0 = F[0, 0] * xb[0] + F[1, 0] * xb[1] + F[2, 0] * xb[2]
                    la1 = F[0, 1] * xb[0] + F[1, 1] * xb[1] + F[2, 1] * xb[2]
                    inv_a[i, j] = 1 / np.hypot(la0, la1)
            for i in range(N):
                for k in range(N):
                    total, weights, shared = 0.0, 0.0, 0
                    for j in range(J):
                        w = min(score[a, i, j], score[b, k, j])
                        if w >= min_score and w > 0:
                            num = abs(lines_b[i, j, 0] * norm[b, k, j, 0] + lines_b[i, j, 1] * norm[b, k, j, 1]
                                      + lines_b[i, j, 2] * norm[b, k, j, 2])  # fmt: skip
                            total += num * (inv_b[i, j] + inv_a[k, j]) * w
                            weights += w
                            shared += 1
                    if shared >= min_joints:
                        out[a, b, i, k] = out[b, a, k, i] = 0.5 * total / weights
    return out


def ground_costs(a: View, b: View) -> np.ndarray:
    """``[Na, Nb]``: metres between court positions; :data:`UNMATCHED` where either has none."""
    d = np.linalg.norm(a.ground[:, None] - b.ground[None], axis=2)
    return np.where(np.isfinite(d), d, UNMATCHED)


def cluster_views(counts: np.ndarray, costs: np.ndarray, max_cost: float) -> tuple[list[int], np.ndarray]:
    """Clusters of observations, at most one per view each, joined where the mean pair cost to a cluster's members
    is under ``max_cost``. ``counts [S]``: each view's count of people; ``costs [S, S, N, N]``: views a and b's
    cost matrices (a's person i, b's person j). Views are taken largest first; returns them in that order (views
    with nobody left out) and the clusters as ``members [K, len(order)]``: each cluster's person in each view
    (-1: none). Each view's people are assigned to the clusters so far (Hungarian, scipy); the mean costs it
    assigns by are compiled."""
    order = [v for v in np.argsort(-counts, kind="stable").tolist() if counts[v]]
    members = np.full((int(counts.sum()), len(order)), -1)
    views = np.array(order, np.int64)
    k = 0  # clusters so far
    for at, view in enumerate(order):
        n = int(counts[view])
        if at:
            cost = _mean_costs(costs, views, members, k, at, n, float(max_cost))
            rows, cols = linear_sum_assignment(cost)
            joined = cost[rows, cols] < UNMATCHED
            members[cols[joined], at] = rows[joined]
            free = np.ones(n, np.bool_)
            free[rows[joined]] = False
            alone = np.flatnonzero(free)
        else:
            alone = np.arange(n)
        members[k : k + len(alone), at] = alone
        k += len(alone)
    return order, members[:k]


@njit(**KERNEL)
def _mean_costs(costs, views, members, k, at, n, max_cost):
    """``[n, k]``: view ``views[at]``'s people against the ``k`` clusters so far, the mean of their costs to each
    cluster's members in the views before it (:data:`UNMATCHED` over ``max_cost``)."""
    out = np.empty((n, k))
    a = views[at]
    for i in range(n):
        for c in range(k):
            total, count = 0.0, 0
            for b in range(at):
                m = members[c, b]
                if m >= 0:
                    total += costs[a, views[b], i, m]
                    count += 1
            mean = total / count
            out[i, c] = mean if mean <= max_cost else UNMATCHED
    return out
