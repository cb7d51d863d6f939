"""Which person in one camera is which in another, solved as assignments.

Calibrated cameras: the cost of a pair is the score-weighted mean epipolar distance of the keypoints both see
(in normalised image units, so it does not depend on resolution). Homography-only cameras: the distance between
the two people's court positions in metres. Views are added one at a time; each view's people are assigned to
the clusters built so far (Hungarian, scipy), an unmatched one starts a cluster of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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


def essential(a: Camera, b: Camera) -> np.ndarray:
    """``E`` with ``x_b^T E x_a = 0`` for normalised coordinates of one world point."""
    R = b.R @ a.R.T
    return _skew(b.t - R @ a.t) @ R


def epipolar_costs(E: np.ndarray, a: View, b: View, min_score: float, min_joints: int = 3) -> np.ndarray:
    """``[Na, Nb]``: each pair's score-weighted mean symmetric epipolar distance (normalised units) over the
    keypoints both see with at least ``min_score``; :data:`UNMATCHED` where fewer than ``min_joints`` are shared."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    xa, xb = a.norm, b.norm  # [N, J, 3]
    sa, sb = a.keypoints[..., 2], b.keypoints[..., 2]  # [N, J]
    lb = xa @ E.T  # epipolar lines in b of a's points [Na, J, 3]
    la = xb @ E  # in a of b's points [Nb, J, 3]
    num = np.abs(np.einsum("njk,mjk->nmj", lb, xb))  # |x_b . (E x_a)| [Na, Nb, J]
    d = 0.5 * num * (1 / np.hypot(lb[..., 0], lb[..., 1])[:, None] + 1 / np.hypot(la[..., 0], la[..., 1])[None])
    w = np.minimum(sa[:, None], sb[None]) * ((sa[:, None] >= min_score) & (sb[None] >= min_score))
    shared = (w > 0).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        cost = (d * w).sum(axis=2) / w.sum(axis=2)
    return np.where(shared >= min_joints, cost, UNMATCHED)


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
