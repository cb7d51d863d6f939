"""One id per player on the court: a constant-velocity Kalman filter a player on the floor plane (metres) and an
assignment per group frame, as the per-stream tracker does with boxes. A candidate that keeps a camera's track id
a player had on the previous frame is the same player, unless it moved implausibly far."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.optimize import linear_sum_assignment

from posefleet.court.associate import UNMATCHED


@lru_cache(maxsize=64)
def _motion(dt: float, accel_std: float) -> tuple[np.ndarray, np.ndarray]:
    """The constant-velocity model over ``dt``: transition ``F`` and process noise ``Q`` (a group's frames come
    at a few steady intervals: cached)."""
    F = np.eye(4)
    F[0, 2] = F[1, 3] = dt
    G = np.array([[dt * dt / 2, 0], [0, dt * dt / 2], [dt, 0], [0, dt]])
    return F, G @ G.T * accel_std**2


@dataclass
class Candidate:
    """One person of a group frame: floor position (metres), its views (stream -> track id) and how many."""

    xy: np.ndarray
    views: dict[str, int]
    n_views: int


@dataclass
class CourtTrack:
    group_id: int
    mean: np.ndarray  # x, y, vx, vy
    cov: np.ndarray
    views: dict[str, int]
    last_seen: float
    hits: int = 1

    def state(self) -> dict:
        return {"group_id": self.group_id, "mean": self.mean.tolist(), "cov": self.cov.tolist(),
                "views": self.views, "last_seen": self.last_seen, "hits": self.hits}  # fmt: skip


@dataclass
class GroupTracker:
    """Group ids over time. ``max_distance_m``: how far a player may be from its prediction and still match;
    ``max_age_s``: how long an unseen player keeps its id; ``min_views_new``: views a new player needs."""

    max_distance_m: float = 1.0
    max_age_s: float = 2.0
    min_views_new: int = 1
    accel_std: float = 3.0  # m/s^2: how fast players may change speed (the filter's process noise)
    measure_std: float = 0.1  # m: how far a fused position strays
    tracks: list[CourtTrack] = field(default_factory=list)
    next_id: int = 1
    last_time: float | None = None

    def _predict(self, dt: float) -> None:
        if not self.tracks:
            return
        F, Q = _motion(dt, self.accel_std)
        mean = np.stack([t.mean for t in self.tracks]) @ F.T
        cov = F @ np.stack([t.cov for t in self.tracks]) @ F.T + Q
        for t, m, c in zip(self.tracks, mean, cov, strict=True):
            t.mean, t.cov = m, c

    def _update(self, tracks: list[CourtTrack], xy: np.ndarray) -> None:
        """The Kalman update of ``tracks`` with their measured positions ``xy [N, 2]``, in one batch."""
        if not tracks:
            return
        mean, cov = np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks])
        S = cov[:, :2, :2] + np.eye(2) * self.measure_std**2
        a, b, c, d = S[:, 0, 0], S[:, 0, 1], S[:, 1, 0], S[:, 1, 1]
        inv = np.stack([d, -b, -c, a], axis=1).reshape(-1, 2, 2) / (a * d - b * c)[:, None, None]  # 2x2 by hand
        K = cov[:, :, :2] @ inv  # [N, 4, 2]
        mean = mean + (K @ (xy - mean[:, :2])[..., None])[..., 0]
        cov = cov - K @ cov[:, :2, :]
        for t, m, c in zip(tracks, mean, cov, strict=True):
            t.mean, t.cov = m, c

    def update(self, now: float, candidates: list[Candidate]) -> list[int | None]:
        """Each candidate's group id (None for one too weakly seen to start a player)."""
        dt = 0.0 if self.last_time is None else max(now - self.last_time, 0.0)
        self.last_time = now
        self._predict(dt)
        self.tracks = [t for t in self.tracks if now - t.last_seen <= self.max_age_s]
        owned = {pair for t in self.tracks for pair in t.views.items()}  # the cameras' tracks players held
        cost = np.full((len(candidates), len(self.tracks)), UNMATCHED)
        if candidates and self.tracks:
            xy = np.array([c.xy for c in candidates])
            pred = np.array([t.mean[:2] for t in self.tracks])
            dist = np.linalg.norm(xy[:, None] - pred[None], axis=2)
            # a camera's track id kept is strong evidence; a player may stray further the longer it is unseen
            kept = np.zeros((len(candidates), len(self.tracks)))
            holders: dict[tuple[str, int], list[int]] = {}
            for j, t in enumerate(self.tracks):
                for pair in t.views.items():
                    holders.setdefault(pair, []).append(j)
            for i, c in enumerate(candidates):
                for pair in c.views.items():
                    for j in holders.get(pair, ()):
                        kept[i, j] += 1
            unseen = now - np.array([t.last_seen for t in self.tracks])
            reach = self.max_distance_m + 0.5 * self.accel_std * unseen**2
            with np.errstate(invalid="ignore"):
                near = dist <= reach[None]
                cost = np.where(near, dist / (1 + kept), np.where((kept > 0) & (dist <= 2 * reach[None]), dist, cost))
            cost[~np.isfinite(cost)] = UNMATCHED
        ids: list[int | None] = [None] * len(candidates)
        if cost.size:
            rows, cols = linear_sum_assignment(cost)
            matched = [(i, j) for i, j in zip(rows.tolist(), cols.tolist(), strict=True) if cost[i, j] < UNMATCHED]
            self._update([self.tracks[j] for _, j in matched], np.array([candidates[i].xy for i, _ in matched]))
            claimed = {pair for i, _ in matched for pair in candidates[i].views.items()}
            for t in self.tracks:  # a camera's track now seen as another player is no longer this one's
                t.views = {s: tid for s, tid in t.views.items() if (s, tid) not in claimed}
            for i, j in matched:
                t = self.tracks[j]
                # a camera that lost sight of the player keeps its track id on record, until another takes it
                t.views, t.last_seen, t.hits = {**t.views, **candidates[i].views}, now, t.hits + 1
                ids[i] = t.group_id
        for i, c in enumerate(candidates):
            # a candidate holding a camera's track that a player holds is a fragment of that player, not a new one
            fragment = bool(c.views.items() & owned)
            if ids[i] is None and not fragment and c.n_views >= self.min_views_new and np.isfinite(c.xy).all():
                cov = np.diag([self.measure_std**2, self.measure_std**2, 1.0, 1.0])
                t = CourtTrack(self.next_id, np.r_[c.xy, 0.0, 0.0], cov, dict(c.views), now)
                self.tracks.append(t)
                ids[i] = t.group_id
                self.next_id += 1
        return ids

    def state(self) -> dict:
        """What a restarted fuser needs to keep its ids (JSON-able)."""
        return {"next_id": self.next_id, "last_time": self.last_time, "tracks": [t.state() for t in self.tracks]}

    def restore(self, state: dict) -> None:
        self.next_id, self.last_time = int(state["next_id"]), state["last_time"]
        self.tracks = [
            CourtTrack(
                t["group_id"], np.array(t["mean"]), np.array(t["cov"]), dict(t["views"]), t["last_seen"], t["hits"]
            )
            for t in state["tracks"]
        ]
