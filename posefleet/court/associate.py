"""Which person in one camera is which in another, solved as assignments.

Calibrated cameras: the cost of a pair is the score-weighted mean epipolar distance of the keypoints both see
(in normalised image units, so it does not depend on resolution). Homography-only cameras: the distance between
the two people's court positions in metres. Views are added one at a time; each view's people are assigned to
the clusters built so far (Hungarian, scipy), an unmatched one starts a cluster of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.optimize import linear_sum_assignment

from posefleet.court.calibration import Camera

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


@dataclass
class Cluster:
    """The views of one person: stream -> index into that view's people."""

    members: dict[str, int] = field(default_factory=dict)


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


@lru_cache(maxsize=16)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The unordered pairs of ``n`` views (numpy builds them in ~0.1 ms; a group's view count rarely changes)."""
    return np.triu_indices(n, 1)


def epipolar_costs(E: np.ndarray, norm: np.ndarray, score: np.ndarray, min_score: float,
                   min_joints: int = 3) -> np.ndarray:  # fmt: skip
    """Every pair of views at once: ``norm [V, N, J, 3]`` (each view's people, undistorted, normalised and
    homogeneous; padded), ``score [V, N, J]`` (0 for padding). ``[V, V, N, N]``: each pair's score-weighted mean
    symmetric epipolar distance (normalised units) over the keypoints both see with at least ``min_score``;
    :data:`UNMATCHED` where fewer than ``min_joints`` are shared. Each unordered pair is computed once (the
    distance is symmetric: ``E[b, a] = E[a, b]^T``), joints leading so the products are batched matmuls."""
    V, N = norm.shape[:2]
    ia, ib = _pairs(V)
    pair_E = E[ia, ib]  # [P, 3, 3]
    x = norm.transpose(0, 2, 1, 3)  # [V, J, N, 3]
    xa, xb = x[ia], x[ib]  # [P, J, N, 3]
    # one matmul a pair over all its joints and people (a batch of 3x3 products costs per matrix)
    lb = (xa.reshape(len(ia), -1, 3) @ pair_E.transpose(0, 2, 1)).reshape(xa.shape)  # lines in b of a's points
    la = (xb.reshape(len(ia), -1, 3) @ pair_E).reshape(xb.shape)  # in a of b's points [P, J, M, 3]
    num = np.abs(lb @ xb.swapaxes(-1, -2))  # |x_b . (E x_a)| [P, J, N, M]
    seen = (score * (score >= min_score)).transpose(0, 2, 1)  # [V, J, N]
    w = np.minimum(seen[ia][..., :, None], seen[ib][..., None, :])  # [P, J, N, M]
    with np.errstate(invalid="ignore", divide="ignore"):
        inv_b, inv_a = 1 / np.hypot(lb[..., 0], lb[..., 1]), 1 / np.hypot(la[..., 0], la[..., 1])
        weighted = np.where(w > 0, num * (inv_b[..., :, None] + inv_a[..., None, :]) * w, 0.0)
        cost = 0.5 * weighted.sum(axis=1) / w.sum(axis=1)
    cost = np.where((w > 0).sum(axis=1) >= min_joints, cost, UNMATCHED)
    out = np.full((V, V, N, N), UNMATCHED)
    out[ia, ib], out[ib, ia] = cost, cost.transpose(0, 2, 1)
    return out


def ground_costs(a: View, b: View) -> np.ndarray:
    """``[Na, Nb]``: metres between court positions; :data:`UNMATCHED` where either has none."""
    d = np.linalg.norm(a.ground[:, None] - b.ground[None], axis=2)
    return np.where(np.isfinite(d), d, UNMATCHED)


def cluster_views(
    views: dict[str, int], pair_costs: Callable[[str, str], np.ndarray], max_cost: float
) -> list[Cluster]:
    """Clusters of observations, at most one per view each, joined where the mean pair cost to a cluster's members
    is under ``max_cost``. ``views``: each view's count of people; ``pair_costs(a, b)``: views a and b's cost
    matrix ``[Na, Nb]``."""
    clusters: list[Cluster] = []
    for stream in sorted(views, key=lambda s: -views[s]):
        n = views[stream]
        if not n:
            continue
        if not clusters:
            clusters = [Cluster({stream: i}) for i in range(n)]
            continue
        total = np.zeros((n, len(clusters)))
        count = np.zeros(len(clusters))
        for other in {s for cl in clusters for s in cl.members}:
            cols = np.array([cl.members.get(other, -1) for cl in clusters])
            has = cols >= 0
            matrix = pair_costs(stream, other)
            total[:, has] += matrix[:, cols[has]]
            count += has
        mean = total / count
        cost = np.where(mean <= max_cost, mean, UNMATCHED)
        rows, cols = linear_sum_assignment(cost)
        taken = set()
        for i, c in zip(rows, cols, strict=True):
            if cost[i, c] < UNMATCHED:
                clusters[c].members[stream] = int(i)
                taken.add(int(i))
        clusters += [Cluster({stream: i}) for i in range(n) if i not in taken]
    return clusters
