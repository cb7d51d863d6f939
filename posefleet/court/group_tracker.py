"""One id per player on the court: a constant-velocity Kalman filter a player on the floor plane (metres) and an
assignment per group frame, as the per-stream tracker does with boxes. A candidate that keeps a camera's track id
a player had on the previous frame is the same player, unless it moved implausibly far.

The players' filters are held as arrays (``[T, 4]`` means, ``[T, 4, 4]`` covariances): a group frame predicts and
updates all of them in a few numpy calls, whatever the count."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit
from scipy.optimize import linear_sum_assignment

from posefleet.court.associate import UNMATCHED
from posefleet.court.compiled import KERNEL


@njit(**KERNEL)
def _predict(mean, cov, dt, accel_std):
    """Every player's constant-velocity filter ``dt`` ahead, in place: ``mean [T, 4]`` (x, y, vx, vy),
    ``cov [T, 4, 4]``; the process noise is a random acceleration of ``accel_std``."""
    q = np.array([dt * dt / 2, dt * dt / 2, dt, dt]) * accel_std
    for n in range(mean.shape[0]):
        m, c = mean[n], cov[n]
        m[0] += dt * m[2]
        m[1] += dt * m[3]
        for r in range(2):  # C <- F C F^T with F = [[I, dt I], [0, I]]: rows, then columns
            for k in range(4):
                c[r, k] += dt * c[r + 2, k]
        for r in range(4):
            for k in range(2):
                c[r, k] += dt * c[r, k + 2]
        for a in range(4):  # Q = G G^T accel_std^2, G = [[dt^2/2 I], [dt I]]: x with vx, y with vy
            for b in range(4):
                if a % 2 == b % 2:
                    c[a, b] += q[a] * q[b]


@njit(**KERNEL)
def _correct(mean, cov, rows, xy, variance):
    """The Kalman update of the players ``rows`` with their measured positions ``xy [N, 2]`` (noise
    ``variance`` m^2), in place."""
    for n in range(len(rows)):
        m, c = mean[rows[n]], cov[rows[n]]
        a, b, d = c[0, 0] + variance, c[0, 1], c[1, 1] + variance  # S = H C H^T + R, symmetric 2x2
        det = a * d - b * b
        gain = np.empty((4, 2))
        for r in range(4):  # K = C H^T S^-1
            gain[r, 0] = (c[r, 0] * d - c[r, 1] * b) / det
            gain[r, 1] = (c[r, 1] * a - c[r, 0] * b) / det
        e0, e1 = xy[n, 0] - m[0], xy[n, 1] - m[1]
        top = c[:2].copy()
        for r in range(4):
            m[r] += gain[r, 0] * e0 + gain[r, 1] * e1
            for k in range(4):
                c[r, k] -= gain[r, 0] * top[0, k] + gain[r, 1] * top[1, k]


@dataclass
class Candidates:
    """A group frame's people: floor positions ``xy [N, 2]`` (metres), and their views ``[N, S]``: each one's
    track id in each of the group's streams (the tracker's ``streams``; -1: not seen there)."""

    xy: np.ndarray
    views: np.ndarray

    def __len__(self) -> int:
        return len(self.views)


@dataclass
class GroupTracker:
    """Group ids over time. ``max_distance_m``: how far a player may be from its prediction and still match;
    ``max_age_s``: how long an unseen player keeps its id; ``min_views_new``: views a new player needs;
    ``streams``: the group's streams, the columns of the views."""

    streams: list[str] = field(default_factory=list)

    max_distance_m: float = 1.0
    max_age_s: float = 2.0
    min_views_new: int = 1
    accel_std: float = 3.0  # m/s^2: how fast players may change speed (the filter's process noise)
    measure_std: float = 0.1  # m: how far a fused position strays
    next_id: int = 1
    last_time: float | None = None
    # the players, row by row: group id, filter (x, y, vx, vy and its covariance), when last seen, frames seen,
    # and each stream's track id that was this player (-1: none; a camera that lost sight keeps its id on record)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    mean: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    cov: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    last_seen: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    views: np.ndarray = field(init=False)  # [T, len(streams)]

    def __post_init__(self) -> None:
        self.views = np.full((0, len(self.streams)), -1, np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def warm(self) -> None:
        """Load the compiled kernels now, so that no frame waits for them."""
        _predict(np.zeros((0, 4)), np.zeros((0, 4, 4)), 0.0, 0.0)
        _correct(np.zeros((0, 4)), np.zeros((0, 4, 4)), np.zeros(0, np.intp), np.zeros((0, 2)), 0.0)

    def _keep(self, rows: np.ndarray) -> None:
        self.ids, self.mean, self.cov = self.ids[rows], self.mean[rows], self.cov[rows]
        self.last_seen, self.hits, self.views = self.last_seen[rows], self.hits[rows], self.views[rows]

    def _shared(self, people: Candidates) -> np.ndarray:
        """``[N, T]``: how many streams' track ids each candidate shares with each player."""
        views = people.views[:, None]
        return ((views == self.views[None]) & (views >= 0)).sum(axis=2)

    def _costs(self, now: float, people: Candidates, kept: np.ndarray) -> np.ndarray:
        """``[N, T]``: a candidate's distance to each player's prediction, divided by 1 + the camera tracks they
        share (``kept``: a camera's track id kept is strong evidence); a player may stray further the longer it is
        unseen, twice as far where a track is shared."""
        dist = np.hypot(*(people.xy[:, None] - self.mean[None, :, :2]).transpose(2, 0, 1))
        reach = self.max_distance_m + 0.5 * self.accel_std * (now - self.last_seen) ** 2
        with np.errstate(invalid="ignore"):
            far = np.where((kept > 0) & (dist <= 2 * reach), dist, UNMATCHED)
            cost = np.where(dist <= reach, dist / (1 + kept), far)
        return np.where(np.isfinite(cost), cost, UNMATCHED)

    def update(self, now: float, people: Candidates) -> list[int | None]:
        """Each candidate's group id (None for one too weakly seen to start a player)."""
        dt = 0.0 if self.last_time is None else max(now - self.last_time, 0.0)
        self.last_time = now
        _predict(self.mean, self.cov, float(dt), float(self.accel_std))
        alive = now - self.last_seen <= self.max_age_s
        if not alive.all():
            self._keep(alive)
        ids: list[int | None] = [None] * len(people)
        # a candidate holding a camera's track that a player holds is a fragment of that player, not a new one
        fragment = np.zeros(len(people), np.bool_)
        if len(people) and len(self):
            kept = self._shared(people)
            fragment = kept.any(axis=1)
            cost = self._costs(now, people, kept)
            rows, cols = linear_sum_assignment(cost)
            good = cost[rows, cols] < UNMATCHED
            rows, cols = rows[good], cols[good]
            _correct(self.mean, self.cov, cols, people.xy[rows], float(self.measure_std**2))
            self.last_seen[cols] = now
            self.hits[cols] += 1
            # a camera's track now seen as another player is no longer this one's; the matched take their views
            claimed = people.views[rows]
            self.views[((self.views[:, None] == claimed[None]) & (claimed[None] >= 0)).any(axis=1)] = -1
            self.views[cols] = np.where(claimed >= 0, claimed, self.views[cols])
            group_ids = self.ids.tolist()
            for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
                ids[i] = group_ids[j]
        enough = ((people.views >= 0).sum(axis=1) >= self.min_views_new) & np.isfinite(people.xy).all(axis=1)
        new = [i for i in np.flatnonzero(enough & ~fragment).tolist() if ids[i] is None]
        if new:
            n = len(new)
            start = np.diag([self.measure_std**2, self.measure_std**2, 1.0, 1.0])
            fresh = np.arange(self.next_id, self.next_id + n)
            self.ids = np.r_[self.ids, fresh]
            self.mean = np.r_[self.mean, np.c_[people.xy[new], np.zeros((n, 2))]]
            self.cov = np.r_[self.cov, np.broadcast_to(start, (n, 4, 4))]
            self.last_seen = np.r_[self.last_seen, np.full(n, now)]
            self.hits = np.r_[self.hits, np.ones(n, np.int64)]
            self.views = np.r_[self.views, people.views[new]]
            for i, gid in zip(new, fresh.tolist(), strict=True):
                ids[i] = gid
            self.next_id += n
        return ids

    def views_of(self, views: np.ndarray) -> dict[str, int]:
        """A row of views as stream -> track id."""
        return {s: t for s, t in zip(self.streams, views.tolist(), strict=True) if t >= 0}

    def state(self) -> dict:
        """What a restarted fuser needs to keep its ids (JSON-able)."""
        tracks = [
            {"group_id": g, "mean": m, "cov": c, "views": v, "last_seen": s, "hits": h}
            for g, m, c, v, s, h in zip(self.ids.tolist(), self.mean.tolist(), self.cov.tolist(),
                                        map(self.views_of, self.views), self.last_seen.tolist(), self.hits.tolist(),
                                        strict=True)
        ]  # fmt: skip
        return {"next_id": self.next_id, "last_time": self.last_time, "tracks": tracks}

    def restore(self, state: dict) -> None:
        self.next_id, self.last_time = int(state["next_id"]), state["last_time"]
        tracks = state["tracks"]
        self.ids = np.array([t["group_id"] for t in tracks], np.int64)
        self.mean = np.array([t["mean"] for t in tracks], float).reshape(-1, 4)
        self.cov = np.array([t["cov"] for t in tracks], float).reshape(-1, 4, 4)
        self.last_seen = np.array([t["last_seen"] for t in tracks], float)
        self.hits = np.array([t["hits"] for t in tracks], np.int64)
        column = {s: c for c, s in enumerate(self.streams)}  # a stream no longer in the group is forgotten
        self.views = np.full((len(tracks), len(self.streams)), -1, np.int64)
        for row, t in zip(self.views, tracks, strict=True):
            for s, tid in t["views"].items():
                if s in column:
                    row[column[s]] = tid
